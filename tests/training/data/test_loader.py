"""Streaming loaders in forked gloo ranks: TP ranks read identical batches, DP ranks disjoint samples,
exact mid-epoch resumption from the StreamingDataLoader state."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from tests.distributed import run_ranks
from tests.training.shards import config_overrides
from tests.paths import DEBUG_CONFIG

CONFIG = DEBUG_CONFIG


def _cfg(data: Path, tmp: Path, *extra: str):
    from training.config import load_config

    # forked test ranks are daemonic: no loader worker processes here (torchrun tests and the demo use them)
    return load_config(CONFIG, config_overrides(data, tmp / "run") + list(extra))


def _rows(rank, world, data, tmp, tp):
    from parallel.config import ParallelConfig
    from parallel.groups import init_distributed
    from training.data.loader import build_loader

    cfg = _cfg(data, tmp, f"data.train=[{{path: {data / 'text-train'}}}]", "train.micro_batch_size=4")
    topo = init_distributed(ParallelConfig(tp=tp))
    loader = build_loader(cfg.data, cfg.model, topo, 4, "train")
    batches = [b for b in loader]  # one epoch
    return {
        "tp_rank": topo.tp_rank,
        "dp_rank": topo.dp_rank,
        "batches": [(b.tokens.tolist(), b.span_tokens.tolist()) for b in batches],
    }


def test_tp_ranks_identical_dp_ranks_disjoint_4_processes(tiny_data, tmp_path):
    out = run_ranks(4, _rows, tiny_data, tmp_path, 2)  # TP=2 x DP=2
    assert [(o["tp_rank"], o["dp_rank"]) for o in out] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    for a, b in ((out[0], out[1]), (out[2], out[3])):  # same TP group: identical batches, spans included
        assert len(a["batches"]) == len(b["batches"]) > 0
        for (ta, sa), (tb, sb) in zip(a["batches"], b["batches"]):
            assert ta == tb and sa == sb
    seqs = [{tuple(r) for t, _ in o["batches"] for r in t} for o in (out[0], out[2])]
    assert seqs[0] and seqs[1] and not seqs[0] & seqs[1], "DP ranks must read disjoint samples"
    assert len(seqs[0] | seqs[1]) == 64  # together they cover the 64 text samples of the epoch


def _resume(rank, world, data, tmp):
    from parallel.config import ParallelConfig
    from parallel.groups import init_distributed
    from training.data.loader import build_loader

    cfg = _cfg(data, tmp, "train.micro_batch_size=4")
    topo = init_distributed(ParallelConfig(tp=1))
    loader = build_loader(cfg.data, cfg.model, topo, 4, "train")
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    expect = [next(it) for _ in range(3)]
    del it, loader
    gc.collect()
    loader = build_loader(cfg.data, cfg.model, topo, 4, "train")
    loader.load_state_dict(state)
    got = [b for _, b in zip(range(3), loader)]
    same = all(
        torch.equal(getattr(a, f), getattr(b, f))
        for a, b in zip(expect, got)
        for f in ("tokens", "targets", "loss_mask", "span_tokens", "span_dest", "images", "image_dest")
    )
    return state["sample_in_epoch"], same


def test_loader_resumes_mid_epoch_exactly(tiny_data, tmp_path):
    [(sample_in_epoch, same)] = run_ranks(1, _resume, tiny_data, tmp_path)
    assert sample_in_epoch == 20 and same
