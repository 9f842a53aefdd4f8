"""Token-budget micro-batches (`data.micro_batch_tokens`): rows per stream from the budget, streams
interleaved by the deterministic schedule: TP ranks identical, DP ranks disjoint, sample shares as the
stream proportions, exact mid-epoch resumption (also across a stream's epoch end)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from tests.distributed import run_ranks
from tests.paths import DEBUG_CONFIG
from tests.training.shards import config_overrides, write_text
from training.data import token_budget as tb

BUDGET = 128  # decoder positions per micro-batch: 63-position rows -> 2 per micro-batch, 31-position -> 4


@pytest.fixture(scope="module")
def streams(tiny_data, tmp_path_factory):
    """Two text streams of different row lengths: `long` (64 x 64 tokens), `short` (n x 32 tokens)."""
    from data_prep.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("token_budget")
    tok = load_tokenizer(tiny_data / "tokenizer")
    write_text(root / "short-96", tok, 96, seq_len=32, seed=11)
    write_text(root / "short-24", tok, 24, seq_len=32, seed=12)
    return {"long": tiny_data / "text-train", "short": root / "short-96", "short24": root / "short-24"}


def _cfg(data: Path, tmp: Path, paths: list[Path], proportions: list[float | None]):
    from training.config import load_config

    train = ", ".join(
        f"{{path: {p}}}" if q is None else f"{{path: {p}, proportion: {q}}}"
        for p, q in zip(paths, proportions)
    )
    extra = [f"data.train=[{train}]", f"data.micro_batch_tokens={BUDGET}", "data.batching=per_stream"]
    return load_config(DEBUG_CONFIG, config_overrides(data, tmp / "run") + extra)


# ---- pure functions --------------------------------------------------------------------------------


def test_row_lengths_and_rows_per_micro_batch():
    assert tb.stream_row_tokens({"kind": "text", "seq_len": 2049}, 257, 2048) == 2048
    pairs = {"kind": "pairs", "caption_tokens": {"mean": 12.5, "max": 30}}
    assert tb.stream_row_tokens(pairs, 257, 2048) == 290  # <s> <image> 257 slots </image> + 30 caption tokens
    assert tb.rows_per_micro_batch(16384, 2048) == 8 and tb.rows_per_micro_batch(16384, 290) == 56
    assert tb.stream_row_tokens({"kind": "pairs"}, 257, 2048) == 2048  # no caption stats: the decoder length
    assert tb.stream_row_tokens({"kind": "tasks"}, 64, 1024) == 1024
    assert tb.rows_per_micro_batch(100, 2048) == 1  # never 0 rows


def test_schedule_gives_each_stream_its_share_of_samples_at_every_point():
    proportions, rows = [0.6, 0.3, 0.1], [56, 8, 3]
    w = tb.schedule_weights(proportions, rows)
    drawn = [0, 0, 0]
    order = []
    for i in range(5000):
        k = tb.schedule_choice(i, drawn, w)
        drawn[k] += 1
        order.append(k)
        # exact up to one micro-batch per stream, at every point of the schedule
        assert all(abs(d - (i + 1) * wk) < 1 for d, wk in zip(drawn, w)), (i, drawn)
    samples = [d * r for d, r in zip(drawn, rows)]
    shares = [s / sum(samples) for s in samples]
    assert shares == pytest.approx(proportions, abs=0.005)
    # deterministic: the same order from a restart at any position with the drawn counts at that point
    again = [0, 0, 0]
    for i in range(5000):
        k = tb.schedule_choice(i, again, w)
        again[k] += 1
        assert k == order[i]


# ---- the loader in forked gloo ranks ---------------------------------------------------------------


def _draw(rank, world, data, tmp, paths, proportions, tp, n):
    from parallel.config import ParallelConfig
    from parallel.groups import init_distributed
    from training.data.loader import build_loader

    cfg = _cfg(data, tmp, paths, proportions)
    topo = init_distributed(ParallelConfig(tp=tp))
    loader = build_loader(cfg.data, cfg.model, topo, 4, "train")
    it = iter(loader)
    batches = [next(it) for _ in range(n)]
    return {
        "tp_rank": topo.tp_rank,
        "dp_rank": topo.dp_rank,
        "rows": loader.rows,
        "batches": [(b.tokens.tolist(), b.span_tokens.tolist()) for b in batches],
    }


def test_tp_identical_dp_disjoint_rows_by_budget_4_processes(tiny_data, streams, tmp_path):
    paths = [streams["long"], streams["short"]]
    # 18 micro-batches at shares 2:1 (proportions 0.5 / 0.5 over 2 vs 4 rows): 12 long + 6 short, 24 samples
    # of each, within one epoch of each stream on each DP rank (32 long, 48 short per rank)
    out = run_ranks(4, _draw, tiny_data, tmp_path, paths, [0.5, 0.5], 2, 18)  # TP=2 x DP=2
    assert [(o["tp_rank"], o["dp_rank"]) for o in out] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert out[0]["rows"] == [2, 4]  # 128 // 63, 128 // 31
    for a, b in ((out[0], out[1]), (out[2], out[3])):
        assert a["batches"] == b["batches"]  # one TP group: the same batches, spans included
    for o in out:
        kinds = [len(t[0]) for t, _ in o["batches"]]  # row length 63 (long) or 31 (short)
        assert [len(t) for t, _ in o["batches"]] == [2 if k == 63 else 4 for k in kinds]
        assert sum(len(t) for t, _ in o["batches"] if len(t[0]) == 63) == 24
        assert sum(len(t) for t, _ in o["batches"] if len(t[0]) == 31) == 24  # proportions 0.5 / 0.5
    seqs = [{tuple(r) for t, _ in o["batches"] for r in t} for o in (out[0], out[2])]
    assert len(seqs[0]) == len(seqs[1]) == 48 and not seqs[0] & seqs[1], "DP ranks must read disjoint samples"
    # every DP rank draws the same stream at the same micro-batch (the ranks of a step stay in lockstep)
    assert [len(t[0]) for t, _ in out[0]["batches"]] == [len(t[0]) for t, _ in out[2]["batches"]]


def _resume(rank, world, data, tmp, paths, cuts, after):
    from parallel.config import ParallelConfig
    from parallel.groups import init_distributed
    from training.data.loader import build_loader

    cfg = _cfg(data, tmp, paths, [None, None])  # proportions by stream size
    topo = init_distributed(ParallelConfig(tp=1))
    fields = ("tokens", "targets", "loss_mask", "span_tokens", "span_dest", "images", "image_dest")
    results = []
    for cut in cuts:
        loader = build_loader(cfg.data, cfg.model, topo, 4, "train")
        it = iter(loader)
        for _ in range(cut):
            next(it)
        state = loader.state_dict()
        expect = [next(it) for _ in range(after)]
        del it, loader
        gc.collect()
        loader = build_loader(cfg.data, cfg.model, topo, 4, "train")
        loader.load_state_dict(state)
        it = iter(loader)
        got = [next(it) for _ in range(after)]
        same = all(torch.equal(getattr(a, f), getattr(b, f)) for a, b in zip(expect, got) for f in fields)
        results.append((state["token_budget"]["drawn"], same))
        del it, loader
        gc.collect()
    return results


def test_resume_mid_epoch_and_at_a_stream_epoch_end_is_exact(tiny_data, streams, tmp_path):
    paths = [streams["long"], streams["short24"]]
    # by size 64 : 24 samples, rows 2 : 4 -> micro-batch shares 32 : 6; `short24` has 6 micro-batches per epoch
    w = tb.schedule_weights([64, 24], [2, 4])
    drawn, at_epoch_end = [0, 0], None
    for i in range(200):
        k = tb.schedule_choice(i, drawn, w)
        drawn[k] += 1
        if k == 1 and drawn[1] == 6:
            at_epoch_end = i + 1  # the state right after the last micro-batch of short24's first epoch
            break
    cuts = [at_epoch_end, at_epoch_end + 25]
    [results] = run_ranks(1, _resume, tiny_data, tmp_path, paths, cuts, 40)  # 40 more cross another epoch end
    assert results[0][0][1] == 6
    assert all(same for _, same in results), results


def test_old_and_new_loader_states_are_not_mixed(tiny_data, streams, tmp_path):
    [msgs] = run_ranks(1, _mix_states, tiny_data, tmp_path, [streams["long"], streams["short"]])
    assert "micro_batch_tokens" in msgs[0] and "token-budget" in msgs[1]


def _mix_states(rank, world, data, tmp, paths):
    from parallel.config import ParallelConfig
    from parallel.groups import init_distributed
    from training.data.loader import build_loader

    cfg = _cfg(data, tmp, paths, [0.5, 0.5])
    topo = init_distributed(ParallelConfig(tp=1))
    budget = build_loader(cfg.data, cfg.model, topo, 4, "train")
    msgs = []
    val = build_loader(cfg.data, cfg.model, topo, 4, "val")  # validation: one BatchLoader of 4 rows
    for loader, state in ((val, budget.state_dict()), (budget, {"epoch": 0, "sample_in_epoch": 8})):
        try:
            loader.load_state_dict(state)
            msgs.append("")
        except ValueError as e:
            msgs.append(str(e))
    return msgs
