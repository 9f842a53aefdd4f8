"""evaluation.generate: the prefix layout with in-context demonstrations (encoder- vs decoder-style),
choice scoring against a direct log-likelihood, and generation with demonstrations at TP=1 and TP=2."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from common.errors import UserError
from common.special_tokens import BOS_ID, END_IMAGE_ID, EOS_ID, IMAGE_ID, PAD_ID
from evaluation.generate import Demonstration, Example, prefix_row
from tests.distributed import run_ranks
from training.data.semicausal import collate

CFG = SimpleNamespace(image_slots=2, image_size=8, max_seq_len=64, span_max_len=9)
IMG = [IMAGE_ID, PAD_ID, PAD_ID, END_IMAGE_ID]  # <image> 2 slots </image>


def _hand():
    a, b = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    query = Example([a], [[40, 41]], [60])
    demos = [
        Demonstration(Example([], [[10, 11, 12]], [20]), [30]),
        Demonstration(Example([b], [[13], [14, 15]], [21]), [31, 32]),
    ]
    return query, demos, a, b


def test_prefix_with_two_demonstrations_encoder_style():
    query, demos, a, b = _hand()
    row = prefix_row(query, demos, "encoder", model_config=CFG)
    # demonstration 1 (positions 0-6), demonstration 2 (7-18), then the query's prefix (19-26)
    assert row.seq[:-1].tolist() == (
        [BOS_ID, 10, 11, 12, 20, 30, EOS_ID]
        + [BOS_ID, *IMG, 13, 14, 15, 21, 31, 32, EOS_ID]
        + [BOS_ID, *IMG, 40, 41, 60]
    )
    assert row.seq[-1] == EOS_ID  # task_row's closing token: not an input
    batch = collate([row], CFG.image_slots, CFG.image_size)
    # every encoder text is its own non-causal span: the language encoder reads <s> + its tokens
    assert batch.span_tokens.tolist() == [
        [BOS_ID, 10, 11, 12],
        [BOS_ID, 13, PAD_ID, PAD_ID],
        [BOS_ID, 14, 15, PAD_ID],
        [BOS_ID, 40, 41, PAD_ID],
    ]
    assert batch.span_dest.tolist() == [[1, 2, 3], [12, -1, -1], [13, 14, -1], [24, 25, -1]]
    # images: demonstration 2's, then the query's (their slot positions)
    assert batch.image_dest.tolist() == [[9, 10], [21, 22]]
    assert torch.equal(batch.images[0], b) and torch.equal(batch.images[1], a)
    # decoder tokens (not replaced): prompts, labels, </s>, <s>, image markers
    replaced = set(batch.span_dest[batch.span_dest >= 0].tolist()) | set(batch.image_dest.flatten().tolist())
    decoder = [t for i, t in enumerate(batch.tokens[0].tolist()) if i not in replaced]
    assert decoder == (
        [BOS_ID, 20, 30, EOS_ID]  # demonstration 1: its prompt and label
        + [BOS_ID, IMAGE_ID, END_IMAGE_ID, 21, 31, 32, EOS_ID]  # demonstration 2
        + [BOS_ID, IMAGE_ID, END_IMAGE_ID, 60]  # the query, up to its prompt
    )


def test_prefix_with_two_demonstrations_decoder_style():
    query, demos, a, b = _hand()
    row = prefix_row(query, demos, "decoder", model_config=CFG)
    # the same token sequence: only where the demonstrations' encoder texts go differs
    assert row.seq.tolist() == prefix_row(query, demos, "encoder", model_config=CFG).seq.tolist()
    batch = collate([row], CFG.image_slots, CFG.image_size)
    assert batch.span_tokens.tolist() == [[BOS_ID, 40, 41]]  # only the query's encoder text is a span
    assert batch.span_dest.tolist() == [[24, 25]]
    assert batch.image_dest.tolist() == [[9, 10], [21, 22]]  # images still go through the vision encoder
    replaced = {24, 25, 9, 10, 21, 22}
    decoder = [t for i, t in enumerate(batch.tokens[0].tolist()) if i not in replaced]
    assert decoder == (
        [BOS_ID, 10, 11, 12, 20, 30, EOS_ID]  # demonstration 1's text read causally by the decoder
        + [BOS_ID, IMAGE_ID, END_IMAGE_ID, 13, 14, 15, 21, 31, 32, EOS_ID]
        + [BOS_ID, IMAGE_ID, END_IMAGE_ID, 60]
    )


def test_prefix_without_demonstrations_is_task_rows_prefix_and_limits():
    from training.data.finetune import task_row

    query, demos, a, _ = _hand()
    row = prefix_row(query, model_config=CFG)
    ref = task_row([a], [[40, 41]], [60], [], 2, 64, 8)
    assert row.seq.tolist() == ref.seq.tolist() and row.spans == ref.spans
    scored = prefix_row(query, demos, model_config=CFG, target=[70, 71])
    assert scored.seq[-3:].tolist() == [70, 71, EOS_ID]
    assert scored.loss.nonzero()[0].tolist() == [
        len(scored.seq) - 4,
        len(scored.seq) - 3,
        len(scored.seq) - 2,
    ]
    with pytest.raises(UserError, match="demo_style"):
        prefix_row(query, demos, "gpt", model_config=CFG)
    with pytest.raises(UserError, match="fewer or shorter demonstrations"):
        prefix_row(query, demos * 4, model_config=CFG)


# ---------------------------------------------------------------------------------------------------
def _examples(cfg):
    g = torch.Generator().manual_seed(5)

    def ids(n):
        return torch.randint(7, cfg.vocab_size, (n,), generator=g).tolist()

    def img():
        return torch.randn(3, cfg.image_size, cfg.image_size, generator=g)

    examples = [
        Example([img()], [ids(4)], ids(2)),
        Example([], [ids(3), ids(5)], ids(1)),
        Example([], [], ids(3)),
    ]
    demos = [
        Demonstration(Example([], [ids(3)], ids(1)), ids(2)),
        Demonstration(Example([img()], [], ids(2)), ids(1)),
    ]
    choices = [[ids(1), ids(3), ids(2)], [ids(2), ids(2)], [ids(4)]]
    return examples, demos, choices


def _run(rank, world, tp):
    from evaluation.generate import generate, score_choices
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset

    topo = init_distributed(ParallelConfig(tp=tp))
    cfg = model_config_from_preset("debug", init_std=0.2)
    model = MetaLM(cfg, topo)
    examples, demos, choices = _examples(cfg)
    out = {}
    for style in ("encoder", "decoder"):
        out[style] = generate(
            model,
            examples,
            demonstrations=demos,
            demo_style=style,
            max_new_tokens=5,
            num_beams=2,
            batch_size=2,
        )
    out["zero_shot"] = generate(model, examples, max_new_tokens=5)
    out["per_example_demos"] = generate(
        model, examples, demonstrations=[demos, [], demos[:1]], max_new_tokens=5
    )
    out["one_at_a_time"] = [
        generate(model, [examples[i]], demonstrations=d, max_new_tokens=5)[0]
        for i, d in enumerate([demos, [], demos[:1]])
    ]
    scores = score_choices(model, examples, choices, demonstrations=demos)
    out["scores"] = [[(s.logprob, s.num_tokens) for s in ex] for ex in scores]
    out["scores_eos"] = [
        [(s.logprob, s.num_tokens) for s in ex]
        for ex in score_choices(model, examples, choices, demonstrations=demos, include_eos=True)
    ]
    # direct: log-softmax of the full logits at each choice token, on the same layout
    direct = []
    model.eval()
    with torch.no_grad():
        for ex, cands in zip(examples, choices):
            row_scores = []
            for c in cands:
                row = prefix_row(ex, demos, model_config=cfg, target=c)
                batch = collate([row], cfg.image_slots, cfg.image_size)
                logp = torch.log_softmax(model.logits(batch)[0].double(), dim=-1)
                start = len(row.seq) - 1 - len(c) - 1  # input position predicting the first choice token
                row_scores.append(sum(float(logp[start + j, t]) for j, t in enumerate(c)))
            direct.append(row_scores)
    out["direct"] = direct
    destroy_distributed()
    return out


def test_generate_with_demonstrations_and_score_choices_tp1_tp2():
    (r1,) = run_ranks(1, _run, 1)
    assert r1["encoder"] != r1["decoder"]  # the demonstration style changes what the model reads
    assert r1["per_example_demos"] == r1["one_at_a_time"]
    assert r1["per_example_demos"][1] == r1["zero_shot"][1]  # no demonstrations: the zero-shot prefix
    for ex_scores, ex_direct, ex_eos, cands in zip(
        r1["scores"], r1["direct"], r1["scores_eos"], _examples_ref()
    ):
        for (lp, n), d, (lp_eos, n_eos), c in zip(ex_scores, ex_direct, ex_eos, cands):
            assert n == len(c) and n_eos == len(c) + 1
            assert lp == pytest.approx(d, abs=1e-4)
            assert lp_eos < lp
    r2 = run_ranks(2, _run, 2)
    assert r2[0] == r2[1]
    for key in ("encoder", "decoder", "zero_shot", "per_example_demos"):
        assert r2[0][key] == r1[key], key
    for a, b in zip(r2[0]["scores"], r1["scores"]):
        assert [x for x, _ in a] == pytest.approx([x for x, _ in b], abs=1e-4)


def _examples_ref():
    from training.model import model_config_from_preset

    return _examples(model_config_from_preset("debug"))[2]


def _zero3(rank, world):
    """ZeRO-3 (TP=1, DP=2): the partitioned model generates and scores what the plain model does; the
    ranks make the same number of calls on other examples (rank 1 decodes for more steps)."""
    import deepspeed

    from evaluation.generate import generate, score_choices
    from parallel import ParallelConfig, TopologyMPU, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset

    topo = init_distributed(ParallelConfig(tp=1))
    cfg = model_config_from_preset("debug", init_std=0.2)
    examples, demos, choices = _examples(cfg)
    mine = examples if rank == 0 else [examples[2], examples[0], examples[1]]
    plain = MetaLM(cfg, topo)
    want = generate(plain, mine, demonstrations=demos, max_new_tokens=6 + 3 * rank, num_beams=2)
    want_scores = score_choices(plain, mine, choices[: len(mine)])
    model = MetaLM(cfg, topo)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=opt, config=ds, mpu=TopologyMPU(topo), dist_init_required=False
    )
    assert any(p.ds_numel != p.numel() for p in engine.module.parameters())  # really partitioned
    got = generate(engine.module, mine, demonstrations=demos, max_new_tokens=6 + 3 * rank, num_beams=2)
    got_scores = score_choices(engine.module, mine, choices[: len(mine)])
    destroy_distributed()
    return (
        want,
        got,
        [[s.logprob for s in ex] for ex in want_scores],
        [[s.logprob for s in ex] for ex in got_scores],
    )


def test_generate_and_score_under_zero3():
    for want, got, want_scores, got_scores in run_ranks(2, _zero3, timeout=180):
        assert got == want
        for a, b in zip(got_scores, want_scores):
            assert a == pytest.approx(b, abs=1e-4)
