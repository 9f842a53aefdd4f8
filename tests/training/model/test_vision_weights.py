"""Loading local ViT weights (our names or HF CLIP names) into the vision encoder, under TP=2."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from common.errors import UserError
from parallel.groups import Topology
from tests.batches import numpy_dict
from tests.distributed import run_ranks
from training.model import MetaLM, model_config_from_preset

VIT = {"vision_encoder.num_layers": 2, "vision_encoder.activation": "quick_gelu"}


def to_hf_clip(vision: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """Our full vision tensors -> HF CLIPVisionModel names (inverse of vision_weights.from_hf_clip)."""
    out = {
        "vision_model.embeddings.position_ids": torch.arange(17)[None],
        "text_model.embeddings.token_embedding.weight": torch.zeros(3, 4),
        "logit_scale": torch.ones(()),
    }
    for k, t in vision.items():
        if k == "cls":
            out["vision_model.embeddings.class_embedding"] = t
        elif k == "patch_embed.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = t.reshape(t.shape[0], 3, 8, 8)
        elif k == "positions":
            out["vision_model.embeddings.position_embedding.weight"] = t
        elif k.startswith("ln_pre."):
            out["vision_model.pre_layrnorm." + k[7:]] = t
        elif k.startswith("stack.final_ln."):
            out["vision_model.post_layernorm." + k[15:]] = t
        else:
            _, _, i, rest = k.split(".", 3)
            base = f"vision_model.encoder.layers.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                per_head = t.reshape(heads, 3, -1, *t.shape[1:])
                for j, name in enumerate("qkv"):
                    out[base + f"self_attn.{name}_proj.{kind}"] = per_head[:, j].reshape(-1, *t.shape[1:])
            else:
                hf = {"ln1": "layer_norm1", "ln2": "layer_norm2", "attn.out": "self_attn.out_proj"}
                mod, kind = rest.rsplit(".", 1)
                out[base + f"{hf.get(mod, mod)}.{kind}"] = t
    return out


def _run(rank, world, tmp):
    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.model.tp_shards import gather_full_state_dict

    topo = init_distributed(ParallelConfig(tp=2))
    src = MetaLM(model_config_from_preset("debug", init_seed=1, **VIT), topo)
    full = gather_full_state_dict(src, topo)
    vision = {k[len("vision_encoder.") :]: v for k, v in full.items() if k.startswith("vision_encoder.")}
    if rank == 0:
        save_file(
            {"vision_encoder." + k: v.contiguous() for k, v in vision.items()}, f"{tmp}/ours.safetensors"
        )
        save_file({k: v.contiguous() for k, v in to_hf_clip(vision, 4).items()}, f"{tmp}/clip.safetensors")
        torch.save({"state_dict": vision}, f"{tmp}/ours.pt")
    torch.distributed.barrier()
    out = {}
    for name in ("ours.safetensors", "clip.safetensors", "ours.pt"):
        cfg = model_config_from_preset(
            "debug", init_seed=2, **VIT, **{"vision_encoder.weights_path": f"{tmp}/{name}"}
        )
        dst = gather_full_state_dict(MetaLM(cfg, topo), topo)
        out[name] = (
            all(torch.equal(dst[k], v) for k, v in full.items() if k.startswith("vision_encoder.")),
            torch.equal(dst["decoder.layers.0.attn.qkv.weight"], full["decoder.layers.0.attn.qkv.weight"]),
        )
    out["vision"] = numpy_dict(vision)
    destroy_distributed()
    return out


def test_load_ours_and_clip_weights_tp2(tmp_path):
    r0, r1 = run_ranks(2, _run, str(tmp_path))
    for name in ("ours.safetensors", "clip.safetensors", "ours.pt"):
        assert r0[name] == r1[name] == (True, False), name  # vision copied on both ranks; decoder untouched


def test_shape_mismatch_names_the_tensor(tmp_path):
    cfg = model_config_from_preset("debug", **VIT)
    model = MetaLM(cfg, Topology.single_process())  # construction and loading need no process group
    sd = {k: v.detach().clone() for k, v in model.vision_encoder.named_parameters()}
    sd["positions"] = torch.zeros(11, 64)  # not CLS + a square grid (those are interpolated)
    del sd["ln_pre.bias"]
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, tmp_path / "bad.safetensors")
    bad = model_config_from_preset(
        "debug", **VIT, **{"vision_encoder.weights_path": str(tmp_path / "bad.safetensors")}
    )
    with pytest.raises(UserError) as e:
        MetaLM(bad, Topology.single_process())
    msg = str(e.value)
    assert "tensor positions has shape (11, 64), the vision encoder needs (17, 64)" in msg
    assert "missing tensors: ln_pre.bias" in msg and "extra.weight" in msg
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    junk = model_config_from_preset("debug", **{"vision_encoder.weights_path": str(tmp_path / "junk.pt")})
    with pytest.raises(UserError, match="cannot read vision weights"):
        MetaLM(junk, Topology.single_process())


def _clip_parity(rank, world, path, images):
    from parallel import ParallelConfig, destroy_distributed, init_distributed

    topo = init_distributed(ParallelConfig(tp=world))
    cfg = model_config_from_preset("debug", **VIT, **{"vision_encoder.weights_path": path})
    model = MetaLM(cfg, topo).eval()
    with torch.no_grad():
        out = model.vision_encoder(torch.from_numpy(images)).numpy()
    destroy_distributed()
    return out


def test_hf_clip_vision_weights_give_the_same_features(tmp_path):
    """A real (tiny, random) HF CLIPVisionModel: our ViT with its weights computes its features, at TP=2."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    )
    hf = transformers.CLIPVisionModel(hf_cfg).eval()
    with torch.no_grad():  # CLIP's init leaves LayerNorms at 1/0: randomize so the test sees them
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path = str(tmp_path / "clip_vision.safetensors")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf.vision_model.post_layernorm(hf(pixel_values=images).last_hidden_state)
    outs = run_ranks(2, _clip_parity, path, images.numpy())
    for out in outs:
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-5)
