"""Seconds per optimizer step spent in each phase of the step (MLflow `time/<phase>`).

    timer = PhaseTimer(sync=cfg.train.sync_timing)
    timer.reset()                                # at the start of a step
    for micro_batch in ...:
        with timer.data_wait: batch = next(batches)
        with timer.forward: loss = engine(batch)
        with timer.backward: engine.backward(loss)
        with timer.optimizer: engine.step()
    timer.seconds()   # {"time/data_wait": ..., "time/forward": ..., ...}: sums over the micro-batches

Cost: two `perf_counter` calls per phase (~0.2 us each). On a GPU the host runs ahead of the device, so
without synchronization a phase measures the host's time to *launch* its work and the waits land in
whichever phase next blocks (usually the loss copy or a collective); `sync=True` synchronizes the
device at every phase boundary (exact device times, at the price of the lost host/device overlap).
On a CPU it makes no difference. While the profiler records, each phase is also a named span in the
trace (`record=True`).
"""

from __future__ import annotations

import time

import torch

PHASES = ("data_wait", "forward", "backward", "optimizer")


class _Phase:
    """A reusable `with` block adding its duration to the timer's total for `name`."""

    __slots__ = ("_rec", "_t0", "name", "timer", "total")

    def __init__(self, timer: PhaseTimer, name: str):
        self.timer, self.name, self.total, self._t0, self._rec = timer, name, 0.0, 0.0, None

    def __enter__(self) -> _Phase:
        t = self.timer
        if t.record:
            self._rec = torch.profiler.record_function(self.name)
            self._rec.__enter__()
        if t.sync:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        t = self.timer
        if t.sync:
            torch.cuda.synchronize()
        self.total += time.perf_counter() - self._t0
        if self._rec is not None:
            self._rec.__exit__(*exc)
            self._rec = None


class PhaseTimer:
    def __init__(self, sync: bool = False):
        self.sync = bool(sync) and torch.cuda.is_available()  # CPU: nothing to synchronize
        self.record = False  # also emit profiler spans (set while StepProfiler records)
        self.data_wait = _Phase(self, "data_wait")
        self.forward = _Phase(self, "forward")
        self.backward = _Phase(self, "backward")
        self.optimizer = _Phase(self, "optimizer")
        self._phases = (self.data_wait, self.forward, self.backward, self.optimizer)

    def reset(self) -> None:
        for p in self._phases:
            p.total = 0.0

    def seconds(self) -> dict[str, float]:
        """{"time/<phase>": seconds} of the step since `reset()`."""
        return {f"time/{p.name}": p.total for p in self._phases}
