"""Non-causal encoders: the language encoder (text spans) and the ViT (images)."""

from __future__ import annotations

import logging
import math

import torch
from megatron.core.tensor_parallel import VocabParallelEmbedding
from torch import nn

from common.special_tokens import PAD_ID
from training.model.config import TextEncoderConfig, VisionEncoderConfig
from training.model.layers import (
    TransformerStack,
    layer_norm,
    mark_init,
    mark_tp,
    normal_init,
    replicated_linear,
)
from training.model.spec import LayerSpec

log = logging.getLogger(__name__)


def vocab_embedding(
    vocab: int, hidden: int, spec: LayerSpec, std: float | None = None
) -> VocabParallelEmbedding:
    """Vocab-parallel token embedding (rows split across TP ranks), init N(0, std^2) (default 1/hidden)."""
    emb = VocabParallelEmbedding(
        vocab, hidden, init_method=lambda t: None, config=spec.mp, tp_group=spec.tp_group
    )
    mark_tp(emb.weight, 0)
    mark_init(emb.weight, normal_init(hidden**-0.5 if std is None else std))
    return emb


def freeze_all_but_last(encoder: nn.Module, n: int) -> None:
    """Freeze every parameter of `encoder` but those of its last `n` stack layers and the stack's final LN
    (n = -1: nothing is frozen; n = 0: everything is, embeddings included)."""
    if n < 0:
        return
    for p in encoder.parameters():
        p.requires_grad_(False)
    layers = list(encoder.stack.layers)
    for layer in layers[len(layers) - n :] if n > 0 else []:
        for p in layer.parameters():
            p.requires_grad_(True)
    if n > 0 and encoder.stack.final_ln is not None:
        for p in encoder.stack.final_ln.parameters():
            p.requires_grad_(True)


class LanguageEncoder(nn.Module):
    """Bidirectional Transformer over `[<s>] + span` (learned positions); returns the span outputs.

    Our own encoder (`norm_scheme: pre`): token embeddings x sqrt(hidden) + positions, dropout, pre-LN layers,
    final LN. A docked BERT / RoBERTa / ELECTRA (training/model/text_weights.py) is `norm_scheme: post` with
    `embedding_norm`, `token_type`, `scale_embeddings: false`, its `layer_norm_eps`, RoBERTa's
    `position_offset` and ELECTRA's `embedding_size` (embeddings narrower than the layers, then a linear)."""

    def __init__(self, cfg: TextEncoderConfig, padded_vocab: int, spec: LayerSpec):
        super().__init__()
        self.max_len = cfg.max_len
        self.position_offset = cfg.position_offset
        self.dropout = spec.hidden_dropout
        emb = cfg.embedding_size or cfg.hidden_size
        self.embed_scale = math.sqrt(cfg.hidden_size) if cfg.scale_embeddings else 1.0
        self.embedding = vocab_embedding(
            padded_vocab, emb, spec, std=None if cfg.scale_embeddings else spec.init_std
        )
        self.positions = nn.Parameter(torch.empty(cfg.position_offset + cfg.max_len, emb))
        mark_init(self.positions, normal_init(spec.init_std))
        self.token_type = nn.Parameter(torch.empty(emb)) if cfg.token_type else None
        mark_init(self.token_type, normal_init(spec.init_std))
        self.embed_ln = layer_norm(emb) if cfg.embedding_norm else None
        self.embed_dropout = nn.Dropout(spec.hidden_dropout)
        self.embed_proj = (
            replicated_linear(emb, cfg.hidden_size, spec.init_std) if emb != cfg.hidden_size else None
        )
        self.stack = TransformerStack(
            num_layers=cfg.num_layers,
            hidden=cfg.hidden_size,
            heads=cfg.num_heads,
            ffn=cfg.ffn_hidden_size,
            spec=spec,
            causal=False,
            norm_scheme=cfg.norm_scheme,
        )
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = cfg.layer_norm_eps
        freeze_all_but_last(self, cfg.trainable_layers)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding stage: word, position and token-type embeddings, their LayerNorm and projection."""
        mods = [m for m in (self.embedding, self.embed_ln, self.embed_proj) if m is not None]
        own = [p for p in (self.positions, self.token_type) if p is not None]
        return own + [p for m in mods for p in m.parameters()]

    def forward(self, span_tokens: torch.Tensor) -> torch.Tensor:
        """span_tokens [S, L] (<s> + span, <pad>-padded) -> [S, L-1, H] outputs at the span tokens."""
        s, length = span_tokens.shape
        if length > self.max_len:
            raise ValueError(
                f"text span input of length {length} exceeds the language encoder's max_len "
                f"{self.max_len} (model.text_encoder.max_len): shorten the spans"
            )
        x = self.embedding(span_tokens)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = x + self.positions[self.position_offset : self.position_offset + length]
        if self.token_type is not None:
            x = x + self.token_type
        if self.embed_ln is not None:
            x = self.embed_ln(x)
        x = self.embed_dropout(x)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        key_mask = span_tokens != PAD_ID
        x = self.stack(x, key_mask)
        return x[:, 1:]


class VisionEncoder(nn.Module):
    """ViT: patchify (linear on c*p*p pixels, = a stride-p conv), CLS, learned positions, LN, layers, LN."""

    def __init__(self, cfg: VisionEncoderConfig, spec: LayerSpec):
        super().__init__()
        self.image_size = cfg.image_size
        self.patch = cfg.patch_size
        self.grid = cfg.image_size // cfg.patch_size
        h, std = cfg.hidden_size, spec.init_std
        self.dropout = spec.hidden_dropout
        self.embed_dropout = nn.Dropout(spec.hidden_dropout)
        self.patch_embed = replicated_linear(3 * cfg.patch_size**2, h, std, bias=False)
        self.cls = nn.Parameter(torch.empty(h))
        self.positions = nn.Parameter(torch.empty(self.grid**2 + 1, h))
        mark_init(self.cls, normal_init(std))
        mark_init(self.positions, normal_init(std))
        self.ln_pre = layer_norm(h)
        self.stack = TransformerStack(
            num_layers=cfg.num_layers,
            hidden=h,
            heads=cfg.num_heads,
            ffn=cfg.ffn_hidden_size,
            spec=spec,
            causal=False,
            norm_scheme="pre",
            activation=cfg.activation,
        )
        self.trainable_layers = cfg.trainable_layers
        self.apply_freeze()

    def apply_freeze(self) -> None:
        """Freeze everything but the last `trainable_layers` layers and the final LN (-1: all train)."""
        freeze_all_but_last(self, self.trainable_layers)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding stage: patch embedding, CLS, positions, pre-LN."""
        return [self.patch_embed.weight, self.cls, self.positions, *self.ln_pre.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] (normalized) -> [N, 1 + patches, H] (CLS first)."""
        n, c, hh, ww = images.shape
        if c != 3 or hh != self.image_size or ww != self.image_size:
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} given; the vision encoder expects "
                f"(3, {self.image_size}, {self.image_size}) (model.vision_encoder.image_size)"
            )
        g, p = self.grid, self.patch
        patches = images.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        x = torch.cat([self.cls.expand(n, 1, -1).to(x.dtype), x], dim=1) + self.positions
        x = self.ln_pre(x)
        x = self.embed_dropout(x)
        return self.stack(x)
