"""TEST HOOKS ONLY: fault injection driven by environment variables, for the fault-tolerance tests.

Nothing here does anything unless a `METALM_TEST_*` variable is set. Each hook is named for
the failure it simulates; production code calls the hook at the point where that failure
would happen for real.

  METALM_TEST_CKPT_CRASH="STEP:WHERE"  SIGKILL every rank while saving checkpoint STEP, where WHERE is
                                       `after_shards` (all shards written, nothing committed) or
                                       `after_manifest` (rank 0 wrote MANIFEST.json but not COMPLETE)
  METALM_TEST_CKPT_ENOSPC="STEP[:RANK]"  the shard writes of checkpoint STEP fail with ENOSPC (disk full)
                                         on RANK (default: every rank)
  METALM_TEST_NAN_STEPS="3,4,9"        the loss of these optimizer steps is replaced by NaN
  METALM_TEST_NAN_STEPS="5+"           ... of step 5 and every later step
  METALM_TEST_STALL_STEP="STEP[:RANK]" RANK (default 0) sleeps forever at the start of STEP (a hang)
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
