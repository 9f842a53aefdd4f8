"""LayerSpec: one settings object per component instead of an argument bundle (meta device: no weights)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from parallel.groups import Topology
from training.model import MetaLM, model_config_from_preset
from training.model.encoders import LanguageEncoder
from training.model.layers import TransformerStack
from training.model.spec import LayerSpec, component_specs


def test_specs_come_from_the_config_and_topology():
    cfg = model_config_from_preset(
        "debug", dropout=0.1, attention_dropout=0.2, init_std=0.03, activation_checkpointing="selective"
    )
    specs = component_specs(cfg, Topology.single_process("meta"), torch.bfloat16)
    assert set(specs) == {"decoder", "text_encoder", "vision_encoder", "connectors"}
    dec = specs["decoder"]
    assert (dec.hidden_dropout, dec.attention_dropout, dec.init_std, dec.tp_size) == (0.1, 0.2, 0.03, 1)
    assert dec.mp.params_dtype == torch.bfloat16 and dec.mp.tensor_model_parallel_size == 1
    assert dec.selective_checkpoint and not dec.full_checkpoint
    assert specs["connectors"].checkpointing == "none"  # only the Transformer stacks are checkpointed
    with pytest.raises(dataclasses.FrozenInstanceError):
        dec.hidden_dropout = 0.5


def test_per_component_dropout_is_a_spec_field():
    """Decoder dropout 0, encoder 0.1 (the paper's docking setting) needs only another spec."""
    cfg = model_config_from_preset("debug", dropout=0.0, attention_dropout=0.0)
    specs = component_specs(cfg, Topology.single_process("meta"))
    enc_spec = dataclasses.replace(specs["text_encoder"], hidden_dropout=0.1, attention_dropout=0.1)
    with torch.device("meta"):
        encoder = LanguageEncoder(cfg.text_encoder, cfg.padded_vocab_size(), enc_spec)
        decoder = TransformerStack(
            num_layers=2, hidden=64, heads=4, ffn=128, spec=specs["decoder"], causal=True
        )
    assert encoder.dropout == 0.1
    assert all((layer.dropout, layer.attn.attention_dropout) == (0.1, 0.1) for layer in encoder.stack.layers)
    assert all((layer.dropout, layer.attn.attention_dropout) == (0.0, 0.0) for layer in decoder.layers)


def test_model_builds_every_component_from_its_spec():
    cfg = model_config_from_preset(
        "debug", dropout=0.1, **{"connector.kind": "resampler", "decoder.norm_scheme": "deepnorm"}
    )
    with torch.device("meta"):
        model = MetaLM(cfg, Topology.single_process("meta"))
    assert all(isinstance(s, LayerSpec) for s in model.specs.values())
    assert model.embed_dropout == 0.1
    assert model.image_connector.blocks[0].dropout == 0.1
    assert model.decoder.layers[0].norm_scheme == "deepnorm" and model.decoder.final_ln is None
    # parameter names are unchanged (exported checkpoints, tp_shards and vision_weights rely on them)
    names = {n for n, _ in model.named_parameters()}
    for n in (
        "embedding.weight",
        "decoder.layers.0.attn.qkv.weight",
        "decoder.layers.1.mlp.fc2.bias",
        "text_encoder.stack.final_ln.weight",
        "vision_encoder.stack.layers.0.attn.out.weight",
        "image_connector.blocks.0.attn.kv.weight",
        "image_connector.latents",
        "text_connector.proj.weight",
    ):
        assert n in names, n
