"""Preemption: SIGUSR1 / SIGTERM set a flag; the ranks agree at the next step boundary.

    pre = PreemptionHandler(); pre.install()
    ...
    if pre.should_stop():          # collective: all-reduce MAX of the flag over the world
        ckpt.save(engine, step, state); sys.exit(exit_codes.PREEMPTED)   # 75: requeue and resume

The handler does no I/O and takes no lock (a signal can arrive anywhere, also inside logging
or a collective). One rank receiving the signal is enough: the all-reduce tells every rank.
SLURM: `sbatch --signal=USR1@120` (or `B:USR1@120` forwarded by the batch script) asks the
job to checkpoint and leave before its time limit; SIGTERM is what `scancel` and most
schedulers send first.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionHandler:
    def __init__(self, signals: tuple[int, ...] = DEFAULT_SIGNALS):
        self.signals = signals
        self.received: int | None = None  # number of the first signal received (set by the handler)
        self._previous: dict[int, object] = {}
        self._decided = False

    def install(self) -> None:
        """Install the flag-setting handlers (main thread only, as Python requires)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler.install() must be called from the main thread")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:  # no I/O, no locks: just the flag
        if self.received is None:
            self.received = signum

    @property
    def requested(self) -> bool:
        """This rank received a signal (local; use should_stop() to decide)."""
        return self.received is not None

    def should_stop(self) -> bool:
        """COLLECTIVE at a step boundary: True on every rank if any rank received a signal."""
        flag = 1.0 if self.received is not None else 0.0
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = (
                torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            )
            t = torch.tensor([flag], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = t.item()
        stop = flag > 0
        if stop and not self._decided:
            self._decided = True
            name = signal.Signals(self.received).name if self.received else "a signal on another rank"
            logger.warning("preemption requested (%s): saving a checkpoint and exiting", name)
        return stop
