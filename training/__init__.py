"""MetaLM training: config, model, semi-causal data, DeepSpeed loop, checkpoints, tracking."""

import warnings

from common.streaming_compat import ensure_streaming_importable

ensure_streaming_importable()
# megatron-core says this at import on every machine without apex/TE (CPU, or GPU without the extras);
# it falls back to torch ops, which is what the README documents.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
