"""Check that the ranks of a TP group hold the same tensors (they must all see identical batches).

A TP group whose ranks read different samples computes garbage without any error (each rank's
shard of the layer sees other inputs). `tp_mismatches` is a cheap check for the first steps of a run
or for tests: one all_gather of a few numbers per tensor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

MAX_DIMS = 8


def _fingerprint(t: torch.Tensor) -> torch.Tensor:
    """Shape- and order-sensitive summary in float64: [shape padded to MAX_DIMS, sum, position-weighted sum]."""
    x = t.detach().reshape(-1).to(torch.float64)
    w = torch.arange(1, x.numel() + 1, device=x.device, dtype=torch.float64).remainder_(1009.0)
    shape = list(t.shape)[:MAX_DIMS] + [-1] * (MAX_DIMS - min(t.dim(), MAX_DIMS))
    return torch.cat(
        [torch.tensor(shape, dtype=torch.float64, device=x.device), torch.stack([x.sum(), (x * w).sum()])]
    )


def tp_mismatches(tensors: dict[str, torch.Tensor], topology) -> list[str]:
    """Names of the tensors that differ across the ranks of this rank's TP group (collective over TP)."""
    if topology.tp_size <= 1 or not tensors:
        return []
    names = sorted(tensors)
    mine = torch.stack([_fingerprint(tensors[n]) for n in names])
    parts = [torch.empty_like(mine) for _ in range(topology.tp_size)]
    dist.all_gather(parts, mine.contiguous(), group=topology.tp_group)
    return [n for i, n in enumerate(names) if any(not torch.equal(p[i], parts[0][i]) for p in parts[1:])]


def batch_tp_mismatches(batch, topology) -> list[str]:
    """`tp_mismatches` over every field of a training.data.batch.Batch (absent optional ones skipped)."""
    from dataclasses import fields

    present = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return tp_mismatches({k: v for k, v in present.items() if v is not None}, topology)
