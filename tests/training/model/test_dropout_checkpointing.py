"""Dropout under TP (per-rank attention masks, shared hidden masks) and activation checkpointing exactness."""

from __future__ import annotations

import torch

from tests.batches import make_batch, numpy_dict
from tests.distributed import run_ranks


def _rng_state():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return torch.get_rng_state(), {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()}


def _set_rng_state(state):
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state[0])
    get_cuda_rng_tracker().set_states({k: v.clone() for k, v in state[1].items()})


def _run(rank, world):
    import torch.utils.checkpoint as torch_ckpt

    import training.model.layers as layers
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset
    from training.model.tp_shards import gather_full_grads

    topo = init_distributed(ParallelConfig(tp=2))
    out = {}
    # attention-probability dropout: same q/k/v on both ranks, different masks (per-TP-rank stream)
    cfg = model_config_from_preset("debug", dropout=0.2, attention_dropout=0.3)
    model = MetaLM(cfg, topo)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 16, generator=g) for _ in range(3))
    attn = model.decoder.layers[0].attn
    out["attn"] = attn._core(q, k, v, None, True).numpy()
    out["hidden"] = torch.nn.functional.dropout(torch.ones(64), 0.5).numpy()
    batch = make_batch(cfg, "mixed", seed=3)
    state = _rng_state()
    for mode in ("none", "full", "selective", "torch"):
        m_cfg = model_config_from_preset(
            "debug",
            dropout=0.2,
            attention_dropout=0.3,
            activation_checkpointing="full" if mode == "torch" else mode,
            # a frozen ViT layer before a trainable one: the checkpointed trainable layer still gets grads
            **{"vision_encoder.num_layers": 2, "vision_encoder.trainable_layers": 1},
        )
        if mode == "torch":  # negative control: torch's checkpoint does not replay the TP RNG tracker
            layers.checkpoint = lambda fn, *a: torch_ckpt.checkpoint(fn, *a, use_reentrant=True)
        m = MetaLM(m_cfg, topo)
        if mode == "none":
            with torch.no_grad():
                out["eval_loss"] = m.eval()(batch).item()
            m.train()
        _set_rng_state(state)
        loss = m(batch)
        loss.backward()
        out[mode] = (loss.item(), numpy_dict(gather_full_grads(m, topo)))
    destroy_distributed()
    return out


def test_dropout_masks_and_checkpointing_under_tp():
    r0, r1 = run_ranks(2, _run)
    for r in (r0, r1):
        for key in ("attn", "hidden"):
            r[key] = torch.from_numpy(r[key])
        for mode in ("none", "full", "selective", "torch"):
            r[mode] = (r[mode][0], {n: torch.from_numpy(g) for n, g in r[mode][1].items()})
    # split activations: different masks per TP rank; replicated ones: identical masks
    assert not torch.allclose(r0["attn"], r1["attn"])
    assert torch.equal(r0["hidden"], r1["hidden"])
    for mode in ("none", "full", "selective"):
        # identical loss on both TP ranks (replicated activations got the same hidden-dropout masks)
        assert r0[mode][0] == r1[mode][0], mode
    assert r0["none"][0] != r0["eval_loss"], "dropout had no effect"
    ref = r0["none"][1]
    assert "vision_encoder.stack.layers.1.attn.qkv.weight" in ref
    assert "vision_encoder.stack.layers.0.attn.qkv.weight" not in ref  # frozen
    for mode in ("full", "selective"):
        assert r0[mode][0] == r0["none"][0], mode
        assert set(r0[mode][1]) == set(ref), mode
        for name, g in ref.items():
            torch.testing.assert_close(
                r0[mode][1][name], g, rtol=1e-5, atol=1e-6, msg=f"{mode}: grad of {name}"
            )
    # the test can tell: torch.utils.checkpoint replays other attention-dropout masks -> other grads
    assert any(not torch.allclose(r0["torch"][1][n], g, rtol=1e-5, atol=1e-6) for n, g in ref.items())
