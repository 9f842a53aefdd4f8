"""TP=2 / TP=4 forward loss and every gradient equal the TP=1 model with the same weights (gloo ranks)."""

from __future__ import annotations

import pytest
import torch

from tests.batches import make_batch, numpy_dict, tensor_dict
from tests.distributed import run_ranks

KINDS = ("text", "image", "mixed")
VARIANTS = {
    # the debug preset as shipped (linear connector, pre-LN)
    "debug": {},
    # resampler connector, DeepNorm decoder, partly frozen ViT, padded vocab (500 -> 512)
    "resampler-deepnorm": {
        "connector.kind": "resampler",
        "decoder.norm_scheme": "deepnorm",
        "vocab_size": 500,
        "vision_encoder.num_layers": 2,
        "vision_encoder.trainable_layers": 1,
    },
}


def _run(rank, world, tp, overrides, ref_sd):
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model import MetaLM, model_config_from_preset
    from training.model.tp_shards import gather_full_grads, gather_full_state_dict, load_full_state_dict

    topo = init_distributed(ParallelConfig(tp=tp))
    cfg = model_config_from_preset("debug", **overrides)
    model = MetaLM(cfg, topo)
    own_sd = gather_full_state_dict(model, topo)
    if ref_sd is not None:
        ref_sd = tensor_dict(ref_sd)
        # the init is TP-independent: gathered shards equal the TP=1 weights before any loading
        for k, v in ref_sd.items():
            torch.testing.assert_close(own_sd[k], v, rtol=0, atol=0, msg=f"init of {k} depends on TP")
        # and loading a full state dict (scaled, so a no-op load would be caught) slices it back
        scaled = {k: v * 1.5 for k, v in ref_sd.items()}
        load_full_state_dict(model, scaled, topo)
        regathered = gather_full_state_dict(model, topo)
        for k, v in scaled.items():
            torch.testing.assert_close(regathered[k], v, rtol=0, atol=0)
        load_full_state_dict(model, ref_sd, topo)
    out = {"sd": numpy_dict(own_sd) if tp == 1 else None}
    for i, kind in enumerate(KINDS):
        model.zero_grad(set_to_none=True)
        loss = model(make_batch(cfg, kind, seed=i))
        loss.backward()
        grads = gather_full_grads(model, topo)
        out[kind] = (loss.item(), numpy_dict(grads) if topo.tp_rank == 0 else None)
    destroy_distributed()
    return out


@pytest.fixture(scope="module", params=list(VARIANTS))
def reference(request):
    overrides = VARIANTS[request.param]
    (ref,) = run_ranks(1, _run, 1, overrides, None)
    return overrides, ref


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_tp1(reference, tp):
    overrides, ref = reference
    results = run_ranks(tp, _run, tp, overrides, ref["sd"])
    for kind in KINDS:
        ref_loss, ref_grads = ref[kind]
        losses = [r[kind][0] for r in results]
        assert len(set(losses)) == 1, f"{kind}: loss differs across TP ranks: {losses}"
        assert losses[0] == pytest.approx(ref_loss, rel=1e-5, abs=1e-6), kind
        grads = results[0][kind][1]
        assert set(grads) == set(ref_grads), f"{kind}: different parameters got gradients"
        assert len(grads) > 40
        for name, g in ref_grads.items():
            torch.testing.assert_close(
                torch.from_numpy(grads[name]),
                torch.from_numpy(g),
                rtol=1e-4,
                atol=1e-5,
                msg=f"{kind}: grad of {name}",
            )
    if overrides.get("vision_encoder.trainable_layers") == 1:
        frozen = [n for n in ref["mixed"][1] if n.startswith("vision_encoder.stack.layers.0.")]
        assert not frozen, f"frozen ViT layer got gradients: {frozen}"


def test_every_parameter_gets_a_gradient_in_every_kind(reference):
    """Dummy inputs keep the set of parameters with gradients the same for text-only / image-only batches."""
    overrides, ref = reference
    names = [set(ref[k][1]) for k in KINDS]
    assert names[0] == names[1] == names[2]
