"""Model FLOPs of one training micro-batch (for MFU): 6 x params x tokens per stack plus attention.

Conventions (as in Megatron / PaLM MFU): forward + backward = 3 x forward; matmul = 2 FLOPs per
multiply-add; attention scores counted in full (no causal discount); activation recompute and
norms/softmax not counted; frozen vision layers counted as trainable (upper bound on useful work).
"""

from __future__ import annotations

from training.data.batch import Batch


def _stack_flops(num_layers: int, hidden: int, ffn: int, tokens: int, seqs: int, seq_len: int) -> float:
    """Forward+backward FLOPs of a Transformer stack over `seqs` sequences of `seq_len` (tokens = seqs x seq_len)."""
    linear = 6.0 * num_layers * (4 * hidden * hidden + 2 * hidden * ffn) * tokens
    attention = 12.0 * num_layers * hidden * seq_len * seq_len * seqs  # QK^T and AV, fwd (4 h T^2) x 3
    return linear + attention


def batch_flops(model_cfg, batch: Batch) -> float:
    """FLOPs of forward+backward of `batch` through MetaLM described by `model_cfg` (a ModelConfig)."""
    d, t, v = model_cfg.decoder, model_cfg.text_encoder, model_cfg.vision_encoder
    B, T = batch.tokens.shape
    vocab = model_cfg.padded_vocab_size() if hasattr(model_cfg, "padded_vocab_size") else model_cfg.vocab_size
    flops = _stack_flops(d.num_layers, d.hidden_size, d.ffn_hidden_size, B * T, B, T)
    flops += 6.0 * d.hidden_size * vocab * B * T  # tied output projection
    S, L = batch.span_tokens.shape
    S = max(S, 1)  # the model runs a dummy span when there is none
    flops += _stack_flops(t.num_layers, t.hidden_size, t.ffn_hidden_size, S * L, S, L)
    flops += 6.0 * t.hidden_size * d.hidden_size * S * L  # connector
    N = max(batch.images.shape[0], 1)
    P = (v.image_size // v.patch_size) ** 2 + 1
    flops += _stack_flops(v.num_layers, v.hidden_size, v.ffn_hidden_size, N * P, N, P)
    flops += 6.0 * 3 * v.patch_size * v.patch_size * v.hidden_size * N * (P - 1)  # patch embedding
    flops += 6.0 * v.hidden_size * d.hidden_size * N * model_cfg.image_slots  # connector (linear part)
    return flops


def sample_flops_estimate(
    model_cfg, seq_len: int, images_per_sample: float = 1.0, span_tokens: int = 0
) -> float:
    """FLOPs of forward+backward for one sample of `seq_len` decoder tokens (planning / benchmark estimates)."""
    d, t, v = model_cfg.decoder, model_cfg.text_encoder, model_cfg.vision_encoder
    vocab = model_cfg.padded_vocab_size() if hasattr(model_cfg, "padded_vocab_size") else model_cfg.vocab_size
    f = _stack_flops(d.num_layers, d.hidden_size, d.ffn_hidden_size, seq_len, 1, seq_len)
    f += 6.0 * d.hidden_size * vocab * seq_len
    P = (v.image_size // v.patch_size) ** 2 + 1
    f += images_per_sample * _stack_flops(v.num_layers, v.hidden_size, v.ffn_hidden_size, P, 1, P)
    if span_tokens:
        f += _stack_flops(t.num_layers, t.hidden_size, t.ffn_hidden_size, span_tokens, 1, span_tokens)
    return f
