"""A real DeepSpeed engine around a toy module, for checkpoint tests in forked gloo ranks.

The toy step draws its inputs and a dropout mask from the global torch RNG, so an exact resume
needs the optimizer state, the LR schedule *and* every rank's RNG state restored.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def init_gloo(rank: int, world: int) -> None:
    from parallel.cpu_compat import skip_deepspeed_shm_build

    skip_deepspeed_shm_build()
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world)


def make_engine(
    zero_stage: int = 1, hidden: int = 32, seed: int = 0, lr: float = 1e-2, extra: dict | None = None
):
    import deepspeed

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    cfg = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        **(extra or {}),
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=cfg)
    torch.manual_seed(seed + 1000 * dist.get_rank())  # each rank draws its own data and dropout masks
    return engine


def train_steps(engine, n: int) -> list[float]:
    """n optimizer steps on random data drawn from the global RNG; returns the losses (all ranks' mean)."""
    losses = []
    for _ in range(n):
        x = torch.randn(4, 16)
        y = torch.randn(4, 4)
        loss = ((engine(x) - y) ** 2).mean()
        engine.backward(loss)
        engine.step()
        t = loss.detach().clone()
        dist.all_reduce(t)
        losses.append(t.item() / dist.get_world_size())
    return losses
