"""Parameter counts on the meta device (no weights allocated) and `python -m training.model`."""

from __future__ import annotations

import logging

import pytest

from common.exit_codes import USER_ERROR
from training.model import count_parameters, model_config_from_preset
from training.model.__main__ import main


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
