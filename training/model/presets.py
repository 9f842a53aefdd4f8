"""The named model presets, as data: each is a `model:` section (nested ModelConfig fields) that the
config engine builds like any YAML file or override (`training.model.config.build_model_config`).
Fields a preset leaves out keep the ModelConfig defaults."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # seconds-long path for every feature: a step well under a second on one CPU core
    "debug": {
        "vocab_size": 512,
        "pad_vocab_to_multiple_of": 64,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "decoder": {
            "num_layers": 2,
            "hidden_size": 64,
            "num_heads": 4,
            "ffn_hidden_size": 256,
            "max_seq_len": 128,
        },
        "text_encoder": {
            "num_layers": 1,
            "hidden_size": 64,
            "num_heads": 4,
            "ffn_hidden_size": 128,
            "max_len": 64,
        },
        "vision_encoder": {
            "num_layers": 1,
            "hidden_size": 64,
            "num_heads": 4,
            "ffn_hidden_size": 128,
            "image_size": 32,
            "patch_size": 8,
        },
        "connector": {"kind": "linear", "num_latents": 8, "resampler_layers": 1, "resampler_heads": 4},
    },
    # CPU benchmarks
    "small": {
        "vocab_size": 8192,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "decoder": {
            "num_layers": 6,
            "hidden_size": 512,
            "num_heads": 8,
            "ffn_hidden_size": 2048,
            "max_seq_len": 512,
        },
        "text_encoder": {
            "num_layers": 2,
            "hidden_size": 256,
            "num_heads": 4,
            "ffn_hidden_size": 1024,
            "max_len": 129,
        },
        "vision_encoder": {
            "num_layers": 4,
            "hidden_size": 256,
            "num_heads": 4,
            "ffn_hidden_size": 1024,
            "image_size": 64,
            "patch_size": 8,
        },
        "connector": {"kind": "resampler", "num_latents": 32, "resampler_layers": 1, "resampler_heads": 4},
    },
    # paper decoder (DeepNorm) + language encoder shaped like ELECTRA-large (the paper docks a pretrained
    # replaced-token-detection encoder and trains its last two layers); CLIP ViT-L/14-shaped vision encoder
    # (Kosmos-1: its last layer trains). The frozen parts need weights: configs/metalm-1.3b.yaml docks them.
    "metalm-1.3b": {
        "vocab_size": 64000,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "decoder": {
            "num_layers": 24,
            "hidden_size": 2048,
            "num_heads": 32,
            "ffn_hidden_size": 8192,
            "max_seq_len": 2048,
            "norm_scheme": "deepnorm",
        },
        "text_encoder": {
            "num_layers": 24,
            "hidden_size": 1024,
            "num_heads": 16,
            "ffn_hidden_size": 4096,
            "max_len": 512,
            # the BERT / ELECTRA encoder style, so google/electra-large-discriminator docks as is
            "norm_scheme": "post",
            "embedding_norm": True,
            "token_type": True,
            "scale_embeddings": False,
            "layer_norm_eps": 1e-12,
            "trainable_layers": 2,
        },
        "vision_encoder": {
            "num_layers": 24,
            "hidden_size": 1024,
            "num_heads": 16,
            "ffn_hidden_size": 4096,
            "image_size": 224,
            "patch_size": 14,
            "activation": "quick_gelu",  # CLIP's, so CLIP ViT-L/14 weights can be loaded
            "trainable_layers": 1,
        },
        "connector": {"kind": "linear", "num_latents": 64, "resampler_layers": 1, "resampler_heads": 16},
    },
}
