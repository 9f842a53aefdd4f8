"""The collectives of the checkpoint protocol, on the topology's world group (not the default group).

Without a topology the default process group is used when one exists, else the process is a world
of one and every collective is the identity (single-process tools and tests).
"""

from __future__ import annotations

from typing import Any

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
