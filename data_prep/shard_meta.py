"""`stats.json` beside a shard set's MDS `index.json`: what the shards hold and how they were built.

Training calls `read_shard_meta` and `check_compatible` to refuse shards built with another
tokenizer, image size or sequence length.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.errors import UserError

STATS_FILE = "stats.json"
INDEX_FILE = "index.json"
FORMAT_VERSION = 1
BUILD_COMMAND = {"pairs": "python -m data_prep pairs", "text": "python -m data_prep text"}

# MDS columns per shard kind (DESIGN.md 4). Images are stored as `bytes` holding a JPEG file.
PAIRS_COLUMNS = {
    "image": "bytes",
    "caption_ids": "ndarray:int32",
    "caption": "str",
    "key": "str",
    "source": "str",
}
TEXT_COLUMNS = {"tokens": "ndarray:int32", "doc_starts": "ndarray:int32"}
COLUMNS = {"pairs": PAIRS_COLUMNS, "text": TEXT_COLUMNS}


def read_shard_meta(directory: str | os.PathLike) -> dict:
    """The parsed `stats.json` of a shard dir; UserError naming the dir and the command that builds it."""
    d = Path(directory)
    how = "build it with `python -m data_prep pairs ...` (image-text) or `python -m data_prep text ...`"
    if not (d / INDEX_FILE).is_file() or not (d / STATS_FILE).is_file():
        missing = [n for n in (INDEX_FILE, STATS_FILE) if not (d / n).is_file()]
        raise UserError(f"shard dir {d}: no {' or '.join(missing)} (not a complete shard set); {how}")
    try:
        meta = json.loads((d / STATS_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"shard dir {d}: {STATS_FILE} is not valid JSON ({e}); rebuild it: {how}") from e
    if not isinstance(meta, dict) or meta.get("kind") not in COLUMNS:
        raise UserError(f"shard dir {d}: {STATS_FILE} has no known `kind`; rebuild it: {how}")
    return meta


def check_compatible(
    meta: dict,
    directory: str | os.PathLike,
    *,
    tokenizer_sha256: str | None = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
    seq_len: int | None = None,
    kind: str | None = None,
) -> None:
    """Raise UserError listing every way the shards do not fit the given settings."""
    problems = []
    d = str(directory)
    rebuild = BUILD_COMMAND.get(meta.get("kind", ""), "python -m data_prep")
    if kind is not None and meta.get("kind") != kind:
        problems.append(f"shard dir {d} holds `{meta.get('kind')}` shards, expected `{kind}`")
    tok = meta.get("tokenizer", {})
    if tokenizer_sha256 is not None and tok.get("sha256") != tokenizer_sha256:
        problems.append(
            f"shard dir {d} was built with another tokenizer (sha256 {str(tok.get('sha256'))[:12]}..., "
            f"yours {tokenizer_sha256[:12]}...); rebuild it with `{rebuild} --tokenizer <your dir>`"
        )
    if vocab_size is not None and tok.get("vocab_size") != vocab_size:
        problems.append(f"shard dir {d} has vocab size {tok.get('vocab_size')}, the model uses {vocab_size}")
    if image_size is not None and meta.get("image_size") != image_size:
        problems.append(
            f"shard dir {d} has images of {meta.get('image_size')} px, the model uses {image_size}; "
            f"rebuild with `{rebuild} --image-size {image_size}`"
        )
    if seq_len is not None and meta.get("seq_len") != seq_len:
        problems.append(
            f"shard dir {d} has sequences of {meta.get('seq_len')} tokens, training uses {seq_len}; "
            f"rebuild with `{rebuild} --seq-len {seq_len}`"
        )
    if problems:
        raise UserError(problems)


def write_stats(directory: Path, stats: dict) -> None:
    path = directory / STATS_FILE
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **stats}, indent=2, sort_keys=False) + "\n")
