"""Parameter counts on the meta device (no weights allocated) and `python -m training.model`."""

from __future__ import annotations

import logging

import pytest

from common.exit_codes import USER_ERROR
from training.model import count_parameters, model_config_from_preset
from training.model.__main__ import main
from training.model.metalm import meta_model


def test_metalm_1_3b_decoder_is_1_3b_on_meta(caplog):
    with caplog.at_level(logging.INFO, logger="training.model.metalm"):
        counts = count_parameters(model_config_from_preset("metalm-1.3b"))
    assert counts["decoder"] == pytest.approx(1.3e9, rel=0.05)
    assert counts["text_encoder"] == pytest.approx(366e6, rel=0.05)  # paper: ~366M
    assert counts["vision_encoder"] == pytest.approx(303e6, rel=0.02)  # ViT-L/14 tower
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    logged = caplog.text
    assert "MetaLM metalm-1.3b parameters: decoder 1339.67M" in logged and "vision_encoder" in logged


def test_decoder_count_matches_the_formula():
    cfg = model_config_from_preset("debug")
    d, v = cfg.decoder, cfg.padded_vocab_size()
    h, f = d.hidden_size, d.ffn_hidden_size
    layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # attn (qkv+out, biases), mlp, 2 LNs
    assert count_parameters(cfg)["decoder"] == v * h + d.num_layers * layer + 2 * h  # + final LN


def test_cli_prints_counts(capsys):
    assert main(["debug", "decoder.num_layers=3"]) == 0
    out = capsys.readouterr().out
    for comp in ("decoder", "text_encoder", "vision_encoder", "connectors", "total"):
        assert comp in out
    assert main(["gpt5"]) == USER_ERROR
    assert "unknown model preset" in capsys.readouterr().err
    assert main(["debug", "decoder.num_heads=5"]) == USER_ERROR
    capsys.readouterr()
    # the config engine's messages, every problem at once
    assert main(["debug", "decoder.num_layer=3", "connector.kind=foo", "max_seq_len=x"]) == USER_ERROR
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "unknown config key 'model.decoder.num_layer' (did you mean 'num_layers'?)" in err
    assert "model.connector.kind: 'foo' is not one of 'linear', 'resampler'" in err
    assert "model.decoder.max_seq_len: expected int, got 'x'" in err
    assert main(["debug", "max_seq_len=96", "vision_encoder.activation=quick_gelu"]) == 0
    assert "seq 96" in capsys.readouterr().out


def test_rank_memory_estimate():
    from training.model.memory import rank_memory

    cfg = model_config_from_preset("metalm-1.3b")
    total = count_parameters(cfg)["total"]
    one = rank_memory(cfg, tp=1, dp=1, zero=0, precision="bf16")
    assert one.params == total
    layer = 4 * 1024 * 1024 + 4 * 1024 + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
    frozen_vit = 23 * layer  # 23 of 24 layers
    frozen_vit += 1024 * 3 * 14 * 14 + 1024 + 257 * 1024 + 2 * 1024  # patch embed, CLS, positions, ln_pre
    frozen_text = 22 * layer  # the paper: all but the last two layers
    frozen_text += 64000 * 1024 + 512 * 1024 + 1024 + 2 * 1024  # words, positions, token type, embedding LN
    assert one.trainable == total - frozen_vit - frozen_text
    gib = 1024**3
    assert one.weights_gib == pytest.approx(total * 2 / gib)
    assert one.optimizer_gib == pytest.approx(one.trainable * 12 / gib)
    tp2 = rank_memory(cfg, tp=2, dp=4, zero=1)
    assert (
        total / 2 < tp2.params < total * 0.51
    )  # only LayerNorms, biases of row-parallel layers, connectors repeat
    assert tp2.optimizer_gib == pytest.approx(tp2.trainable * 12 / 4 / gib)
    z3 = rank_memory(cfg, tp=1, dp=8, zero=3)
    assert z3.weights_gib == pytest.approx(total * 2 / 8 / gib)
    assert main(["metalm-1.3b", "--tp", "2", "--zero", "3"]) == USER_ERROR


def test_1_3b_report_counts_trainable_and_frozen_per_component(capsys):
    """The paper's freezing: language encoder trains its last two layers, the ViT its last one (+ final LN)."""
    cfg = model_config_from_preset("metalm-1.3b")
    assert cfg.decoder.norm_scheme == "deepnorm" and cfg.text_encoder.norm_scheme == "post"
    model = meta_model(cfg)
    every, trainable, frozen = (model.parameter_counts(t) for t in (None, True, False))
    assert all(every[k] == trainable[k] + frozen[k] for k in every)
    layer = 4 * 1024 * 1024 + 4 * 1024 + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
    assert trainable["text_encoder"] == 2 * layer  # post-LN: no final LN
    assert trainable["vision_encoder"] == layer + 2 * 1024  # + the final LN
    assert frozen["decoder"] == frozen["connectors"] == 0
    assert main(["metalm-1.3b"]) == 0
    out = capsys.readouterr().out
    assert "trainable" in out and "frozen" in out
    for comp in ("text_encoder", "vision_encoder", "total"):
        line = next(x for x in out.splitlines() if x.strip().startswith(comp))
        assert f"{trainable[comp]:,d}" in line and f"{frozen[comp]:,d}" in line, line
    whole = model_config_from_preset("metalm-1.3b", **{"freeze.decoder": True, "freeze.connectors": True})
    assert count_parameters(whole, trainable=True) == {  # single-task finetuning: the encoders' tops train
        "decoder": 0,
        "text_encoder": trainable["text_encoder"],
        "vision_encoder": trainable["vision_encoder"],
        "connectors": 0,
        "total": trainable["text_encoder"] + trainable["vision_encoder"],
    }
