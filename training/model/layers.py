"""Tensor-parallel Transformer building blocks (megatron-core Column/Row parallel linears + SDPA).

Shapes are batch-first [B, T, H] (no sequence parallelism, so megatron's linears accept it).
Each TP rank holds num_heads / tp heads and ffn / tp MLP columns; the fused QKV weight is laid out
per head ([head][q|k|v][head_dim] rows) so a contiguous TP shard holds whole heads and the full
(TP-independent) weight is the concatenation of the shards.

Every layer takes its shapes plus the component's `LayerSpec` (training/model/spec.py: megatron config,
TP group and size, dropouts, init std, checkpointing).

Dropout streams: hidden dropout uses the default generator (identical on the ranks of one TP group,
since the activations are replicated); attention-probability dropout runs inside Megatron's
`get_cuda_rng_tracker().fork()` (a different stream per TP rank, since each rank holds other heads).

Attention masks (what runs where). The `key_mask` a stack/layer/attention takes is either
- None: the decoder's plain causal attention, SDPA with `is_causal=True` and no mask tensor: the fast
  path of unpacked batches (flash attention on GPU, the fused CPU kernel on CPU);
- [B, S] bool (True = attend): key padding of the encoders (broadcast over queries and heads);
- [B, 1, T, S] bool: a full mask, built once per forward by `packed_attention_mask` for packed finetuning
  rows (a position sees earlier positions of its own example only) and by generation (padding holes
  in the prefix). Causality is inside the mask then. On CPU SDPA runs its masked kernel; on GPU
  flash attention takes no mask, so PyTorch picks the memory-efficient kernel (it takes an arbitrary
  mask; fp16/bf16/fp32), else the math kernel. Cost: the mask itself (B*T*S bytes, shared by all heads
  and layers: 33 MB at B=8, T=2048) and the memory-efficient kernel's lower speed than flash; every
  masked-out block is still computed (no skipping across examples). A varlen flash path
  (flash_attn_varlen_func over cu_seqlens, skipping cross-example blocks) needs the flash-attn package
  and an unpad/repad around each layer: not done here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from torch import nn

from parallel.activation_checkpoint import checkpoint
from training.model.config import Activation, NormScheme
from training.model.spec import LayerSpec

# ---------------------------------------------------------------------------------------------------
# init marks: every parameter carries how its FULL (TP-independent) tensor is initialized; the
# model's init pass draws the full tensor from a per-parameter seeded generator and keeps its shard.

InitFn = Callable[[torch.Tensor, torch.Generator], None]


def normal_init(std: float, scale: float = 1.0) -> InitFn:
    def init(t: torch.Tensor, g: torch.Generator) -> None:
        t.normal_(0.0, std * scale, generator=g)

    return init


def const_init(value: float) -> InitFn:
    def init(t: torch.Tensor, g: torch.Generator) -> None:
        t.fill_(value)

    return init


def mark_init(param: torch.Tensor | None, fn: InitFn) -> None:
    if param is not None:
        param.metalm_init = fn


def mark_tp(param: torch.Tensor | None, dim: int) -> None:
    """Record that `param` is split across TP ranks along `dim` (megatron's attribute names)."""
    if param is not None and not getattr(param, "tensor_model_parallel", False):
        for a in ("tensor_model_parallel", "partition_dim", "partition_stride"):
            if hasattr(param, a):
                delattr(param, a)
        set_tensor_model_parallel_attributes(param, True, dim, 1)


def column_linear(
    in_f: int,
    out_f: int,
    spec: LayerSpec,
    *,
    scale: float = 1.0,
    bias: bool = True,
    init: InitFn | None = None,
) -> ColumnParallelLinear:
    """Output features split across the TP ranks; weight ~ N(0, (spec.init_std * scale)^2) unless `init`."""
    layer = ColumnParallelLinear(
        in_f,
        out_f,
        config=spec.mp,
        init_method=lambda t: None,
        bias=bias,
        gather_output=False,
        tp_group=spec.tp_group,
    )
    mark_tp(layer.weight, 0)
    mark_tp(layer.bias, 0)
    mark_init(layer.weight, init or normal_init(spec.init_std, scale))
    mark_init(layer.bias, const_init(0.0))
    return layer


def row_linear(
    in_f: int, out_f: int, spec: LayerSpec, *, scale: float = 1.0, bias: bool = True
) -> RowParallelLinear:
    """Input features split across the TP ranks (output all-reduced); weight ~ N(0, (init_std * scale)^2)."""
    layer = RowParallelLinear(
        in_f,
        out_f,
        config=spec.mp,
        init_method=lambda t: None,
        bias=bias,
        input_is_parallel=True,
        skip_bias_add=False,
        tp_group=spec.tp_group,
    )
    mark_tp(layer.weight, 1)
    mark_init(layer.weight, normal_init(spec.init_std, scale))
    mark_init(layer.bias, const_init(0.0))
    return layer


def layer_norm(hidden: int) -> nn.LayerNorm:
    ln = nn.LayerNorm(hidden, eps=1e-5)
    mark_init(ln.weight, const_init(1.0))
    mark_init(ln.bias, const_init(0.0))
    return ln


def replicated_linear(in_f: int, out_f: int, std: float, bias: bool = True) -> nn.Linear:
    """A small linear held whole on every TP rank (connectors, patch embedding)."""
    lin = nn.Linear(in_f, out_f, bias=bias)
    mark_init(lin.weight, normal_init(std))
    mark_init(lin.bias, const_init(0.0))
    return lin


# ---------------------------------------------------------------------------------------------------


class KVCache:
    """Per-layer key/value tensors [B, heads_local, T_so_far, head_dim] for incremental decoding."""

    def __init__(self, num_layers: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    @property
    def length(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search)."""
        self.layers = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.layers]


def packed_attention_mask(example_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] example ids (-1 = padding) -> [B, 1, T, T] bool causal mask that keeps examples apart:
    position t attends to s <= t only when both belong to the same example; padding attends only to
    itself (every query row keeps its diagonal, so no row is all-masked and SDPA gives no NaN)."""
    t = example_ids.shape[1]
    idx = torch.arange(t, device=example_ids.device)
    causal = idx[None, :] <= idx[:, None]  # [T(query), T(key)]
    same = example_ids[:, :, None] == example_ids[:, None, :]  # [B, T, T]
    real = (example_ids >= 0)[:, :, None] | (idx[None, :] == idx[:, None])  # padding: diagonal only
    return (causal & same & real)[:, None]


class ParallelAttention(nn.Module):
    """Multi-head attention split by heads across TP ranks (self- or cross-attention).

    Self-attention fuses Q, K, V in one column-parallel linear; cross-attention (resampler) has a
    column-parallel Q on the queries and a fused K|V on the keys/values input.
    """

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        spec: LayerSpec,
        *,
        value_out_scale: float = 1.0,
        cross: bool = False,
    ):
        super().__init__()
        self.num_heads_local = num_heads // spec.tp_size
        self.head_dim = hidden // num_heads
        self.attention_dropout = spec.attention_dropout
        self.cross = cross
        self.selective_checkpoint = spec.selective_checkpoint
        d, std = self.head_dim, spec.init_std

        def qkv_init(parts: int, value_index: int | None) -> InitFn:
            # full weight rows: [head][part][head_dim]; scale the value part (DeepNorm beta)
            def init(t: torch.Tensor, g: torch.Generator) -> None:
                t.normal_(0.0, std, generator=g)
                if value_index is not None and value_out_scale != 1.0:
                    t.view(num_heads, parts, d, -1)[:, value_index].mul_(value_out_scale)

            return init

        if cross:
            self.q = column_linear(hidden, hidden, spec)
            self.kv = column_linear(hidden, 2 * hidden, spec, init=qkv_init(2, 1))
        else:
            self.qkv = column_linear(hidden, 3 * hidden, spec, init=qkv_init(3, 2))
        self.out = row_linear(hidden, hidden, spec, scale=value_out_scale)

    def _heads(self, x: torch.Tensor, parts: int) -> list[torch.Tensor]:
        b, t, _ = x.shape
        x = x.view(b, t, self.num_heads_local, parts, self.head_dim)
        return [x[:, :, :, i].transpose(1, 2) for i in range(parts)]  # each [B, h, T, d]

    def _core(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        p = self.attention_dropout if self.training else 0.0
        if p > 0.0:
            with get_cuda_rng_tracker().fork():
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal and mask is None
                )
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool,
        key_mask: torch.Tensor | None = None,
        kv_input: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
    ) -> torch.Tensor:
        """x [B, T, H] -> [B, T, H]. key_mask (True = attend): [B, S] key padding, or a full [B, 1, T, S]
        mask (causality included; see the module docstring); cache: decoder generation, where a full
        mask covers the cached keys too ([B, 1, T_new, T_cached + T_new])."""
        if self.cross:
            (q,) = self._heads(self.q(x)[0], 1)
            k, v = self._heads(self.kv(kv_input)[0], 2)
        else:
            q, k, v = self._heads(self.qkv(x)[0], 3)
        if key_mask is None or key_mask.dim() == 4:
            mask = key_mask
        else:
            mask = key_mask[:, None, None, :]
        if cache is not None:
            past = cache.layers[layer_index]
            t_new = q.shape[2]
            if past is not None:
                k = torch.cat([past[0], k], dim=2)
                v = torch.cat([past[1], v], dim=2)
            cache.layers[layer_index] = (k, v)
            if causal and past is not None and mask is None:
                t_all = k.shape[2]
                # query i (absolute position t_all - t_new + i) sees keys <= its position
                mask = (
                    torch.arange(t_all, device=q.device)[None, :]
                    <= torch.arange(t_all - t_new, t_all, device=q.device)[:, None]
                )[None, None]
        if self.selective_checkpoint and self.training and torch.is_grad_enabled():
            if mask is None:
                ctx = checkpoint(lambda q_, k_, v_: self._core(q_, k_, v_, None, causal), q, k, v)
            else:
                ctx = checkpoint(lambda q_, k_, v_, m_: self._core(q_, k_, v_, m_, causal), q, k, v, mask)
        else:
            ctx = self._core(q, k, v, mask, causal)
        b, _, t, _ = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(b, t, self.num_heads_local * self.head_dim)
        return self.out(ctx)[0]


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation (needed to reuse CLIP vision weights)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu}


