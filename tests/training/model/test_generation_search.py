"""Decoding (training/model/generation.py): beam search under the length penalty on a hand-made step
function; on a random model, the KV cache, per-row prefix lengths and num_beams=1 change nothing."""

from __future__ import annotations

import math

import pytest
import torch

from tests.distributed import run_ranks
from training.model.generation import beam_search, greedy_search, length_penalized

EOS = 4
V = 5
# next-token probabilities after each generated prefix (anything else: uniform)
TABLE = {
    (): [0.6, 0.38, 0.01, 0.005, 0.005],  # A=0 likely, B=1 less so
    (0,): [0.0125, 0.0125, 0.05, 0.025, 0.9],  # A </s>: short, high total probability
    (1,): [0.0125, 0.0125, 0.95, 0.0125, 0.0125],  # B C D </s>: longer, higher mean probability
    (1, 2): [0.0125, 0.0125, 0.0125, 0.95, 0.0125],
    (1, 2, 3): [0.0125, 0.0125, 0.0125, 0.0125, 0.95],
    (0, 2): [0.025, 0.025, 0.025, 0.9, 0.025],
}


class TableModel:
    """A step function whose next-token distribution depends only on the tokens generated so far."""

    def __init__(self, rows: int):
        self.hist: list[tuple[int, ...]] = [()] * rows
        self.calls = 0

    def logp(self) -> torch.Tensor:
        return torch.tensor([[math.log(p) for p in TABLE.get(h, [1 / V] * V)] for h in self.hist])

    def step(self, src, tokens):
        self.calls += 1
        if src is not None:
            self.hist = [self.hist[s] for s in src.tolist()]
        self.hist = [h + (t,) for h, t in zip(self.hist, tokens.tolist())]
        return self.logp()


def test_beam_search_returns_the_best_hypothesis_under_the_length_penalty():
    short_sum = math.log(0.6) + math.log(0.9)  # "A </s>": 2 tokens
    long_sum = math.log(0.38) + 3 * math.log(0.95)  # "B C D </s>": 4 tokens
    assert short_sum > long_sum and short_sum / 2 < long_sum / 4  # the penalty decides

    def search(nb, alpha):
        m = TableModel(2 * nb)  # two identical examples
        return beam_search(m.logp(), m.step, nb, [10, 10], EOS, alpha)

    for alpha, best, total in ((1.0, [1, 2, 3], long_sum), (0.0, [0], short_sum), (2.0, [1, 2, 3], long_sum)):
        ended = search(2, alpha)
        for hyps in ended:
            assert hyps[0].tokens == best and hyps[0].finished, alpha
            assert hyps[0].logprob == pytest.approx(total, abs=1e-5)
            assert hyps[0].score == pytest.approx(total / (len(best) + 1) ** alpha, abs=1e-5)
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    # greedy (and one beam) take "A </s>" whatever the penalty
    m = TableModel(1)
    (g,) = greedy_search(m.logp(), m.step, [10], EOS, 1.0)
    assert g.tokens == [0] and g.finished and g.score == pytest.approx(short_sum / 2, abs=1e-5)
    assert search(1, 1.0)[0][0].tokens == [0]
    # the length limit ends live beams without </s>: with 2 new tokens "B C" is scored as it stands
    m = TableModel(2)
    ended = beam_search(m.logp(), m.step, 2, [2], EOS, 1.0)
    assert any(h.tokens == [1, 2] and not h.finished for h in ended[0])


def test_length_penalty_formula():
    assert length_penalized(-6.0, 3, 1.0) == -2.0
    assert length_penalized(-6.0, 3, 0.0) == -6.0
    assert length_penalized(-8.0, 4, 0.5) == -4.0


# ---------------------------------------------------------------------------------------------------
def _rows(cfg):
    """Prefix rows of different lengths: images, encoder segments, prompts (task_row without target)."""
    from training.data.finetune import task_row

    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(7, cfg.vocab_size, (n,), generator=g).tolist()

    def img():
        return torch.randn(3, cfg.image_size, cfg.image_size, generator=g)

    specs = [
        ([img()], [ids(5)], ids(3)),
        ([], [ids(4), ids(6)], ids(1)),
        ([img(), img()], [], ids(2)),
        ([], [], ids(4)),
    ]
    return [
        task_row(i, s, p, [], cfg.image_slots, cfg.max_seq_len, cfg.span_max_len - 1) for i, s, p in specs
    ]


def _decode(rank, world, tp):
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset
    from training.model.generation import generate_rows

    topo = init_distributed(ParallelConfig(tp=tp))
    cfg = model_config_from_preset("debug", init_std=0.2)  # a larger init: peaked, varied next-token choices
    model = MetaLM(cfg, topo)
    rows = _rows(cfg)
    out = {}
    for name, kw in {
        "greedy": dict(num_beams=1),
        "greedy_nocache": dict(num_beams=1, use_cache=False),
        "beam1": dict(num_beams=1, length_penalty=0.7),
        "beam3": dict(num_beams=3),
        "beam3_nocache": dict(num_beams=3, use_cache=False),
    }.items():
        hyps = generate_rows(model, rows, max_new_tokens=8, **kw)
        out[name] = [(h.tokens, round(h.logprob, 4)) for h in hyps]
    out["greedy_alone"] = [generate_rows(model, [r], max_new_tokens=8)[0].tokens for r in rows]
    out["beam3_alone"] = [generate_rows(model, [r], max_new_tokens=8, num_beams=3)[0].tokens for r in rows]
    out["training"] = model.training
    destroy_distributed()
    return out


def test_cache_batching_and_one_beam_change_nothing():
    (r,) = run_ranks(1, _decode, 1)
    tokens = {
        k: [t for t, _ in v] for k, v in r.items() if isinstance(v, list) and v and isinstance(v[0], tuple)
    }
    assert len({tuple(t) for t, _ in r["greedy"]}) > 1  # the rows really differ
    assert tokens["greedy"] == tokens["greedy_nocache"] == tokens["beam1"] == r["greedy_alone"]
    assert tokens["beam3"] == tokens["beam3_nocache"] == r["beam3_alone"]
    for (_, a), (_, b) in zip(r["greedy"], r["greedy_nocache"]):
        assert a == pytest.approx(b, abs=1e-3)
    assert r["training"] is True  # generation restores the mode


def test_tp2_decodes_as_tp1():
    (r1,) = run_ranks(1, _decode, 1)
    r2 = run_ranks(2, _decode, 2)
    assert r2[0] == r2[1]
    for key in ("greedy", "beam3"):
        assert [t for t, _ in r2[0][key]] == [t for t, _ in r1[key]], key
        for (_, a), (_, b) in zip(r2[0][key], r1[key]):
            assert a == pytest.approx(b, abs=1e-3)
