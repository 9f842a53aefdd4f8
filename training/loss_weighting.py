"""How the micro-batch losses of one optimizer step combine: `train.loss_weighting`.

- `micro_batch` (default, as before): each micro-batch's mean loss (over its loss tokens) weighs the same;
  DeepSpeed scales each backward by 1/grad_accum and averages gradients over DP, so the step's gradient is
  that of the mean of the micro-batch means. A micro-batch with few loss tokens (short captions) counts
  as much as one with many (text), so a loss token's weight depends on what it was batched with.
- `token`: every loss token of the step weighs the same, across accumulation steps and DP ranks: the
  step's gradient is that of sum(token losses) / T, T = the step's loss tokens over all DP ranks (one big
  batch's mean). Before the first backward the step's micro-batches are fetched (on the host) and T is
  all-reduced over DP (one scalar); micro-batch i then backpropagates
      mean_i * n_i / T * grad_accum * dp
  (mean_i * n_i = its loss sum, n_i its loss tokens): the factor grad_accum * dp undoes DeepSpeed's own
  1/grad_accum loss scaling and its 1/dp gradient averaging. TP ranks see the same batch and count alike.

The figure reported as the step's loss is the mean of what was backpropagated over micro-batches and DP
ranks: in `token` mode that is the token mean (sum / T), in `micro_batch` mode the mean of the means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from training.data.batch import Batch

MODES = ("micro_batch", "token")


class LossWeighting:
    """`step_batches` wraps the batch iterator of one step; `weigh` turns a micro-batch's mean loss into
    what to backpropagate."""

    def __init__(
        self, mode: str, grad_accum: int, dp_size: int, dp_sum: Callable[[torch.Tensor], torch.Tensor]
    ):
        if mode not in MODES:
            raise ValueError(f"train.loss_weighting={mode!r}: use one of {', '.join(MODES)}")
        self.mode, self.grad_accum, self.dp_size, self.dp_sum = mode, grad_accum, dp_size, dp_sum
        self.scale = 1.0  # grad_accum * dp / T of the current step (token mode)
        self.step_tokens = 0.0  # T of the current step (token mode)

    def step_batches(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The step's `grad_accum` micro-batches. token mode: all fetched at the first `next` (so the wait
        for data is measured there), T all-reduced over DP, then yielded one by one."""
        if self.mode == "micro_batch":
            return batches
        return self._prefetched(batches)

    def _prefetched(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        step = [next(batches) for _ in range(self.grad_accum)]
        local = sum(float(b.loss_mask.sum()) for b in step)
        self.step_tokens = float(self.dp_sum(torch.tensor([local], dtype=torch.float64))[0])
        self.scale = self.grad_accum * self.dp_size / max(self.step_tokens, 1.0)
        yield from step

    def weigh(self, loss: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The micro-batch's mean loss -> the loss to backpropagate (unchanged in micro_batch mode)."""
        if self.mode == "micro_batch":
            return loss
        return loss * batch.loss_mask.sum().to(loss.dtype) * self.scale
