"""ModelConfig: presets, overrides, and problems collected together with their fixes."""

from __future__ import annotations

import pytest

from common.errors import UserError
from training.model.config import PRESETS, ModelConfig, model_config_from_preset


def test_presets_are_valid_and_debug_divides_by_tp_2_and_4():
    for name in PRESETS:
        cfg = model_config_from_preset(name)
        assert cfg.preset == name
        assert cfg.problems(tp=1, world_size=1) == []
    debug = model_config_from_preset("debug")
    assert debug.problems(tp=2, world_size=2) == []
    assert debug.problems(tp=4, world_size=4) == []
    assert model_config_from_preset("metalm-1.3b").problems(tp=8, world_size=8) == []
    # room for <s> <image> [K] </image> + a ~12-token caption + </s>
    assert debug.max_seq_len >= 1 + 1 + debug.image_slots + 1 + 12 + 1


def test_properties():
    cfg = model_config_from_preset("debug")
    assert cfg.image_slots == (32 // 8) ** 2 + 1  # linear connector: CLS + patches
    assert cfg.span_max_len == cfg.text_encoder.max_len
    res = model_config_from_preset("debug", **{"connector.kind": "resampler", "connector.num_latents": 8})
    assert res.image_slots == 8
    big = model_config_from_preset("metalm-1.3b")
    assert (big.image_size, big.image_slots, big.vocab_size, big.max_seq_len) == (224, 257, 64000, 2048)


def test_overrides_dotted_aliases_sections_and_unknown_keys():
    cfg = model_config_from_preset(
        "debug",
        vocab_size=700,
        max_seq_len=256,
        dropout=0,
        **{"decoder.num_layers": 3},
        text_encoder={"max_len": 40},
    )
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.decoder.num_layers, cfg.span_max_len) == (700, 256, 3, 40)
    assert isinstance(cfg.dropout, float)
    assert cfg.padded_vocab_size() == 704
    assert model_config_from_preset("debug").vocab_size == 512  # presets are not mutated
    with pytest.raises(UserError, match="decoder.num_layerz"):
        model_config_from_preset("debug", **{"decoder.num_layerz": 3})
    with pytest.raises(UserError, match="expected int"):
        model_config_from_preset("debug", vocab_size="many")
    with pytest.raises(UserError, match="unknown model preset 'gpt5'.*debug"):
        model_config_from_preset("gpt5")
    cfg2 = ModelConfig.from_dict({"preset": "small", "decoder": {"num_layers": 2}})
    assert cfg2.preset == "small" and cfg2.decoder.num_layers == 2
    assert ModelConfig.from_dict(cfg2.to_dict()) == cfg2


def test_problems_are_collected_with_fixes():
    cfg = model_config_from_preset(
        "debug",
        pad_vocab_to_multiple_of=5,
        activation_checkpointing="some",
        **{
            "decoder.num_heads": 6,
            "decoder.hidden_size": 66,
            "text_encoder.ffn_hidden_size": 129,
            "vision_encoder.image_size": 30,
            "vision_encoder.weights_path": "/nonexistent/vit.safetensors",
            "decoder.norm_scheme": "post",
        },
    )
    problems = cfg.problems(tp=4, world_size=2)
    text = "\n".join(problems)
    for needle in [
        "larger than the world size 2",
        "padded vocab 515",
        "model.pad_vocab_to_multiple_of to a multiple of 4",
        "model.decoder.num_heads=6 is not divisible by tp=4",
        "model.text_encoder.ffn_hidden_size=129 is not divisible by tp=4",
        "image_size=30 is not divisible by model.vision_encoder.patch_size=8",
        "weights_path='/nonexistent/vit.safetensors' does not exist",
        "activation_checkpointing='some'",
        "norm_scheme='post'",
    ]:
        assert needle in text, f"missing problem {needle!r} in:\n{text}"
    with pytest.raises(UserError) as e:
        cfg.validate(tp=4, world_size=2)
    assert f"{len(problems)} problem(s)" in str(e.value)


def test_unknown_preset_name_in_config_is_a_problem():
    cfg = model_config_from_preset("debug")
    cfg.preset = "nope"
    assert any("model.preset='nope' is unknown" in p for p in cfg.problems(1))
