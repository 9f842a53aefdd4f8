"""Another resolution between stages: ViT position embeddings are interpolated over the patch grid (CLS kept)
when CLIP weights or our exported weights are loaded into a model with another image_size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parallel.groups import Topology
from training.model import MetaLM, model_config_from_preset
from training.model.tp_shards import load_full_state_dict
from training.model.vision_weights import resize_positions

VIT = {"vision_encoder.num_layers": 2, "vision_encoder.activation": "quick_gelu"}


def test_resize_positions_keeps_cls_and_is_bicubic_over_the_grid():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1 + 4 * 4, 8, generator=g)
    assert resize_positions(pos, 4) is pos  # same grid: untouched
    big = resize_positions(pos, 6)
    assert big.shape == (1 + 6 * 6, 8)
    assert torch.equal(big[0], pos[0])  # CLS row unchanged
    grid = pos[1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(big[1:], want.permute(0, 2, 3, 1).reshape(36, 8))
    # a grid constant per channel stays constant (the bicubic weights sum to one)
    flat = torch.cat([pos[:1], pos[1:2].expand(16, 8)])
    torch.testing.assert_close(resize_positions(flat, 7)[1:], pos[1:2].expand(49, 8))
    assert resize_positions(torch.zeros(11, 8), 4).shape == (11, 8)  # not CLS + a square grid: left alone


def test_clip_folder_and_our_export_load_at_a_higher_resolution(tmp_path):
    from common.streaming_compat import ensure_streaming_importable

    ensure_streaming_importable()
    transformers = __import__("pytest").importorskip("transformers")
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
    hf = transformers.CLIPVisionModel(hf_cfg)
    hf.save_pretrained(str(tmp_path / "clip"))  # a folder: config.json + model.safetensors
    src = hf.vision_model.embeddings.position_embedding.weight.detach()  # [1 + 4x4, 64]
    for size in (32, 48):
        cfg = model_config_from_preset(
            "debug", image_size=size, **VIT, **{"vision_encoder.weights_path": str(tmp_path / "clip")}
        )
        assert cfg.problems(tp=1) == []  # config.json is checked; its image_size may differ from ours
        pos = MetaLM(cfg, Topology.single_process()).vision_encoder.positions.detach()
        grid = size // 8
        assert pos.shape == (1 + grid * grid, 64)
        assert torch.equal(pos[0], src[0])
        if size == 32:
            assert torch.equal(pos, src)  # identity at the weights' own resolution
        else:
            assert torch.equal(pos, resize_positions(src, grid))

    # our export (a full state dict, as `python -m training.export` writes) at 32 px into a 48 px model
    small = MetaLM(model_config_from_preset("debug", **VIT), Topology.single_process())
    full = {n: p.detach().clone() for n, p in small.named_parameters()}
    for name in ("embedding.weight", "text_encoder.embedding.weight"):
        full[name] = full[name][: small.cfg.vocab_size]
    big = MetaLM(
        model_config_from_preset("debug", image_size=48, init_seed=5, **VIT), Topology.single_process()
    )
    load_full_state_dict(big, full, big.topology)
    got = big.vision_encoder.positions.detach()
    assert got.shape == (37, 64) and torch.equal(got[0], full["vision_encoder.positions"][0])
    assert torch.equal(got, resize_positions(full["vision_encoder.positions"], 6))
    assert torch.equal(big.vision_encoder.patch_embed.weight, full["vision_encoder.patch_embed.weight"])
