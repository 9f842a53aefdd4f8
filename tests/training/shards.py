"""Tiny MDS shard sets following DESIGN.md 4, written directly with streaming.MDSWriter (test fixtures)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from streaming import MDSWriter

from common.special_tokens import END_DOC_ID

COLORS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 255, 0)]


def write_pairs(out: Path, n: int, image_size: int = 32, vocab: int = 64, seed: int = 0, sha: str = "test") -> Path:
    """n image-caption pairs: caption ids are determined by the image colour (ids 10+c, 20+c)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    cols = {"image": "bytes", "caption_ids": "ndarray:int32", "caption": "str", "key": "str", "source": "str"}
    with MDSWriter(out=str(out), columns=cols, size_limit=1 << 16) as w:
        for i in range(n):
            c = int(rng.integers(len(COLORS)))
            img = Image.new("RGB", (image_size, image_size), COLORS[c])
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            ids = np.array([10 + c, 20 + c, 30 + int(rng.integers(3))], dtype=np.int32)
            w.write({"image": buf.getvalue(), "caption_ids": ids, "caption": f"colour {c}", "key": f"{i:06d}",
                     "source": "test"})
    stats = {"kind": "pairs", "tokenizer": {"vocab_size": vocab, "sha256": sha}, "image_size": image_size,
             "samples": n, "tokens": 3 * n, "images": n, "skipped": {}}
    (out / "stats.json").write_text(json.dumps(stats))
    return out


def write_text(out: Path, n: int, seq_len: int = 64, vocab: int = 64, seed: int = 0, sha: str = "test") -> Path:
    """n packed text samples of seq_len tokens with a few documents each."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    with MDSWriter(out=str(out), columns={"tokens": "ndarray:int32", "doc_starts": "ndarray:int32"},
                   size_limit=1 << 16) as w:
        for _ in range(n):
            toks = rng.integers(7, vocab, size=seq_len).astype(np.int32)
            starts = np.sort(rng.choice(np.arange(1, seq_len), size=2, replace=False)).astype(np.int32)
            toks[starts - 1] = END_DOC_ID
            w.write({"tokens": toks, "doc_starts": np.concatenate([[0], starts]).astype(np.int32)})
    stats = {"kind": "text", "tokenizer": {"vocab_size": vocab, "sha256": sha}, "seq_len": seq_len,
             "samples": n, "tokens": n * seq_len, "images": 0, "skipped": {}}
    (out / "stats.json").write_text(json.dumps(stats))
    return out
