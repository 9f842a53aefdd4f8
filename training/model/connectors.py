"""Connectors: encoder outputs -> decoder input embeddings (one decoder slot per output vector)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.model.layers import (
    ParallelAttention,
    ParallelMLP,
    layer_norm,
    mark_init,
    normal_init,
    replicated_linear,
)
from training.model.spec import LayerSpec


class LinearConnector(nn.Module):
    """MetaLM's connector: one linear projection per encoder output vector."""

    def __init__(self, in_dim: int, out_dim: int, spec: LayerSpec):
        super().__init__()
        self.proj = replicated_linear(in_dim, out_dim, spec.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ResamplerBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, spec: LayerSpec):
        super().__init__()
        self.dropout = spec.hidden_dropout
        self.ln_media = layer_norm(hidden)
        self.ln_latents = layer_norm(hidden)
        self.attn = ParallelAttention(hidden, heads, spec, cross=True)
        self.ln_mlp = layer_norm(hidden)
        self.mlp = ParallelMLP(hidden, 4 * hidden, spec)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        drop = self.dropout if self.training else 0.0
        q = self.ln_latents(latents)
        kv = torch.cat([self.ln_media(media), q], dim=1)
        latents = latents + F.dropout(self.attn(q, causal=False, kv_input=kv), drop, self.training)
        return latents + F.dropout(self.mlp(self.ln_mlp(latents)), drop, self.training)


class ResamplerConnector(nn.Module):
    """Kosmos-1 / Flamingo perceiver resampler: `num_latents` learned queries attend over the image
    tokens (and themselves); their outputs, projected to the decoder width, are the image slots."""

    def __init__(
        self, in_dim: int, out_dim: int, spec: LayerSpec, *, num_latents: int, num_layers: int, heads: int
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.empty(num_latents, in_dim))
        mark_init(self.latents, normal_init(spec.init_std))
        self.blocks = nn.ModuleList([ResamplerBlock(in_dim, heads, spec) for _ in range(num_layers)])
        self.ln_out = layer_norm(in_dim)
        self.proj = replicated_linear(in_dim, out_dim, spec.init_std)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        """media [N, tokens, in_dim] -> [N, num_latents, out_dim]."""
        x = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1).to(media.dtype)
        for block in self.blocks:
            x = block(x, media)
        return self.proj(self.ln_out(x))
