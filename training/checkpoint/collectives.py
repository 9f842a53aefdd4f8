"""The collectives of the checkpoint protocol, on the topology's world group (not the default group).

Without a topology the default process group is used when one exists, else the process is a world
of one and every collective is the identity (single-process tools and tests).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class Collectives:
    """rank, world and the barrier / gather / broadcast the save and resume steps agree through."""

    def __init__(self, topology: Any = None):
        if topology is not None:
            self.rank, self.world = topology.rank, topology.world_size
            group = getattr(topology, "world_group", None)
            if group is None and dist.is_initialized():
                group = dist.group.WORLD
        elif dist.is_initialized():
            group = dist.group.WORLD
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            group, self.rank, self.world = None, 0, 1
        self.group = group  # None: no process group, a world of one
        self.device = getattr(topology, "device", None)  # tensors of tensor collectives (nccl: the GPU)

    def barrier(self) -> None:
        if self.group is not None:
            dist.barrier(group=self.group)

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.group is None:
            return [obj]
        out = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.group is None:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def _tensor_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_true(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on every rank (one all-reduce of one number)."""
        if self.group is None:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self._tensor_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return bool(t.item() > 0)

    def all_gather_floats(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values` (same length on all ranks), in rank order: one all_gather of a small tensor."""
        if self.group is None:
            return [list(values)]
        t = torch.tensor(values, dtype=torch.float64, device=self._tensor_device())
        out = [torch.empty_like(t) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(out, t, group=self.group)
        return [o.cpu().tolist() for o in out]