class ParallelMLP(nn.Module):
    """GELU MLP: column-parallel up-projection, row-parallel down-projection."""

    def __init__(
        self, hidden: int, ffn: int, spec: LayerSpec, *, scale: float = 1.0, activation: Activation = "gelu"
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
        self.act = ACTIVATIONS[activation]
        self.fc1 = column_linear(hidden, ffn, spec, scale=scale)
        self.fc2 = row_linear(ffn, hidden, spec, scale=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)[0]))[0]


class TransformerLayer(nn.Module):
    """One Transformer layer; norm scheme `pre` (pre-LN), `deepnorm` (post-LN with residual alpha) or `post`
    (plain post-LN, alpha = beta = 1: BERT / RoBERTa / ELECTRA layers)."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        ffn: int,
        spec: LayerSpec,
        *,
        norm_scheme: NormScheme = "pre",
        num_layers: int = 1,
        activation: Activation = "gelu",
    ):
        """num_layers: depth of the stack (DeepNorm's alpha and beta depend on it)."""
        super().__init__()
        self.norm_scheme = norm_scheme
        self.dropout = spec.hidden_dropout
        if norm_scheme == "deepnorm":
            # DeepNet for decoder-only / single stacks: alpha = (2N)^(1/4), beta = (8N)^(-1/4)
            self.alpha = (2.0 * num_layers) ** 0.25
            beta = (8.0 * num_layers) ** -0.25
        else:
            self.alpha, beta = 1.0, 1.0
        self.ln1 = layer_norm(hidden)
        self.attn = ParallelAttention(hidden, heads, spec, value_out_scale=beta)
        self.ln2 = layer_norm(hidden)
        self.mlp = ParallelMLP(hidden, ffn, spec, scale=beta, activation=activation)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        *,
        causal: bool,
        cache: KVCache | None = None,
        layer_index: int = 0,
    ) -> torch.Tensor:
        drop = self.dropout if self.training else 0.0
        if self.norm_scheme in ("deepnorm", "post"):
            a = self.attn(x, causal=causal, key_mask=key_mask, cache=cache, layer_index=layer_index)
            x = self.ln1(x * self.alpha + F.dropout(a, drop, self.training))
            return self.ln2(x * self.alpha + F.dropout(self.mlp(x), drop, self.training))
        a = self.attn(self.ln1(x), causal=causal, key_mask=key_mask, cache=cache, layer_index=layer_index)
        x = x + F.dropout(a, drop, self.training)
        return x + F.dropout(self.mlp(self.ln2(x)), drop, self.training)


