"""Activation checkpointing that is correct under tensor parallelism with dropout.

torch.utils.checkpoint does not replay Megatron's RNG tracker (the per-TP-rank dropout stream), so
the recomputed dropout masks differ and gradients are wrong. Megatron's `tensor_parallel.checkpoint`
saves and restores the default RNG, the device RNG and every tracker state (on CPU through
`parallel.cpu_compat`).
"""

from __future__ import annotations

import torch


def checkpoint(fn, *args):
    """Run fn(*args) without keeping its activations; recompute them (same RNG) in backward.

    Positional tensors only (closures carry the rest). When no input requires grad (e.g. the first
    trainable layer after frozen ones), the first input is made a grad-requiring leaf so that the
    parameters inside `fn` still get gradients (reentrant checkpoints need a grad-requiring input).
    """
    from megatron.core import tensor_parallel

    if torch.is_grad_enabled() and not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        args = (args[0].detach().requires_grad_(True),) + tuple(args[1:])
    if not torch.is_grad_enabled():
        return fn(*args)
    return tensor_parallel.checkpoint(fn, False, *args)
