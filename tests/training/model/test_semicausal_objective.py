"""Semi-causal assembly on the paper's hand example: x0..x11 with non-causal spans x[3:5] and x[8:10]."""

from __future__ import annotations

import torch

from common.special_tokens import BOS_ID, PAD_ID
from tests.distributed import run_ranks
from training.data.batch import Batch

T = 12
SPANS = [(3, 5), (8, 10)]
REPLACED = [3, 4, 8, 9]  # decoder inputs that come from the language encoder
# targets[t] = x[t+1]; loss only where x[t+1] is a causal token: not x3,x4 (t=2,3), not x8,x9 (t=7,8),
# and t=11 has no next token. The token after a span is predicted from the span's last position (t=4, 9).
LOSS_POSITIONS = [0, 1, 4, 5, 6, 9, 10]


def hand_batch(x: list[int]) -> Batch:
    mask = torch.zeros(1, T)
    mask[0, LOSS_POSITIONS] = 1.0
    return Batch(
        tokens=torch.tensor([x]),
        targets=torch.tensor([x[1:] + [PAD_ID]]),
        loss_mask=mask,
        span_tokens=torch.tensor([[BOS_ID] + x[s:e] for s, e in SPANS]),
        span_dest=torch.tensor([list(range(s, e)) for s, e in SPANS]),
        images=torch.zeros(0, 3, 32, 32),
        image_dest=torch.zeros(0, 17, dtype=torch.long),
    )


def _run(rank, world):
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset
    from training.model.layers import sinusoidal_positions

    topo = init_distributed(ParallelConfig(tp=1))
    cfg = model_config_from_preset("debug")
    model = MetaLM(cfg, topo).eval()
    x = [10 + 7 * i for i in range(T)]
    base = hand_batch(x)
    out = {}
    with torch.no_grad():
        positions = sinusoidal_positions(torch.arange(T), cfg.decoder.hidden_size, torch.float32)
        emb = model.embed(base)[0] - positions
        spans = model.encode_spans(base.span_tokens)  # [2, 2, H]
        out["replaced_ok"] = all(
            torch.allclose(emb[p], spans[i // 2, i % 2], atol=1e-6) for i, p in enumerate(REPLACED)
        )
        tok_emb = model.embedding(base.tokens)[0] * model.embed_scale
        out["kept_ok"] = all(
            torch.allclose(emb[p], tok_emb[p], atol=1e-6) for p in range(T) if p not in REPLACED
        )
        logits = model.logits(base)[0]
        per_token = model(base, reduction="none")[0]
        out["loss_positions"] = torch.nonzero(per_token).flatten().tolist()
        out["mean_matches"] = torch.allclose(model(base), per_token.sum() / len(LOSS_POSITIONS))

        def changed_positions(batch: Batch) -> list[int]:
            diff = (model.logits(batch)[0] - logits).abs().amax(-1)
            return torch.nonzero(diff > 1e-5).flatten().tolist()

        # a decoder id at a replaced position is ignored entirely
        b = hand_batch(x)
        b.tokens[0, 3] = 499
        out["decoder_id_in_span"] = changed_positions(b)
        # each causal token j changes the logits at positions >= j only
        out["causal"] = {}
        for j in [p for p in range(T) if p not in REPLACED]:
            b = hand_batch(x)
            b.tokens[0, j] = 499
            out["causal"][j] = changed_positions(b)
        # a span token (encoder input) changes the whole span (bidirectional) and what follows, nothing before
        for i in range(len(SPANS)):
            b = hand_batch(x)
            b.span_tokens[i, 2] = 499  # the span's last token
            out[f"span{i}"] = changed_positions(b)
    destroy_distributed()
    return out


def test_semicausal_hand_example():
    (r,) = run_ranks(1, _run)
    assert r["replaced_ok"] and r["kept_ok"]
    assert r["loss_positions"] == LOSS_POSITIONS
    assert r["mean_matches"]
    assert r["decoder_id_in_span"] == []
    for j, changed in r["causal"].items():
        assert changed == list(range(j, T)), f"changing x{j} changed logits at {changed}"
    assert r["span0"] == list(range(3, T))  # includes position 3 < 4: the span is non-causal
    assert r["span1"] == list(range(8, T))
