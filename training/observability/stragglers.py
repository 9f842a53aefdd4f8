"""Per-rank step figures and straggler detection: every `interval` steps one small all-gather.

    mon = StragglerMonitor(interval=50, factor=1.3, windows=3, gather=coll.all_gather_floats, ...)
    each step:  mon.add(step_time, data_wait, local_time)
    report = mon.check(step)   # COLLECTIVE at every interval-th step (same steps on every rank), else None

What is compared. In synchronous data-parallel training every rank's *step time* is the same: a fast
rank waits for the slow one inside the gradient collectives, so the wall-clock step time cannot tell
which rank is late (the fast ones would even look slower: their wait is inside their step). What differs
is the work a rank does before it reaches the step's first data-parallel collective: its data wait and
its forward pass (`local_time`; collective-free at TP=1 with ZeRO-1/2, where the gradient reduction is
the first collective). A rank's ratio estimates how much longer the job's steps are because of it:

    ratio_r = 1 + (local_r - median(local of the other ranks)) / median(step_time)

so a rank whose data + forward take 0.3 x a step longer than the other ranks' median has ratio 1.3
(jitter of a millisecond in a second-long step stays ~1.001, whatever the data wait's own scale; the
median of the *other* ranks keeps a 2-rank job meaningful, where the median of all would be the mean). A rank above
`factor` in `windows` consecutive windows is named (warning, MLflow `straggler/rank`, `straggler/ratio`,
tag `straggler.host`, RUN_DIR/events.jsonl); it is named again after it recovered and fell behind again.

Limits: with TP > 1 the forward holds TP collectives, so the whole TP group of a slow rank shows the
delay (its ranks are named together); with ZeRO-3 the forward gathers parameters over DP, hiding a slow
forward; a slow backward shows in every rank's step time but in no rank's local time. On a GPU use
`train.sync_timing: true` for device-true forward times (otherwise the forward measures launches).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class RankFigures:
    rank: int
    host: str
    step_time: float  # mean seconds per step over the window
    data_wait: float  # mean data wait per step
    local_time: float  # mean data wait + forward per step (work before the first DP collective)
    ratio: float  # 1 + (local - median local of the other ranks) / median step time
    windows: int  # consecutive windows above the factor (including this one)


@dataclass
class StragglerReport:
    step: int
    ranks: list[RankFigures]
    named: list[RankFigures] = field(default_factory=list)  # newly named stragglers (windows == required)
    slow: list[RankFigures] = field(default_factory=list)  # every rank above the factor long enough

    def metrics(self) -> dict[str, float]:
        steps = [r.step_time for r in self.ranks]
        worst = max(self.ranks, key=lambda r: r.ratio)
        out = {
            "ranks/step_time_median": statistics.median(steps),
            "ranks/step_time_max": max(steps),
            "ranks/data_wait_max": max(r.data_wait for r in self.ranks),
            "ranks/local_time_median": statistics.median(r.local_time for r in self.ranks),
            "ranks/slowest": float(worst.rank),
            "ranks/slowest_ratio": worst.ratio,
        }
        if self.slow:
            top = max(self.slow, key=lambda r: r.ratio)
            out.update({"straggler/rank": float(top.rank), "straggler/ratio": top.ratio})
        return out

    def table(self) -> str:
        lines = [f"step {self.step}: per-rank means over the window (ratio = est. job slowdown by the rank)"]
        lines.append("rank\thost\tstep_time_s\tdata_wait_s\tlocal_time_s\tratio\twindows_slow")
        for r in self.ranks:
            lines.append(
                f"{r.rank}\t{r.host}\t{r.step_time:.4f}\t{r.data_wait:.4f}\t{r.local_time:.4f}\t"
                f"{r.ratio:.3f}\t{r.windows}"
            )
        return "\n".join(lines) + "\n"


class StragglerMonitor:
    def __init__(
        self,
        interval: int,
        factor: float,
        windows: int,
        gather: Callable[[list[float]], list[list[float]]],
        gather_objects: Callable[[object], list],
        host: str,
    ):
        """`gather(floats)`: every rank's list, in rank order (one all_gather of a small tensor);
        `gather_objects`: the same for any object (used once, for the host names)."""
        self.interval, self.factor, self.windows = interval, factor, windows
        self._gather, self._gather_objects, self._host = gather, gather_objects, host
        self.enabled = interval > 0
        self._sum = [0.0, 0.0, 0.0]
        self._n = 0
        self._hosts: list[str] | None = None
        self._slow_windows: list[int] = []

    def add(self, step_time: float, data_wait: float, local_time: float) -> None:
        s = self._sum
        s[0] += step_time
        s[1] += data_wait
        s[2] += local_time
        self._n += 1

    def reset_window(self) -> None:
        """Forget the steps so far (e.g. after a rollback the step numbers repeat)."""
        self._sum = [0.0, 0.0, 0.0]
        self._n = 0

    def check(self, step: int) -> StragglerReport | None:
        """COLLECTIVE at every `interval`-th step (no-op otherwise): gather the window's means, judge them."""
        if not self.enabled or step % self.interval != 0:
            return None
        n = max(self._n, 1)
        rows = self._gather([v / n for v in self._sum])
        self.reset_window()
        if self._hosts is None:
            self._hosts = [str(h) for h in self._gather_objects(self._host)]
        if len(self._slow_windows) != len(rows):
            self._slow_windows = [0] * len(rows)
        med_step = statistics.median(r[0] for r in rows)
        locals_ = [r[2] for r in rows]
        med_local = statistics.median(locals_)
        report = StragglerReport(step, [])
        for rank, (st, wait, local) in enumerate(rows):
            others = locals_[:rank] + locals_[rank + 1 :] or [local]
            ratio = 1.0 + (local - statistics.median(others)) / med_step if med_step > 0 else 1.0
            self._slow_windows[rank] = self._slow_windows[rank] + 1 if ratio > self.factor else 0
            fig = RankFigures(rank, self._hosts[rank], st, wait, local, ratio, self._slow_windows[rank])
            report.ranks.append(fig)
            if fig.windows >= self.windows:
                report.slow.append(fig)
                if fig.windows == self.windows:
                    report.named.append(fig)
        for fig in report.named:
            logger.warning(
                "STRAGGLER: rank %d on %s has been %.2fx the median rank for %d windows of %d steps "
                "(data wait + forward %.3fs vs median %.3fs per step over all ranks; step time %.3fs)",
                fig.rank,
                fig.host,
                fig.ratio,
                fig.windows,
                self.interval,
                fig.local_time,
                med_local,
                med_step,
            )
        return report
