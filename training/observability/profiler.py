"""torch.profiler traces of a few steps, and CUDA memory snapshots (on request and on out-of-memory).

    prof = StepProfiler(cfg.profile, rank, run_dir.profile)
    with prof.step(n):                  # records steps start_step .. start_step+steps-1 on the chosen ranks
        train_step()
    prof.window_ended(n)                # True on every rank after the last traced step (then publish)
    prof.close()                        # at the end: stops a window cut short (preemption)

Trace: RUN_DIR/profile/rank<R>_steps<A>-<B>.json, Chrome trace-event JSON (open in https://ui.perfetto.dev
or chrome://tracing); each step is a `ProfilerStep#N` span (N = the optimizer step) holding the trainer's
`data_wait` / `forward` / `backward` / `optimizer` spans. Outside the window nothing is recorded.

Memory snapshots (`profile.memory_snapshot`, CUDA only; ignored with a warning elsewhere): the allocator's
history is recorded from the start (`torch.cuda.memory._record_memory_history`); a snapshot
(RUN_DIR/profile/memory_rank<R>_step<N>_<reason>.pickle, view it at https://pytorch.org/memory_viz) is
written at the end of the traced window, when the process receives SIGUSR2 (at the next step boundary),
and when a step raises `torch.OutOfMemoryError` (`MemorySnapshots.on_oom`), which is then re-raised with
the snapshot's path in its message.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

import torch

from training.observability.config import ProfileConfig

logger = logging.getLogger(__name__)

MEMORY_HISTORY_ENTRIES = 100_000  # allocator events kept (ring buffer)


class StepProfiler:
    def __init__(self, cfg: ProfileConfig, rank: int, out_dir: Path):
        self.cfg = cfg
        self.rank = rank
        self.out_dir = Path(out_dir)
        self.first = cfg.start_step
        self.last = cfg.start_step + cfg.steps - 1
        self.selected = cfg.enabled and rank in cfg.ranks
        self._prof = None
        self._first_recorded: int | None = None
        self.trace_path: Path | None = None

    @property
    def active(self) -> bool:
        return self._prof is not None

    def step(self, n: int):
        """The `with` block of optimizer step `n`: starts the profiler at the window's first step, marks
        the step (`ProfilerStep#n`), stops and exports after the window's last step."""
        if not self.selected or not (self.first <= n <= self.last):
            return contextlib.nullcontext()
        return self._recorded_step(n)

    @contextlib.contextmanager
    def _recorded_step(self, n: int):
        if self._prof is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self._prof = profile(
                activities=activities,
                record_shapes=self.cfg.record_shapes,
                profile_memory=self.cfg.profile_memory,
                with_stack=self.cfg.with_stack,
            )
            self._prof.start()
            self._first_recorded = n
            logger.info("profiler: recording steps %d-%d on rank %d", n, self.last, self.rank)
        with torch.profiler.record_function(f"ProfilerStep#{n}"):
            yield
        if n >= self.last:
            self._finish(n)

    def _finish(self, last: int) -> None:
        prof, self._prof = self._prof, None
        prof.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{self.rank}_steps{self._first_recorded}-{last}.json"
        prof.export_chrome_trace(str(path))
        self.trace_path = path
        logger.info("profiler: trace of steps %d-%d written to %s", self._first_recorded, last, path)

    def window_ended(self, n: int) -> bool:
        """True (on every rank, traced or not) right after the window's last step."""
        return self.cfg.enabled and n == self.last

    def close(self, n: int) -> None:
        """Stop and export a window cut short (the run ended or was preempted inside it)."""
        if self._prof is not None:
            self._finish(n)


class MemorySnapshots:
    """CUDA allocator history and snapshots on this rank (a no-op unless enabled on a CUDA machine)."""

    def __init__(self, enabled: bool, rank: int, out_dir: Path):
        self.rank = rank
        self.out_dir = Path(out_dir)
        self.enabled = bool(enabled) and torch.cuda.is_available()
        if enabled and not self.enabled:
            logger.warning("profile.memory_snapshot is CUDA-only: ignored on this machine (no CUDA device)")
        self._requested = False
        self._previous_handler = None

    def start(self) -> None:
        """Record allocator history from now on; SIGUSR2 asks for a snapshot at the next step boundary."""
        if not self.enabled:
            return
        torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGUSR2, self._on_signal)
        logger.info("recording CUDA memory history (snapshot: kill -USR2 <pid>, at OOM)")

    def _on_signal(self, signum, frame) -> None:  # no I/O in a signal handler: a flag
        self._requested = True

    def stop(self) -> None:
        if not self.enabled:
            return
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR2, self._previous_handler)
            self._previous_handler = None
        torch.cuda.memory._record_memory_history(enabled=None)

    def maybe_dump_requested(self, step: int) -> Path | None:
        """At a step boundary: write the snapshot SIGUSR2 asked for."""
        if not self._requested:
            return None
        self._requested = False
        return self.dump(step, "requested")

    def dump(self, step: int, reason: str) -> Path | None:
        """Write a snapshot; its path (None when not recording or when writing failed)."""
        if not self.enabled:
            return None
        path = self.out_dir / f"memory_rank{self.rank}_step{step}_{reason}.pickle"
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.cuda.memory._dump_snapshot(str(path))
        except Exception as e:  # noqa: BLE001 - a failed snapshot must not hide the real error
            logger.error("could not write the CUDA memory snapshot %s: %s", path, e)
            return None
        logger.warning("CUDA memory snapshot (%s) written to %s", reason, path)
        return path

    def on_oom(self, step: int):
        """`with` block: an OutOfMemoryError inside writes a snapshot and is re-raised naming it."""
        return snapshot_on_oom(lambda: self.dump(step, "oom"))


@contextlib.contextmanager
def snapshot_on_oom(dump):
    """Re-raise a `torch.OutOfMemoryError` from the block with the path `dump()` returns in its message
    (the original error is the cause); unchanged when `dump()` returns None."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        path = dump()
        if path is None:
            raise
        raise type(e)(
            f"{e}\nCUDA memory snapshot of this rank at the OOM: {path} "
            "(drag it into https://pytorch.org/memory_viz)"
        ) from e
