"""MetaLM training: config, model, semi-causal data, DeepSpeed loop, checkpoints, tracking."""

from common.streaming_compat import ensure_streaming_importable

ensure_streaming_importable()
