"""MetaLM model configuration: nested typed dataclasses, built from data by the one config engine.

    cfg = model_config_from_preset("debug", vocab_size=700, **{"decoder.num_layers": 3})
    problems = cfg.problems(tp=2, world_size=4)      # [] when valid; each problem names its fix

Every way in (a preset name, a YAML `model:` section, `model.x=y` / `python -m training.model` overrides)
goes through `build_model_config`, i.e. `training.config.loader`: types and Literal choices are checked,
an unknown key is named with the closest known one, and every problem is reported at once. The presets
themselves are data (`training/model/presets.py`).

Docking (DESIGN.md 2): `text_encoder.weights_path` / `vision_encoder.weights_path` name local Hugging Face
BERT / RoBERTa / ELECTRA and CLIP checkpoints (training/model/text_weights.py, vision_weights.py); the encoders'
`trainable_layers` and the `freeze` section keep parts at those weights (requires_grad off, no optimizer
state, dropout off). The files are checked by `weights_problems` (with the training config's data checks);
a frozen component that would stay at its random init is a validation error (`frozen_random_problems`).
Each component section may set its own `dropout` / `attention_dropout` (null: the model-wide ones).

Image slots per image (`image_slots`, K): with the `linear` connector every ViT output token goes to
the decoder (CLS + patches, K = (image_size / patch_size)^2 + 1); with the `resampler` connector
K = connector.num_latents (Kosmos-1: 64).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from common.errors import UserError
from training.model.presets import PRESETS

NormScheme = Literal["pre", "deepnorm"]  # pre-LN (+ final LN) | DeepNorm (post-LN, residual alpha, init beta)
# the language encoder may also be `post`: plain post-LN without a final LN (BERT / RoBERTa / ELECTRA)
EncoderNormScheme = Literal["pre", "deepnorm", "post"]
Checkpointing = Literal["none", "full", "selective"]  # none | every layer | the attention core only
ConnectorKind = Literal["linear", "resampler"]  # MetaLM's linear projection | Kosmos-1's latent queries
Activation = Literal["gelu", "quick_gelu"]  # MLP activation (quick_gelu: CLIP's)

# Shorthands for the properties: top-level key -> dotted field
ALIASES = {
    "max_seq_len": "decoder.max_seq_len",
    "image_size": "vision_encoder.image_size",
    "span_max_len": "text_encoder.max_len",
    "patch_size": "vision_encoder.patch_size",
}


@dataclass
class DecoderConfig:
    """The causal Transformer decoder (the general-purpose interface)."""

    num_layers: int = 24  # Transformer layers
    hidden_size: int = 2048  # model width
    num_heads: int = 32  # attention heads (divisible by TP)
    ffn_hidden_size: int = 8192  # MLP inner width (divisible by TP)
    max_seq_len: int = 2048  # longest decoder sequence (sinusoidal positions are computed up to it)
    norm_scheme: NormScheme = "pre"  # "pre" (pre-LN + final LN) or "deepnorm" (post-LN, alpha, beta)
    dropout: float | None = None  # hidden + input-embedding dropout of the decoder; null = model.dropout
    attention_dropout: float | None = None  # attention-probability dropout; null = model.attention_dropout


@dataclass
class TextEncoderConfig:
    """The bidirectional language encoder for non-causal text spans; input is [<s>] + span."""

    num_layers: int = 24  # Transformer layers
    hidden_size: int = 1024  # width
    num_heads: int = 16  # attention heads (divisible by TP)
    ffn_hidden_size: int = 4096  # MLP inner width (divisible by TP)
    max_len: int = 512  # longest encoder input including <s> (learned positions)
    norm_scheme: EncoderNormScheme = "pre"  # "pre" (ours), "deepnorm", "post" (BERT-family post-LN)
    embedding_size: int = 0  # width of token/position embeddings; 0 = hidden_size, else projected (ELECTRA)
    embedding_norm: bool = False  # LayerNorm over the summed embeddings before dropout (BERT family)
    token_type: bool = False  # add the learned token-type-0 embedding at every position (BERT family)
    position_offset: int = 0  # position-table rows before position 0 (RoBERTa: padding_idx + 1 = 2)
    scale_embeddings: bool = True  # token embeddings x sqrt(hidden_size) (ours); false: BERT family
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm in the encoder (BERT / ELECTRA: 1e-12)
    trainable_layers: int = -1  # train only the last N layers (+ final LN); embeddings frozen; -1 = all train
    weights_path: str = ""  # local HF BERT/RoBERTa/ELECTRA folder or file, or our names; empty = random init
    vocab_map_from: str = ""  # tokenizer dir whose tokenizer.json maps project ids to the docked vocab rows
    dropout: float | None = None  # hidden + embedding dropout of this encoder; null = model.dropout
    attention_dropout: float | None = None  # attention-probability dropout; null = model.attention_dropout


@dataclass
class VisionEncoderConfig:
    """The ViT image encoder (patchify, CLS, learned positions, bidirectional layers)."""

    num_layers: int = 24  # Transformer layers
    hidden_size: int = 1024  # width
    num_heads: int = 16  # attention heads (divisible by TP)
    ffn_hidden_size: int = 4096  # MLP inner width (divisible by TP)
    image_size: int = 224  # input resolution (square, pixels)
    patch_size: int = 14  # patch side (pixels); image_size must be a multiple of it
    activation: Activation = "gelu"  # MLP activation: "gelu", or "quick_gelu" (CLIP's, to reuse CLIP weights)
    trainable_layers: int = -1  # train only the last N layers (+ final LN); embeddings frozen; -1 = all train
    weights_path: str = ""  # local ViT weights: a HF CLIP folder or file (safetensors/torch), or our names
    dropout: float | None = None  # hidden + embedding dropout of the ViT; null = model.dropout
    attention_dropout: float | None = None  # attention-probability dropout; null = model.attention_dropout


@dataclass
class ConnectorConfig:
    """How encoder outputs become decoder input embeddings."""

    kind: ConnectorKind = "linear"  # image connector: "linear" (MetaLM) or "resampler" (Kosmos-1)
    num_latents: int = 64  # resampler: learned latent queries = decoder slots per image
    resampler_layers: int = 1  # resampler: cross-attention + MLP blocks
    resampler_heads: int = 8  # resampler: attention heads (divisible by TP)
    dropout: float | None = None  # resampler hidden dropout; null = model.dropout
    attention_dropout: float | None = None  # resampler attention dropout; null = model.attention_dropout


@dataclass
class FreezeConfig:
    """Components kept at their loaded weights (requires_grad off, not in the optimizer, dropout off).
    The encoders' `trainable_layers` freeze all but their last layers; these switch whole components."""

    decoder: bool = False  # the whole decoder: token embedding (= tied output layer), layers, final LN
    embeddings: bool = False  # every embedding stage: decoder tokens, text word/pos/type, ViT patch/CLS/pos
    connectors: bool = False  # the text and image connectors (linear / resampler)
    allow_random: bool = False  # allow a frozen component without loaded weights (tests): it stays random


