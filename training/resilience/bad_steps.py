"""Non-finite steps: skipped and counted; too many in a row -> roll back to the last checkpoint once, then stop.

    guard = BadStepGuard(cfg.train.max_bad_steps)
    skipped_before = engine.skipped_steps
    loss = guard.poison(step, model_loss)            # TEST HOOK (METALM_TEST_NAN_STEPS); identity otherwise
    engine.backward(loss); engine.step()
    action = guard.after_step(step, loss_value, grad_norm, engine.skipped_steps - skipped_before)
    if action == ROLLBACK: state = ckpt.load(engine, ckpt.loaded_path or newest) ...
    # TooManyBadSteps propagates -> exit code 77

Who skips the update: DeepSpeed's ZeRO-1/2/3 optimizer (fp32 and fp16), its fp16 optimizer and its
bf16 optimizer with `bf16.check_grad_overflow: true` already refuse a step whose gradient norm is
inf/NaN (weights and the LR schedule untouched, `engine.skipped_steps` += 1); a NaN/inf loss makes
the gradients NaN, so it is skipped the same way. The guard adds the policy on top: it counts
those skips (the fp16 loss-scaler's overflow skips included), tells the trainer what to do, and
raises with a clear message when the run cannot recover. The loss value passed in must be the
same on every rank (e.g. the all-reduced mean) so every rank takes the same decision.
ZeRO stage 0 in fp32 has no such check in DeepSpeed: use ZeRO >= 1 (the trainer's default).
"""

from __future__ import annotations

import logging
import math

import torch

from training.resilience import fault_injection

logger = logging.getLogger(__name__)

OK = "ok"
SKIP = "skip"
ROLLBACK = "rollback"


class TooManyBadSteps(RuntimeError):
    """Non-finite steps went on after the rollback: the run stops (exit code 77)."""


def _finite(x) -> bool:
    if x is None:
        return True
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all().item())
    return math.isfinite(float(x))


class BadStepGuard:
    def __init__(self, max_consecutive: int):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive={max_consecutive}: must be >= 1")
        self.max_consecutive = max_consecutive
        self.consecutive = 0  # bad steps in a row
        self.total_skipped = 0  # bad steps in this process's life (counted across a rollback)
        self.scaler_skips = 0  # of which the loss had been finite (fp16 loss-scale overflow or inf grads)
        self.rollbacks = 0

    @staticmethod
    def poison(step: int, loss: torch.Tensor) -> torch.Tensor:
        """TEST HOOK: NaN loss at the steps named by METALM_TEST_NAN_STEPS; `loss` unchanged otherwise."""
        if fault_injection.nan_loss(step):
            logger.warning("TEST HOOK: METALM_TEST_NAN_STEPS poisons the loss of step %d", step)
            return loss * float("nan")
        return loss

    def after_step(self, step: int, loss, grad_norm=None, engine_skipped: int = 0) -> str:
        """Classify the step just taken: OK, SKIP (counted), ROLLBACK (once); raise TooManyBadSteps after that.

        `engine_skipped` is how many optimizer steps DeepSpeed skipped during this step (the
        `engine.skipped_steps` delta): fp16 overflows and non-finite gradient norms.
        """
        loss = float(loss) if loss is not None else None
        grad_norm = float(grad_norm) if grad_norm is not None else None
        loss_bad = not _finite(loss)
        bad = loss_bad or not _finite(grad_norm) or engine_skipped > 0
        if not bad:
            self.consecutive = 0
            return OK
        self.consecutive += 1
        self.total_skipped += 1
        if not loss_bad:
            self.scaler_skips += 1
        logger.warning(
            "step %d skipped: loss %s, grad norm %s (%d in a row, %d in total)",
            step,
            loss,
            grad_norm,
            self.consecutive,
            self.total_skipped,
        )
        if self.consecutive <= self.max_consecutive:
            return SKIP
        if self.rollbacks == 0:
            self.rollbacks += 1
            self.consecutive = 0
            logger.error(
                "%d non-finite steps in a row (limit train.max_bad_steps=%d): rolling back to the last "
                "checkpoint once",
                self.max_consecutive + 1,
                self.max_consecutive,
            )
            return ROLLBACK
        raise TooManyBadSteps(
            f"{self.max_consecutive + 1} non-finite steps in a row at step {step}, again after rolling back to the "
            f"last checkpoint ({self.total_skipped} skipped in total). The run is diverging or the data has a "
            "bad stretch: lower optim.lr, check the data around this step, or raise train.max_bad_steps."
        )

    def metrics(self) -> dict[str, float]:
        """For MLflow: counts so far."""
        return {
            "bad_steps_total": float(self.total_skipped),
            "bad_steps_in_a_row": float(self.consecutive),
            "loss_scaler_skips": float(self.scaler_skips),
            "rollbacks": float(self.rollbacks),
        }
