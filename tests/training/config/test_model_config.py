"""ModelConfig: presets (data), overrides through the one config engine, problems collected with fixes."""

from __future__ import annotations

import dataclasses

import pytest

from common.errors import UserError
from training.config import load_config
from training.model.config import PRESETS, ModelConfig, build_model_config, model_config_from_preset


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
    problems: list[str] = []
    cfg2 = build_model_config({"preset": "small", "decoder": {"num_layers": 2}}, problems)
    assert cfg2.preset == "small" and cfg2.decoder.num_layers == 2 and problems == []
    assert (
        build_model_config(cfg2.to_dict(), problems) == cfg2 and problems == []
    )  # resolved config round-trips


def test_presets_are_data_built_by_the_engine():
    for name, data in PRESETS.items():
        assert isinstance(data, dict)  # a model: section, not constructor code
        problems: list[str] = []
        cfg = build_model_config({"preset": name}, problems)
        assert problems == [] and cfg == model_config_from_preset(name)
        assert cfg.decoder.num_layers == data["decoder"]["num_layers"]
        assert cfg.to_dict() == {**_nested_update(ModelConfig().to_dict(), data), "preset": name}
    # a preset plus the same values as a YAML section gives the same config
    as_yaml = {"preset": "custom", **PRESETS["debug"]}
    assert dataclasses.replace(build_model_config(as_yaml, []), preset="debug") == model_config_from_preset(
        "debug"
    )


def _nested_update(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _nested_update(base[k], v) if isinstance(v, dict) else v
    return out


def test_typos_and_bad_choices_get_the_engine_message_everywhere():
    did_you_mean = "unknown config key 'model.decoder.num_layer' (did you mean 'num_layers'?)"
    with pytest.raises(UserError) as e:
        load_config(None, ["model.decoder.num_layer=3"])
    assert did_you_mean in str(e.value)
    with pytest.raises(UserError) as e:
        model_config_from_preset("debug", **{"decoder.num_layer": 3})
    assert did_you_mean in str(e.value)
    # every problem at once, Literal choices named
    with pytest.raises(UserError) as e:
        load_config(None, ["model.decoder.num_layer=3", "model.connector.kind=foo", "model.max_seq_len=x"])
    msg = str(e.value)
    assert "3 problem(s)" in msg and did_you_mean in msg
    assert "model.connector.kind: 'foo' is not one of 'linear', 'resampler'" in msg
    assert "model.decoder.max_seq_len: expected int, got 'x'" in msg  # alias max_seq_len
    with pytest.raises(UserError, match="model.decoder.norm_scheme: 'post' is not one of 'pre', 'deepnorm'"):
        model_config_from_preset("debug", **{"decoder.norm_scheme": "post"})
    with pytest.raises(UserError, match="did you mean 'metalm-1.3b'"):
        load_config(None, ["model.preset=metalm-1.3B"])
    for alias, field in [("image_size", "vision_encoder"), ("patch_size", "vision_encoder")]:
        assert getattr(getattr(model_config_from_preset("debug", **{alias: 16}), field), alias) == 16
    assert model_config_from_preset("debug", span_max_len=33).text_encoder.max_len == 33


def test_problems_are_collected_with_fixes():
    cfg = model_config_from_preset(
        "debug",
        pad_vocab_to_multiple_of=5,
        **{
            "decoder.num_heads": 6,
            "decoder.hidden_size": 66,
            "text_encoder.ffn_hidden_size": 129,
            "vision_encoder.image_size": 30,
            "vision_encoder.weights_path": "/nonexistent/vit.safetensors",
        },
    )
    # bad Literal choices set in Python (not through the engine) are reported by problems() too
    cfg.activation_checkpointing = "some"
    cfg.decoder = dataclasses.replace(cfg.decoder, norm_scheme="post")
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
        "model.activation_checkpointing: 'some' is not one of 'none', 'full', 'selective'",
        "model.decoder.norm_scheme: 'post' is not one of 'pre', 'deepnorm'",
    ]:
        assert needle in text, f"missing problem {needle!r} in:\n{text}"
    with pytest.raises(UserError) as e:
        cfg.validate(tp=4, world_size=2)
    assert f"{len(problems)} problem(s)" in str(e.value)


def test_unknown_preset_name_in_config_is_a_problem():
    cfg = model_config_from_preset("debug")
    cfg.preset = "nope"
    assert any("model.preset='nope' is unknown" in p for p in cfg.problems(1))
