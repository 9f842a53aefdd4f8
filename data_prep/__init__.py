"""Offline data preparation: tokenizer, readers, image processing, MDS shards, stats, verify."""

from common.streaming_compat import ensure_streaming_importable

ensure_streaming_importable()
