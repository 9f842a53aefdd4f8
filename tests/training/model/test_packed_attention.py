"""Packed finetuning rows: attention stays inside each example and positions restart, so every example
gives the same loss packed as alone (TP=1 and TP=2); unpacked batches keep the plain causal SDPA path;
activation checkpointing (full / selective) gives the same loss and gradients with the packing mask."""

from __future__ import annotations

import numpy as np
import torch

from tests.distributed import run_ranks
from training.data import finetune, semicausal

PACK_LEN = 64  # decoder length for packing: the 4 examples below make 2 packed rows (one with padding)


def _examples(cfg) -> list[semicausal.Row]:
    """Finetuning examples with images, several encoder segments, prompts and targets (task_row)."""
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(7, cfg.vocab_size, (n,), generator=g).tolist()

    def image() -> torch.Tensor:
        return torch.randn(3, cfg.image_size, cfg.image_size, generator=g)

    # (images, segment lengths, prompt length, target length)
    shapes = [(1, [5, 3], 2, 4), (0, [6], 1, 3), (2, [], 2, 2), (0, [4, 2], 0, 5)]
    return [
        finetune.task_row(
            [image() for _ in range(n_img)],
            [ids(n) for n in segs],
            ids(n_prompt),
            ids(n_target),
            slots=cfg.image_slots,
            max_seq_len=cfg.max_seq_len,
            max_segment_len=cfg.span_max_len - 1,
        )
        for n_img, segs, n_prompt, n_target in shapes
    ]


def per_example_losses(model, rows: list[semicausal.Row], cfg, pack: bool) -> list[float]:
    """Sum of the CE over each example's loss tokens, in the order of `rows` (packed or one per row)."""
    if not pack:
        batch = semicausal.collate(rows, cfg.image_slots, cfg.image_size)
        assert not batch.packed
        return model(batch, reduction="none").sum(dim=1).tolist()
    packed = finetune.pack_rows(rows, PACK_LEN)
    batch = semicausal.collate(packed, cfg.image_slots, cfg.image_size)
    assert batch.packed and batch.tokens.shape[0] < len(rows)
    losses = model(batch, reduction="none")
    out: dict[int, float] = {}
    for b in range(batch.tokens.shape[0]):
        ids = batch.example_ids[b]
        for k in ids.unique().tolist():
            if k < 0:
                continue
            where = ids == k
            tokens = batch.tokens[b, where].tolist()
            # which original example this is: its inputs are its own sequence (minus the last token at the end)
            match = [i for i, r in enumerate(rows) if r.seq.tolist()[: len(tokens)] == tokens]
            assert len(match) == 1 and match[0] not in out
            out[match[0]] = losses[b, where].sum().item()
    assert sorted(out) == list(range(len(rows)))
    return [out[i] for i in range(len(rows))]


def _sdpa_calls(fn) -> list[tuple[bool, bool, bool]]:
    """(is_causal, mask given, full mask: one row per query) of every SDPA call made by fn()."""
    import torch.nn.functional as F

    real, calls = F.scaled_dot_product_attention, []

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((is_causal, attn_mask is not None, attn_mask is not None and attn_mask.shape[-2] > 1))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    F.scaled_dot_product_attention = spy
    try:
        fn()
    finally:
        F.scaled_dot_product_attention = real
    return calls


def _run(rank, world, tp):
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset

    topo = init_distributed(ParallelConfig(tp=tp))
    cfg = model_config_from_preset("debug")
    model = MetaLM(cfg, topo).eval()
    rows = _examples(cfg)
    out = {}
    with torch.no_grad():
        out["alone"] = per_example_losses(model, rows, cfg, pack=False)
        out["packed"] = per_example_losses(model, rows, cfg, pack=True)
        unpacked = semicausal.collate(rows, cfg.image_slots, cfg.image_size)
        packed = semicausal.collate(finetune.pack_rows(rows, PACK_LEN), cfg.image_slots, cfg.image_size)
        out["calls_unpacked"] = _sdpa_calls(lambda: model(unpacked))
        out["calls_packed"] = _sdpa_calls(lambda: model(packed))
    destroy_distributed()
    return out


def _check_packed_equals_alone(results):
    for r in results:
        torch.testing.assert_close(
            torch.tensor(r["packed"], dtype=torch.float64),
            torch.tensor(r["alone"], dtype=torch.float64),
            rtol=1e-6,
            atol=1e-5,
        )
        assert min(r["alone"]) > 1.0  # real losses (a random model), not zeros
        dec_layers = 2  # debug preset
        # unpacked: the decoder layers run SDPA is_causal without a mask tensor (the fast path, unchanged)
        assert r["calls_unpacked"].count((True, False, False)) == dec_layers
        assert not any(c[0] and c[1] for c in r["calls_unpacked"])
        # packed: the decoder layers get one full [B, 1, T, T] mask, never is_causal
        assert r["calls_packed"].count((False, True, True)) == dec_layers
        assert not any(c[0] for c in r["calls_packed"])


def test_packed_examples_give_their_unpacked_loss_tp1_and_tp2():
    (r1,) = run_ranks(1, _run, 1)
    _check_packed_equals_alone([r1])
    r2 = run_ranks(2, _run, 2)
    _check_packed_equals_alone(r2)
    assert r2[0]["packed"] == r2[1]["packed"]  # identical on the TP ranks
    np.testing.assert_allclose(r2[0]["alone"], r1["alone"], rtol=1e-5)  # TP=2 equals TP=1


def test_packed_attention_mask():
    from training.model.layers import packed_attention_mask

    ids = torch.tensor([[0, 0, 1, 1, 1, -1, -1]])
    m = packed_attention_mask(ids)[0, 0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # padding sees only itself
        [0, 0, 0, 0, 0, 0, 1],
    ]


def _checkpointing(rank, world):
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from tests.batches import numpy_dict
    from tests.training.model.test_dropout_checkpointing import _rng_state, _set_rng_state
    from training.model import MetaLM, model_config_from_preset
    from training.model.tp_shards import gather_full_grads

    topo = init_distributed(ParallelConfig(tp=2))
    base = model_config_from_preset("debug")
    batch = semicausal.collate(
        finetune.pack_rows(_examples(base), PACK_LEN), base.image_slots, base.image_size
    )
    state = _rng_state()
    out = {}
    for mode in ("none", "full", "selective"):
        cfg = model_config_from_preset(
            "debug", dropout=0.1, attention_dropout=0.2, activation_checkpointing=mode
        )
        model = MetaLM(cfg, topo)
        _set_rng_state(state)
        loss = model(batch)
        loss.backward()
        out[mode] = (loss.item(), numpy_dict(gather_full_grads(model, topo)))
    destroy_distributed()
    return out


def test_checkpointing_with_the_packing_mask():
    r0, _ = run_ranks(2, _checkpointing)
    loss, ref = r0["none"]
    for mode in ("full", "selective"):
        assert r0[mode][0] == loss, mode
        assert set(r0[mode][1]) == set(ref)
        for name, g in ref.items():
            np.testing.assert_allclose(r0[mode][1][name], g, rtol=1e-5, atol=1e-6, err_msg=f"{mode}: {name}")