class TransformerStack(nn.Module):
    """N layers (+ final LN for pre-LN), with per-layer (`full`) activation checkpointing."""

    def __init__(
        self,
        *,
        num_layers: int,
        hidden: int,
        heads: int,
        ffn: int,
        spec: LayerSpec,
        causal: bool,
        norm_scheme: NormScheme = "pre",
        activation: Activation = "gelu",
    ):
        super().__init__()
        self.causal = causal
        self.full_checkpoint = spec.full_checkpoint
        self.layers = nn.ModuleList(
            [
                TransformerLayer(
                    hidden,
                    heads,
                    ffn,
                    spec,
                    norm_scheme=norm_scheme,
                    num_layers=num_layers,
                    activation=activation,
                )
                for _ in range(num_layers)
            ]
        )
        self.final_ln = layer_norm(hidden) if norm_scheme == "pre" else None

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """key_mask: None, [B, S] key padding or a full [B, 1, T, S] mask (ParallelAttention.forward)."""
        for i, layer in enumerate(self.layers):
            trainable = any(p.requires_grad for p in layer.parameters())
            if (
                self.full_checkpoint
                and cache is None
                and self.training
                and torch.is_grad_enabled()
                and trainable
            ):
                if key_mask is None:
                    x = checkpoint(lambda h, layer=layer: layer(h, causal=self.causal), x)
                else:
                    x = checkpoint(lambda h, m, layer=layer: layer(h, m, causal=self.causal), x, key_mask)
            else:
                x = layer(x, key_mask, causal=self.causal, cache=cache, layer_index=i)
        return self.final_ln(x) if self.final_ln is not None else x


def sinusoidal_positions(positions: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Transformer sinusoidal position embeddings [.., dim] for integer positions (no parameters)."""
    half = dim // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.to(torch.float32)[..., None] * freq
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(dtype)