@dataclass
class ModelConfig:
    """The whole MetaLM: decoder, language encoder, vision encoder, connectors, regularization."""

    preset: str = "custom"  # preset these settings came from (for logs and the resolved config)
    vocab_size: int = 64000  # tokenizer vocabulary (training sets it from the tokenizer)
    pad_vocab_to_multiple_of: int = 128  # embeddings are padded to a multiple of this (padded logits masked)
    dropout: float = 0.1  # hidden and embedding dropout (every component's default: see their `dropout`)
    attention_dropout: float = 0.1  # dropout on attention probabilities (per-TP-rank RNG stream)
    activation_checkpointing: Checkpointing = "none"  # "none" | "full" (each layer) | "selective" (attn core)
    init_std: float = 0.02  # std of normal weight init (embeddings use hidden_size ** -0.5)
    init_seed: int = 1234  # weight init seed; init is identical for every TP size
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # causal decoder
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # language encoder
    vision_encoder: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)  # ViT
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)  # encoder -> decoder connectors
    freeze: FreezeConfig = field(default_factory=FreezeConfig)  # frozen components (finetuning, docking)

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
    def problems(self, tp: int = 1, world_size: int | None = None, check_files: bool = True) -> list[str]:
        """Every problem with this config for the given TP size (and world size), each naming its fix.

        Types and Literal choices are checked by the config engine when a config is built from data; they
        are re-checked here (same engine, same messages) for a config assembled in Python. check_files:
        also check the docked weights and vocabulary map on disk (`weights_problems`); the training
        config does this with its data checks, so a shipped config validates on a machine without them."""
        from training.config import loader  # lazy: the training.config package imports this module

        out: list[str] = []
        loader.build(type(self), loader.to_dict(self), "model", out)
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
        for comp in ("decoder", "text_encoder", "vision_encoder", "connector"):
            for name in ("dropout", "attention_dropout"):
                v = getattr(getattr(self, comp), name)
                if v is not None and not 0.0 <= v < 1.0:
                    out.append(f"model.{comp}.{name}={v} must be in [0, 1) (or null: model.{name})")
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
        te = self.text_encoder
        if te.max_len < 2:
            out.append(f"model.text_encoder.max_len={te.max_len} must be >= 2 (<s> + one token)")
        if te.embedding_size < 0:
            out.append(
                f"model.text_encoder.embedding_size={te.embedding_size} must be >= 0 (0 = hidden_size)"
            )
        if te.position_offset < 0:
            out.append(f"model.text_encoder.position_offset={te.position_offset} must be >= 0")
        if te.layer_norm_eps <= 0:
            out.append(f"model.text_encoder.layer_norm_eps={te.layer_norm_eps} must be > 0")
        v = self.vision_encoder
        for name, s in (("text_encoder", te), ("vision_encoder", v)):
            if s.trainable_layers < -1 or s.trainable_layers > s.num_layers:
                out.append(
                    f"model.{name}.trainable_layers={s.trainable_layers} must be -1 (all) or 0..{s.num_layers}"
                )
        if v.patch_size < 1 or v.image_size < 1 or v.image_size % max(1, v.patch_size) != 0:
            out.append(
                f"model.vision_encoder.image_size={v.image_size} is not divisible by "
                f"model.vision_encoder.patch_size={v.patch_size}: use an image size that is a multiple "
                f"of the patch size (e.g. {max(1, v.patch_size) * max(1, v.image_size // max(1, v.patch_size))})"
            )
        if check_files:
            out += self.weights_problems()
        c = self.connector
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

    def weights_problems(self) -> list[str]:
        """The docked weights and the vocabulary map on disk: they exist, can be read, and their config.json
        (when there is one) matches this config (each mismatch names the key to set). Reads no tensors."""
        from training.model.text_weights import text_weights_problems  # lazy: torch-free config import
        from training.model.vision_weights import vision_weights_problems

        return vision_weights_problems(self) + text_weights_problems(self)

    def without_weight_files(self) -> ModelConfig:
        """This config with the docked-weight files dropped (weights_path, vocab_map_from): for a model whose
        every weight is loaded next (export, evaluating an export), so building it reads no pretrained files."""
        te = dataclasses.replace(self.text_encoder, weights_path="", vocab_map_from="")
        ve = dataclasses.replace(self.vision_encoder, weights_path="")
        freeze = dataclasses.replace(self.freeze, allow_random=True)  # the frozen weights come with the rest
        return dataclasses.replace(self, text_encoder=te, vision_encoder=ve, freeze=freeze)

    def frozen_components(self) -> dict[str, str]:
        """Component -> the setting that freezes (some of) it, for every component with frozen parameters."""
        f, te, ve = self.freeze, self.text_encoder, self.vision_encoder
        out = {}
        if f.decoder or f.embeddings:
            out["decoder"] = "model.freeze.decoder=true" if f.decoder else "model.freeze.embeddings=true"
        for name, s in (("text_encoder", te), ("vision_encoder", ve)):
            if s.trainable_layers >= 0:
                out[name] = f"model.{name}.trainable_layers={s.trainable_layers}"
            elif f.embeddings:
                out[name] = "model.freeze.embeddings=true"
        if f.connectors:
            out["connectors"] = "model.freeze.connectors=true"
        return out

    def frozen_random_problems(self, load_weights_from: str = "") -> list[str]:
        """A frozen component must start from loaded weights (an encoder's `weights_path`, or an exported
        model: checkpoint.load_weights_from), unless `model.freeze.allow_random` opts out (tests)."""
        if self.freeze.allow_random or load_weights_from:
            return []
        loaded = {
            "text_encoder": bool(self.text_encoder.weights_path),
            "vision_encoder": bool(self.vision_encoder.weights_path),
        }
        fix = {
            "text_encoder": "model.text_encoder.weights_path=DIR (a Hugging Face BERT/RoBERTa/ELECTRA folder) or ",
            "vision_encoder": "model.vision_encoder.weights_path=DIR (a Hugging Face CLIP folder) or ",
        }
        out = []
        for comp, why in self.frozen_components().items():
            if not loaded.get(comp, False):
                out.append(
                    f"{why} freezes the {comp} but it would stay at its random init: set "
                    f"{fix.get(comp, '')}checkpoint.load_weights_from=FILE.safetensors (an exported model); "
                    "model.freeze.allow_random=true keeps frozen random weights (tests only)"
                )
        return out

    def validate(self, tp: int = 1, world_size: int | None = None) -> None:
        """Raise one UserError listing every problem."""
        problems = self.problems(tp, world_size)
        if problems:
            raise UserError(problems)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# building from data (presets, YAML sections, overrides): the training config's engine


