"""Hang watchdog: no step completed within `timeout_s` -> dump every thread's stack and exit 76.

    wd = Watchdog(cfg.train.watchdog_timeout_s, RunDir(...).hangs, rank); wd.start()
    for step in ...: train_step(); wd.beat(step)
    with wd.paused(): ckpt.save(...)        # long, legitimately step-less work
    wd.stop()

A rank blocked in a collective with a dead peer never returns to Python, so the check runs in a
daemon thread and leaves with `os._exit` (no clean-up can run in a hung process). The stacks of
all threads go to RUN_DIR/hangs/rank<R>.txt (faulthandler, C-level, safe while the main thread
is stuck); the launcher sees a non-zero exit and tears the job down. The process-group timeout
(a config value passed to init_process_group) is the second line of defence.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import threading
import time
from pathlib import Path

from common.exit_codes import HANG

logger = logging.getLogger(__name__)


class Watchdog:
    def __init__(
        self, timeout_s: float, dump_dir: Path, rank: int | None = None, first_step_s: float = 600.0
    ):
        """`first_step_s`: the limit before the first beat (loader start-up, first compile), at least `timeout_s`."""
        self.timeout_s = float(timeout_s)
        self.first_step_s = max(float(first_step_s), self.timeout_s)
        self.dump_dir = Path(dump_dir)  # RUN_DIR/hangs
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self._last = time.monotonic()
        self._step: int | None = None
        self._paused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    @property
    def dump_path(self) -> Path:
        return self.dump_dir / f"rank{self.rank}.txt"

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._last = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="metalm-watchdog", daemon=True)
        self._thread.start()

    def beat(self, step: int) -> None:
        """A step completed."""
        self._step = step
        self._last = time.monotonic()

    @contextlib.contextmanager
    def paused(self):
        """No hang detection inside the block (checkpoint save, evaluation); the clock restarts after it."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        period = max(0.05, min(self.timeout_s / 4, 5.0))
        while not self._stop.wait(period):
            if self._paused:
                continue
            idle = time.monotonic() - self._last
            if idle > (self.timeout_s if self._step is not None else self.first_step_s):
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        path = self.dump_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write(
                    f"rank {self.rank}: no step completed for {idle:.0f}s (watchdog timeout "
                    f"{self.timeout_s:g}s); last completed step: {self._step}\n\n"
                )
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
        except OSError as e:  # still exit: a hung job must not stay up
            logger.error("watchdog could not write %s: %s", path, e)
        logger.critical(
            "HANG: rank %d completed no step for %.0fs (last step %s); stacks in %s; exiting %d",
            self.rank,
            idle,
            self._step,
            path,
            HANG,
        )
        for h in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                h.flush()
        os._exit(HANG)
