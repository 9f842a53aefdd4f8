"""The fork helper itself: results come back by rank, child failures surface with their traceback."""

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_ranks


def _allreduce(rank, world):
    dist.init_process_group("gloo", rank=rank, world_size=world)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return t.item()


def _fails(rank, world):
    if rank == 1:
        raise ValueError("boom on rank 1")
    return rank


def test_run_ranks_allreduce():
    assert run_ranks(2, _allreduce) == [3.0, 3.0]


def test_run_ranks_reports_child_error():
    with pytest.raises(AssertionError, match="boom on rank 1"):
        run_ranks(2, _fails)
