"""The one seeding function (parallel/seeding.py): which ranks share which RNG stream, pinned to the
documented seeds, through the same `init_distributed` every entry point uses."""

from __future__ import annotations

import random

import numpy as np
import torch

from tests.distributed import run_ranks

SEED = 11


def _draws(rank, world):
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from parallel import ParallelConfig, destroy_distributed, init_distributed

    topo = init_distributed(ParallelConfig(tp=2, seed=SEED))
    out = {
        "tp_rank": topo.tp_rank,
        "dp_rank": topo.dp_rank,
        "torch": torch.rand(3).tolist(),
        "python": random.random(),
        "numpy": float(np.random.rand()),
    }
    with get_cuda_rng_tracker().fork():  # the stream of dropout inside TP regions
        out["tp_stream"] = torch.rand(3).tolist()
    destroy_distributed()
    return out


def _expected(seed: int) -> list[float]:
    return torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist()


def test_streams_follow_the_documented_seeds_at_tp2_dp2():
    r = run_ranks(4, _draws)
    for o in r:
        base = SEED + 100 * o["dp_rank"]
        assert o["torch"] == _expected(base), "default stream = seed + 100 * dp_rank"
        assert o["python"] == random.Random(base).random()
        assert o["numpy"] == float(np.random.RandomState(base).rand())
        assert o["tp_stream"] == _expected(SEED + 2718 + o["tp_rank"]), "TP stream = seed + 2718 + tp_rank"
    by = {(o["tp_rank"], o["dp_rank"]): o for o in r}
    # ranks of one TP group (same dp_rank): same default / data-side streams, different TP streams
    for dp in (0, 1):
        a, b = by[(0, dp)], by[(1, dp)]
        assert a["torch"] == b["torch"] and a["python"] == b["python"] and a["numpy"] == b["numpy"]
        assert a["tp_stream"] != b["tp_stream"]
    # DP replicas: different default streams; the same TP stream for the same TP rank (Megatron's convention)
    for tp in (0, 1):
        a, b = by[(tp, 0)], by[(tp, 1)]
        assert a["torch"] != b["torch"] and a["python"] != b["python"]
        assert a["tp_stream"] == b["tp_stream"]