def build_model_config(
    raw: Mapping[str, Any] | None, problems: list[str], path: str = "model"
) -> ModelConfig:
    """A `model:` section -> ModelConfig, every problem appended to `problems` (nothing raised).

    `raw` holds `preset` (a name from PRESETS; left out or "custom": the dataclass defaults) and overrides
    of any field: nested sections, dotted keys ("decoder.num_layers") or ALIASES ("max_seq_len"). The
    preset's data and the overrides are merged and built by `training.config.loader.build`.
    """
    from training.config import loader  # lazy: the training.config package imports this module

    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(
            f"config section {path!r} must be a mapping (preset: NAME plus overrides), got {raw!r}"
        )
        raw = {}
    tree: dict[str, Any] = {}
    for key, value in raw.items():
        one: dict[str, Any] = {}
        loader.set_dotted(one, ALIASES.get(str(key), str(key)).split("."), value)
        tree = loader.deep_merge(tree, one)
    preset = str(tree.pop("preset", "custom"))
    base: dict[str, Any] = {}
    if preset in PRESETS:
        base = PRESETS[preset]
    elif preset != "custom":
        close = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(
            f"unknown model preset {preset!r} ({path}.preset{hint}): use one of {', '.join(PRESETS)} "
            "(or custom: the ModelConfig defaults)"
        )
    return loader.build(ModelConfig, loader.deep_merge(base, {"preset": preset, **tree}), path, problems)


def model_config_from_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with overrides (e.g. vocab_size=700, **{"decoder.num_layers": 4}); one UserError
    listing every problem."""
    problems: list[str] = []
    cfg = build_model_config({"preset": name, **overrides}, problems)
    if problems:
        raise UserError(problems)
    return cfg
