"""MetaLM model configuration: nested typed dataclasses and the named presets.

    cfg = model_config_from_preset("debug", vocab_size=700, **{"decoder.num_layers": 3})
    problems = cfg.problems(tp=2, world_size=4)      # [] when valid; each problem names its fix

Image slots per image (`image_slots`, K): with the `linear` connector every ViT output token goes to
the decoder (CLS + patches, K = (image_size / patch_size)^2 + 1); with the `resampler` connector
K = connector.num_latents (Kosmos-1: 64).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError

NORM_SCHEMES = ("pre", "deepnorm")
CHECKPOINTING = ("none", "full", "selective")
CONNECTORS = ("linear", "resampler")


@dataclass
class DecoderConfig:
    """The causal Transformer decoder (the general-purpose interface)."""

    num_layers: int = 24  # Transformer layers
    hidden_size: int = 2048  # model width
    num_heads: int = 32  # attention heads (divisible by TP)
    ffn_hidden_size: int = 8192  # MLP inner width (divisible by TP)
    max_seq_len: int = 2048  # longest decoder sequence (sinusoidal positions are computed up to it)
    norm_scheme: str = "pre"  # "pre" (pre-LN, final LN) or "deepnorm" (post-LN, residual alpha, init beta)


@dataclass
class TextEncoderConfig:
    """The bidirectional language encoder for non-causal text spans; input is [<s>] + span."""

    num_layers: int = 24  # Transformer layers
    hidden_size: int = 1024  # width
    num_heads: int = 16  # attention heads (divisible by TP)
    ffn_hidden_size: int = 4096  # MLP inner width (divisible by TP)
    max_len: int = 512  # longest encoder input including <s> (learned positions)
    norm_scheme: str = "pre"  # "pre" or "deepnorm"


@dataclass
class VisionEncoderConfig:
    """The ViT image encoder (patchify, CLS, learned positions, bidirectional layers)."""

    num_layers: int = 24  # Transformer layers
    hidden_size: int = 1024  # width
    num_heads: int = 16  # attention heads (divisible by TP)
    ffn_hidden_size: int = 4096  # MLP inner width (divisible by TP)
    image_size: int = 224  # input resolution (square, pixels)
    patch_size: int = 14  # patch side (pixels); image_size must be a multiple of it
    activation: str = "gelu"  # MLP activation: "gelu", or "quick_gelu" (CLIP's, to reuse CLIP weights)
    trainable_layers: int = -1  # train only the last N layers (+ final LN); -1 = everything trains
    weights_path: str = (
        ""  # optional local ViT weights (safetensors/torch): our names or HF CLIP vision names
    )


@dataclass
class ConnectorConfig:
    """How encoder outputs become decoder input embeddings."""

    kind: str = "linear"  # image connector: "linear" (MetaLM) or "resampler" (Kosmos-1 latent queries)
    num_latents: int = 64  # resampler: learned latent queries = decoder slots per image
    resampler_layers: int = 1  # resampler: cross-attention + MLP blocks
    resampler_heads: int = 8  # resampler: attention heads (divisible by TP)


@dataclass
class ModelConfig:
    """The whole MetaLM: decoder, language encoder, vision encoder, connectors, regularization."""

    preset: str = "custom"  # preset these settings came from (for logs and the resolved config)
    vocab_size: int = 64000  # tokenizer vocabulary (training sets it from the tokenizer)
    pad_vocab_to_multiple_of: int = 128  # embeddings are padded to a multiple of this (padded logits masked)
    dropout: float = 0.1  # hidden and embedding dropout
    attention_dropout: float = 0.1  # dropout on attention probabilities (per-TP-rank RNG stream)
    activation_checkpointing: str = "none"  # "none" | "full" (every layer) | "selective" (attention core)
    init_std: float = 0.02  # std of normal weight init (embeddings use hidden_size ** -0.5)
    init_seed: int = 1234  # weight init seed; init is identical for every TP size
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # causal decoder
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # language encoder
    vision_encoder: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)  # ViT
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)  # encoder -> decoder connectors

    # --- properties the data pipeline and trainer read -------------------------------------------
    @property
    def max_seq_len(self) -> int:
        """Decoder sequence length limit."""
        return self.decoder.max_seq_len

    @property
    def image_size(self) -> int:
        """Image side in pixels the vision encoder expects."""
        return self.vision_encoder.image_size

    @property
    def num_patches(self) -> int:
        return (self.vision_encoder.image_size // self.vision_encoder.patch_size) ** 2

    @property
    def image_slots(self) -> int:
        """K: decoder positions per image (linear: CLS + patches; resampler: num_latents)."""
        if self.connector.kind == "resampler":
            return self.connector.num_latents
        return self.num_patches + 1

    @property
    def span_max_len(self) -> int:
        """Language encoder max input length including the leading <s> (span tokens <= this - 1)."""
        return self.text_encoder.max_len

    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_to_multiple_of)
        return -(-self.vocab_size // m) * m

    # --- validation ----------------------------------------------------------------------------------
    def problems(self, tp: int = 1, world_size: int | None = None) -> list[str]:
        """Every problem with this config for the given TP size (and world size), each naming its fix."""
        out: list[str] = []
        if tp < 1:
            out.append(f"tensor-parallel size {tp} must be >= 1")
            tp = 1
        if world_size is not None and tp > world_size:
            out.append(
                f"parallel.tp={tp} is larger than the world size {world_size}: "
                "launch more processes or lower parallel.tp"
            )
        if self.preset not in PRESETS and self.preset != "custom":
            out.append(f"model.preset={self.preset!r} is unknown: use one of {', '.join(PRESETS)}")
        if self.vocab_size < 8:
            out.append(f"model.vocab_size={self.vocab_size} is too small (the 7 special tokens need ids 0-6)")
        if self.pad_vocab_to_multiple_of < 1:
            out.append("model.pad_vocab_to_multiple_of must be >= 1 (e.g. 128)")
        elif self.padded_vocab_size() % tp != 0:
            out.append(
                f"padded vocab {self.padded_vocab_size()} (model.vocab_size={self.vocab_size} padded to a "
                f"multiple of model.pad_vocab_to_multiple_of={self.pad_vocab_to_multiple_of}) is not "
                f"divisible by tp={tp}: set model.pad_vocab_to_multiple_of to a multiple of {tp}"
            )
        for name in ("dropout", "attention_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                out.append(f"model.{name}={v} must be in [0, 1)")
        if self.activation_checkpointing not in CHECKPOINTING:
            out.append(
                f"model.activation_checkpointing={self.activation_checkpointing!r} is unknown: "
                f"use one of {', '.join(CHECKPOINTING)}"
            )
        stacks = (
            ("decoder", self.decoder),
            ("text_encoder", self.text_encoder),
            ("vision_encoder", self.vision_encoder),
        )
        for name, s in stacks:
            for f in ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size"):
                if getattr(s, f) < 1:
                    out.append(f"model.{name}.{f}={getattr(s, f)} must be >= 1")
            if s.num_heads >= 1 and s.hidden_size % s.num_heads != 0:
                out.append(
                    f"model.{name}.hidden_size={s.hidden_size} is not divisible by "
                    f"model.{name}.num_heads={s.num_heads}: pick heads that divide the width"
                )
            if s.num_heads >= 1 and s.num_heads % tp != 0:
                out.append(
                    f"model.{name}.num_heads={s.num_heads} is not divisible by tp={tp}: "
                    f"use a head count that is a multiple of {tp} or lower parallel.tp"
                )
            if s.ffn_hidden_size >= 1 and s.ffn_hidden_size % tp != 0:
                out.append(
                    f"model.{name}.ffn_hidden_size={s.ffn_hidden_size} is not divisible by tp={tp}: "
                    f"use a multiple of {tp} or lower parallel.tp"
                )
            norm = getattr(s, "norm_scheme", "pre")
            if norm not in NORM_SCHEMES:
                out.append(
                    f"model.{name}.norm_scheme={norm!r} is unknown: use one of {', '.join(NORM_SCHEMES)}"
                )
        if self.text_encoder.max_len < 2:
            out.append(
                f"model.text_encoder.max_len={self.text_encoder.max_len} must be >= 2 (<s> + one token)"
            )
        v = self.vision_encoder
        if v.patch_size < 1 or v.image_size < 1 or v.image_size % max(1, v.patch_size) != 0:
            out.append(
                f"model.vision_encoder.image_size={v.image_size} is not divisible by "
                f"model.vision_encoder.patch_size={v.patch_size}: use an image size that is a multiple "
                f"of the patch size (e.g. {max(1, v.patch_size) * max(1, v.image_size // max(1, v.patch_size))})"
            )
        if v.activation not in ("gelu", "quick_gelu"):
            out.append(f"model.vision_encoder.activation={v.activation!r} is unknown: use gelu or quick_gelu")
        if v.trainable_layers < -1 or v.trainable_layers > v.num_layers:
            out.append(
                f"model.vision_encoder.trainable_layers={v.trainable_layers} must be -1 (all) or 0.."
                f"{v.num_layers}"
            )
        if v.weights_path and not os.path.isfile(v.weights_path):
            out.append(
                f"model.vision_encoder.weights_path={v.weights_path!r} does not exist: "
                "give a local safetensors/torch file or leave it empty for random init"
            )
        c = self.connector
        if c.kind not in CONNECTORS:
            out.append(f"model.connector.kind={c.kind!r} is unknown: use one of {', '.join(CONNECTORS)}")
        if c.kind == "resampler":
            if c.num_latents < 1 or c.resampler_layers < 1 or c.resampler_heads < 1:
                out.append("model.connector.num_latents, resampler_layers and resampler_heads must be >= 1")
            else:
                if v.hidden_size % c.resampler_heads != 0:
                    out.append(
                        f"model.vision_encoder.hidden_size={v.hidden_size} is not divisible by "
                        f"model.connector.resampler_heads={c.resampler_heads}"
                    )
                if c.resampler_heads % tp != 0:
                    out.append(
                        f"model.connector.resampler_heads={c.resampler_heads} is not divisible by tp={tp}: "
                        f"use a multiple of {tp}"
                    )
        # one image-text example: <s> <image> [K] </image> + at least one caption token + </s>
        min_len = self.image_slots + 4
        if (
            v.patch_size >= 1
            and v.image_size % max(1, v.patch_size) == 0
            and self.decoder.max_seq_len < min_len
        ):
            out.append(
                f"model.decoder.max_seq_len={self.decoder.max_seq_len} cannot hold one image "
                f"(<s> <image> + {self.image_slots} slots + </image> + caption): use >= {min_len + 16}"
            )
        return out

    def validate(self, tp: int = 1, world_size: int | None = None) -> None:
        """Raise one UserError listing every problem."""
        problems = self.problems(tp, world_size)
        if problems:
            raise UserError(problems)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a (YAML) dict: optional `preset` first, then every other key as an override."""
        d = dict(d)
        preset = d.pop("preset", None)
        if preset in (None, "custom"):
            base = ModelConfig()
        else:
            base = model_config_from_preset(preset)
        return apply_overrides(base, d)


