"""TEST HOOKS ONLY: fault injection driven by environment variables, for the fault-tolerance tests.

Nothing here does anything unless a `METALM_TEST_*` variable is set. Each hook is named for
the failure it simulates; production code calls the hook at the point where that failure
would happen for real.

  METALM_TEST_CKPT_CRASH="STEP:WHERE"  SIGKILL every rank while saving checkpoint STEP, where WHERE is
                                       `during_write` (after the first file of the rank's shards: with
                                       checkpoint.async_save, in the background writer while training goes on),
                                       `after_shards` (all shards written, nothing committed) or
                                       `after_manifest` (MANIFEST.json and COMPLETE written, `latest` not yet replaced)
  METALM_TEST_CKPT_SLOW_WRITE="SECONDS"  every checkpoint file write first sleeps SECONDS (a slow disk:
                                         keeps an async save in flight for a while)
  METALM_TEST_CKPT_ENOSPC="STEP[:RANK]"  the shard writes of checkpoint STEP fail with ENOSPC (disk full)
                                         on RANK (default: every rank)
  METALM_TEST_NAN_STEPS="3,4,9"        the loss of these optimizer steps is replaced by NaN
  METALM_TEST_NAN_STEPS="5+"           ... of step 5 and every later step
  METALM_TEST_STALL_STEP="STEP[:RANK]" RANK (default 0) sleeps forever at the start of STEP (a hang)
  METALM_TEST_SLOW_RANK="RANK:SECONDS" RANK sleeps SECONDS in the forward phase of every step (a straggler)
  METALM_TEST_LOSS_SPIKE="STEP[-LAST]:FACTOR"  the loss of the batches that a run without rollbacks or
                                       skips trains on at steps STEP..LAST is multiplied by FACTOR (a bad
                                       stretch of data: keyed by the data position, so a run that rolled
                                       back and skipped that data does not meet it again)
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time

logger = logging.getLogger(__name__)


def _get(name: str) -> str:
    return os.environ.get(name, "").strip()


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _step_rank(value: str, default_rank: int | None) -> tuple[int, int | None]:
    step, _, rank = value.partition(":")
    return int(step), (int(rank) if rank else default_rank)


def ckpt_crash(step: int, where: str) -> None:
    """Kill this process (as `kill -9` would) at point `where` of saving checkpoint `step`."""
    value = _get("METALM_TEST_CKPT_CRASH")
    if not value:
        return
    s, _, w = value.partition(":")
    if int(s) == step and w == where:
        logger.error("TEST HOOK: METALM_TEST_CKPT_CRASH=%s: killing rank %d", value, _rank())
        os.kill(os.getpid(), signal.SIGKILL)


def ckpt_enospc(step: int) -> None:
    """Raise ENOSPC as a full disk would, if the hook names this step (and rank)."""
    value = _get("METALM_TEST_CKPT_ENOSPC")
    if not value:
        return
    s, r = _step_rank(value, None)
    if s == step and (r is None or r == _rank()):
        raise OSError(errno.ENOSPC, "No space left on device (TEST HOOK METALM_TEST_CKPT_ENOSPC)")


def nan_loss(step: int) -> bool:
    """True if the loss of optimizer step `step` must be poisoned with NaN."""
    value = _get("METALM_TEST_NAN_STEPS")
    if not value:
        return False
    for part in value.split(","):
        part = part.strip()
        if part.endswith("+") and step >= int(part[:-1]):
            return True
        if part and not part.endswith("+") and int(part) == step:
            return True
    return False


def stall(step: int) -> None:
    """Block forever (a hung rank) at the start of `step`, if the hook names it."""
    value = _get("METALM_TEST_STALL_STEP")
    if not value:
        return
    s, r = _step_rank(value, 0)
    if s == step and r == _rank():
        logger.error("TEST HOOK: METALM_TEST_STALL_STEP=%s: rank %d stalls", value, _rank())
        while True:
            time.sleep(3600)


def ckpt_slow_write() -> None:
    """Sleep before writing a checkpoint file, if METALM_TEST_CKPT_SLOW_WRITE asks (a slow disk)."""
    value = _get("METALM_TEST_CKPT_SLOW_WRITE")
    if value:
        time.sleep(float(value))


def slow_rank() -> None:
    """Sleep in this step's forward phase if METALM_TEST_SLOW_RANK names this rank (a straggler)."""
    value = _get("METALM_TEST_SLOW_RANK")
    if not value:
        return
    rank, _, seconds = value.partition(":")
    if int(rank) == _rank():
        time.sleep(float(seconds))


def loss_spike_factor(data_step: int) -> float:
    """The factor METALM_TEST_LOSS_SPIKE applies to the loss of the batches of data step `data_step`
    (the step that trains on them in a run without rollbacks or skips); 1.0 when not named."""
    value = _get("METALM_TEST_LOSS_SPIKE")
    if not value:
        return 1.0
    steps, _, factor = value.partition(":")
    first, _, last = steps.partition("-")
    if int(first) <= data_step <= int(last or first):
        return float(factor)
    return 1.0
