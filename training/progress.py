"""The console progress line on global rank 0: step, loss, lr, tokens/s, MFU, step time, ETA."""

from __future__ import annotations

import logging
import time
from collections import deque

log = logging.getLogger(__name__)


def fmt_duration(seconds: float) -> str:
    s = int(max(0, seconds))
    h, m = s // 3600, (s % 3600) // 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


class Progress:
    """Keeps a window of recent step figures; `print_line` logs their averages and the ETA."""

    def __init__(self, total_steps: int, enabled: bool, window: int = 20):
        self.total = total_steps
        self.enabled = enabled
        self.rows: deque[dict] = deque(maxlen=window)
        self.t_start = time.monotonic()

    def update(self, step: int, row: dict) -> None:
        self.rows.append(row)

    def mean(self, key: str) -> float | None:
        vals = [r[key] for r in self.rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    def line(self, step: int) -> str:
        step_time = self.mean("step_time") or 0.0
        # loss averaged over the window: consecutive batches differ a lot (image-text vs. text batches)
        parts = [
            f"step {step}/{self.total}",
            f"loss {self.mean('loss'):.4f}" if self.rows else "loss -",
            f"lr {self.rows[-1]['lr']:.2e}" if self.rows else "",
            f"{(self.mean('tokens_per_s') or 0):,.0f} tok/s",
        ]
        mfu = self.mean("mfu")
        if mfu is not None:
            parts.append(f"mfu {mfu:.2f}")
        parts += [f"{step_time:.3f} s/step", f"ETA {fmt_duration(step_time * (self.total - step))}"]
        return " | ".join(p for p in parts if p)

    def print_line(self, step: int) -> None:
        if self.enabled and self.rows:
            log.info("%s", self.line(step))