# ---------------------------------------------------------------------------------------------------
# presets


def _debug() -> ModelConfig:
    return ModelConfig(
        preset="debug",
        vocab_size=512,
        pad_vocab_to_multiple_of=64,
        dropout=0.0,
        attention_dropout=0.0,
        decoder=DecoderConfig(
            num_layers=2, hidden_size=64, num_heads=4, ffn_hidden_size=256, max_seq_len=128
        ),
        text_encoder=TextEncoderConfig(
            num_layers=1, hidden_size=64, num_heads=4, ffn_hidden_size=128, max_len=64
        ),
        vision_encoder=VisionEncoderConfig(
            num_layers=1, hidden_size=64, num_heads=4, ffn_hidden_size=128, image_size=32, patch_size=8
        ),
        connector=ConnectorConfig(kind="linear", num_latents=8, resampler_layers=1, resampler_heads=4),
    )


def _small() -> ModelConfig:
    return ModelConfig(
        preset="small",
        vocab_size=8192,
        dropout=0.1,
        attention_dropout=0.1,
        decoder=DecoderConfig(
            num_layers=6, hidden_size=512, num_heads=8, ffn_hidden_size=2048, max_seq_len=512
        ),
        text_encoder=TextEncoderConfig(
            num_layers=2, hidden_size=256, num_heads=4, ffn_hidden_size=1024, max_len=129
        ),
        vision_encoder=VisionEncoderConfig(
            num_layers=4, hidden_size=256, num_heads=4, ffn_hidden_size=1024, image_size=64, patch_size=8
        ),
        connector=ConnectorConfig(kind="resampler", num_latents=32, resampler_layers=1, resampler_heads=4),
    )


