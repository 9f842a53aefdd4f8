"""Loss spikes (finite, but far above the recent loss): detected after a warm-up, answered by a policy.

    det = LossSpikeDetector(cfg.train.loss_spike)
    spike = det.observe(step, dp_mean_loss)     # a Spike when this step's loss is above the threshold
    if spike and spike.confirmed: act on det.cfg.action (log | skip | rollback | stop)

Detection: exponential moving averages of the loss and of its variance (decay `ema_decay`). After
`warmup_steps` finite losses, a step spikes when its loss is above BOTH `mean + sigmas x std` and
`min_ratio x mean` (either test is off at 0); `consecutive` spiking steps in a row make a confirmed
spike. A spiking loss does not update the averages (the spike would raise its own threshold);
non-finite losses are left to `bad_steps.BadStepGuard`. The loss passed in must be the same on every
rank (the DP-mean loss) so that every rank takes the same decision.

Responses (`action`), carried out by the trainer:
  log       warn, MLflow `loss_spike/*` metrics, RUN_DIR/events.jsonl + the `events/loss_spikes.jsonl`
            artifact; training goes on (every action records the same).
  skip      the update of each step from the confirmed one on (while it keeps spiking) is dropped:
            the trainer learns the DP-mean loss before the last micro-batch's backward and, for a
            skipped step, makes that backward's loss NaN; DeepSpeed's ZeRO/fp16/bf16 optimizer then
            refuses the update as for any non-finite gradient (weights, Adam moments and the LR schedule
            bit-unchanged; the skip is not counted as a bad step). Exact and free (no host copy of the
            weights); the price is that the DP-mean loss is reduced before that backward (one host sync).
            In fp16 a dropped update also counts as an overflow for the loss scaler (the scale may halve).
            The first `consecutive - 1` spiking steps were applied before the spike was confirmed: use
            `consecutive: 1` to drop every spiking update.
  rollback  reload the newest valid checkpoint from before the spiking window and skip the window's
            data: the loader resumes at the checkpoint's position, the steps before the window are
            redone on the same batches, and the `consecutive`-step window's batches are drawn and dropped
            (exact across epoch ends). More than `max_rollbacks` in one process, or no checkpoint from
            before the window -> stop.
  stop      raise LossSpikeStop: exit code 78 (LOSS_SPIKE).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Literal

logger = logging.getLogger(__name__)

OFF, LOG, SKIP, ROLLBACK, STOP = "off", "log", "skip", "rollback", "stop"


class LossSpikeStop(RuntimeError):
    """A confirmed loss spike with `train.loss_spike.action: stop` (or a rollback that cannot help)."""


@dataclass
class LossSpikeConfig:
    action: Literal["off", "log", "skip", "rollback", "stop"] = "log"  # response to a confirmed spike
    warmup_steps: int = 100  # finite losses seen before detection starts (the early loss falls fast)
    ema_decay: float = 0.98  # decay of the running mean / variance of the loss (~50-step memory)
    sigmas: float = 6.0  # spike: loss > EMA mean + sigmas x EMA std (0 = this test off)
    min_ratio: float = 1.2  # ... and loss > min_ratio x EMA mean (0 = this test off)
    consecutive: int = 1  # spiking steps in a row that confirm a spike (K)
    max_rollbacks: int = 3  # rollbacks for spikes in one process before stopping instead (exit 78)

    def problems(self) -> list[str]:
        out = []
        w = "train.loss_spike"
        if self.warmup_steps < 1:
            out.append(f"{w}.warmup_steps={self.warmup_steps} must be >= 1")
        if not 0 < self.ema_decay < 1:
            out.append(f"{w}.ema_decay={self.ema_decay} must be within (0, 1), e.g. 0.98")
        if self.sigmas < 0 or self.min_ratio < 0 or (self.sigmas == 0 and self.min_ratio == 0):
            out.append(
                f"{w}.sigmas={self.sigmas} / min_ratio={self.min_ratio}: both >= 0 and at least one > 0 "
                "(or train.loss_spike.action=off)"
            )
        if 0 < self.min_ratio <= 1:
            out.append(f"{w}.min_ratio={self.min_ratio}: must be > 1 (e.g. 1.2) or 0 (off)")
        if self.consecutive < 1:
            out.append(f"{w}.consecutive={self.consecutive} must be >= 1")
        if self.max_rollbacks < 0:
            out.append(f"{w}.max_rollbacks={self.max_rollbacks} must be >= 0")
        return out


@dataclass
class Spike:
    step: int
    loss: float
    mean: float  # EMA mean before this step
    std: float  # EMA std before this step
    threshold: float
    run: int  # spiking steps in a row, this one included
    confirmed: bool  # run >= consecutive

    @property
    def first_step(self) -> int:
        """The first step of the spiking window."""
        return self.step - self.run + 1

    def record(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.loss / self.mean if self.mean > 0 else math.inf
        return d


class LossSpikeDetector:
    def __init__(self, cfg: LossSpikeConfig):
        self.cfg = cfg
        self.mean: float | None = None
        self.var = 0.0
        self.seen = 0  # finite, non-spiking losses folded into the averages
        self.run = 0  # spiking steps in a row
        self.events = 0  # confirmed spikes in this process
        self.rollbacks = 0  # rollbacks for spikes in this process

    @property
    def enabled(self) -> bool:
        return self.cfg.action != OFF

    def threshold(self) -> float | None:
        if self.mean is None or self.seen < self.cfg.warmup_steps:
            return None
        t = -math.inf
        if self.cfg.sigmas > 0:
            t = max(t, self.mean + self.cfg.sigmas * math.sqrt(self.var))
        if self.cfg.min_ratio > 0:
            t = max(t, self.cfg.min_ratio * self.mean)
        return t

    def observe(self, step: int, loss: float) -> Spike | None:
        """Fold in this step's loss; a Spike when it is above the threshold (averages then unchanged)."""
        if not self.enabled or loss is None or not math.isfinite(loss):
            return None
        thr = self.threshold()
        if thr is not None and loss > thr:
            self.run += 1
            spike = Spike(
                step, loss, self.mean, math.sqrt(self.var), thr, self.run, self.run >= self.cfg.consecutive
            )
            if spike.confirmed:
                self.events += 1
            logger.warning(
                "loss spike at step %d: %.4f > threshold %.4f (EMA mean %.4f, std %.4f; %d in a row%s)",
                step,
                loss,
                thr,
                self.mean,
                spike.std,
                self.run,
                f", action {self.cfg.action}" if spike.confirmed else "",
            )
            return spike
        self.run = 0
        if self.mean is None:
            self.mean = loss
        else:
            d = self.cfg.ema_decay
            diff = loss - self.mean
            self.mean += (1 - d) * diff
            self.var = d * (self.var + (1 - d) * diff * diff)
        self.seen += 1
        return None

    def would_confirm(self, loss: float) -> bool:
        """Would observing `loss` now confirm a spike? (The skip decision, taken before the update.)"""
        thr = self.threshold()
        spikes = self.enabled and thr is not None and loss is not None and math.isfinite(loss) and loss > thr
        return spikes and self.run + 1 >= self.cfg.consecutive

    def state_dict(self) -> dict:
        """The statistics (saved in trainer_state: a resumed or rolled-back run continues them)."""
        return {"mean": self.mean, "var": self.var, "seen": self.seen, "run": self.run}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore the statistics; the process's event and rollback counts are kept."""
        if not state:
            return
        self.mean, self.var = state.get("mean"), float(state.get("var", 0.0))
        self.seen, self.run = int(state.get("seen", 0)), int(state.get("run", 0))