def _metalm_1_3b() -> ModelConfig:
    # Paper decoder + language encoder; CLIP ViT-L/14-shaped vision encoder (Kosmos-1: last layer trains)
    return ModelConfig(
        preset="metalm-1.3b",
        vocab_size=64000,
        dropout=0.1,
        attention_dropout=0.1,
        decoder=DecoderConfig(
            num_layers=24, hidden_size=2048, num_heads=32, ffn_hidden_size=8192, max_seq_len=2048
        ),
        text_encoder=TextEncoderConfig(
            num_layers=24, hidden_size=1024, num_heads=16, ffn_hidden_size=4096, max_len=512
        ),
        vision_encoder=VisionEncoderConfig(
            num_layers=24,
            hidden_size=1024,
            num_heads=16,
            ffn_hidden_size=4096,
            image_size=224,
            patch_size=14,
            activation="quick_gelu",  # CLIP's, so CLIP ViT-L/14 weights can be loaded
            trainable_layers=1,
        ),
        connector=ConnectorConfig(kind="linear", num_latents=64, resampler_layers=1, resampler_heads=16),
    )


PRESETS = {"debug": _debug, "small": _small, "metalm-1.3b": _metalm_1_3b}

# Shorthands for the properties: override key -> dotted field
ALIASES = {
    "max_seq_len": "decoder.max_seq_len",
    "image_size": "vision_encoder.image_size",
    "span_max_len": "text_encoder.max_len",
    "patch_size": "vision_encoder.patch_size",
}


def _set_dotted(obj: Any, key: str, value: Any, path: str) -> None:
    head, _, rest = key.partition(".")
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        known = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else ""
        raise UserError(f"unknown model setting {path!r}: known keys here are {known}")
    current = getattr(obj, head)
    if rest:
        _set_dotted(current, rest, value, path)
    elif dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise UserError(f"model setting {path!r} is a section: give a mapping of its keys")
        for k, v in value.items():
            _set_dotted(current, k, v, f"{path}.{k}")
    else:
        if (
            current is not None
            and not isinstance(value, type(current))
            and not (isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool))
        ):
            raise UserError(
                f"model setting {path}={value!r} has type {type(value).__name__}, "
                f"expected {type(current).__name__}"
            )
        if isinstance(current, float):
            value = float(value)
        setattr(obj, head, value)


def apply_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """A copy of cfg with overrides applied (keys: field names, dotted paths, sections as dicts, ALIASES)."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        _set_dotted(cfg, ALIASES.get(key, key), value, key)
    return cfg


def model_config_from_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with overrides (e.g. vocab_size=700, **{"decoder.num_layers": 4})."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}: use one of {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[name](), overrides)
