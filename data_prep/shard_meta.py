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
BUILD_COMMAND = {
    "pairs": "python -m data_prep pairs",
    "text": "python -m data_prep text",
    "tasks": "python -m data_prep tasks",
}

# MDS columns per shard kind (DESIGN.md 4). Images are stored as `bytes` holding a JPEG file.
PAIRS_COLUMNS = {
    "image": "bytes",
    "caption_ids": "ndarray:int32",
    "caption": "str",
    "key": "str",
    "source": "str",
}
TEXT_COLUMNS = {"tokens": "ndarray:int32", "doc_starts": "ndarray:int32"}
# Finetuning task examples (data_prep/tasks.py documents each column).
TASK_COLUMNS = {
    "key": "str",
    "dataset": "str",
    "template_id": "int",
    "images": "bytes",  # the example's JPEG files back to back (no pickle in shards)
    "image_sizes": "json",  # their byte lengths: `split_images` cuts `images` apart
    "encoder_segments": "json",
    "decoder_prompt_ids": "json",  # a list: MDS cannot store an empty ndarray, and prompts may be empty
    "target_ids": "ndarray:int32",
    "target": "str",
    "answers": "json",
    "choices": "json",
    "label": "int",
    "question_id": "int",
    "image_id": "int",
}
COLUMNS = {"pairs": PAIRS_COLUMNS, "text": TEXT_COLUMNS, "tasks": TASK_COLUMNS}


def join_images(jpegs: list[bytes]) -> dict:
    """The `images` + `image_sizes` columns of a task example holding these JPEG files (0..N)."""
    return {"images": b"".join(jpegs), "image_sizes": [len(j) for j in jpegs]}


def split_images(sample: dict) -> list[bytes]:
    """The JPEG files of a task example (inverse of `join_images`)."""
    data, out, start = sample.get("images") or b"", [], 0
    for n in sample.get("image_sizes") or []:
        out.append(bytes(data[start : start + n]))
        start += n
    return out


def read_shard_meta(directory: str | os.PathLike) -> dict:
    """The parsed `stats.json` of a shard dir; UserError naming the dir and the command that builds it."""
    d = Path(directory)
    how = (
        "build it with `python -m data_prep pairs ...` (image-text), `python -m data_prep text ...` "
        "or `python -m data_prep tasks ...` (finetuning tasks)"
    )
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


def check_compatible(meta: dict, directory: str | os.PathLike, **settings) -> None:
    """Raise UserError listing every way the shards do not fit the given settings
    (keywords of `compatibility_problems`)."""
    problems = compatibility_problems(meta, directory, **settings)
    if problems:
        raise UserError(problems)


def compatibility_problems(
    meta: dict,
    directory: str | os.PathLike,
    *,
    tokenizer_sha256: str | None = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
    seq_len: int | None = None,
    max_seq_len: int | None = None,
    kind: str | None = None,
) -> list[str]:
    """Every way the shards (their stats.json `meta`) do not fit the given settings; the one check
    training and data tools use. `seq_len`: text shards must have exactly this length; `max_seq_len`:
    the decoder's limit (a text row of seq_len tokens gives seq_len - 1 inputs)."""
    problems = []
    d = str(directory)
    rebuild = BUILD_COMMAND.get(meta.get("kind", ""), "python -m data_prep")
    if kind is not None and meta.get("kind") != kind:
        problems.append(f"shard dir {d} holds `{meta.get('kind')}` shards, expected `{kind}`")
    tok = meta.get("tokenizer", {})
    if tokenizer_sha256 is not None and tok.get("sha256") and tok.get("sha256") != tokenizer_sha256:
        problems.append(
            f"shard dir {d} was built with another tokenizer (sha256 {str(tok.get('sha256'))[:12]}..., "
            f"yours {tokenizer_sha256[:12]}...); rebuild it with `{rebuild} --tokenizer <your dir>`"
        )
    elif vocab_size is not None and tok.get("vocab_size") not in (None, vocab_size):
        problems.append(f"shard dir {d} has vocab size {tok.get('vocab_size')}, the model uses {vocab_size}")
    if image_size is not None and meta.get("image_size") not in (None, image_size):
        problems.append(
            f"shard dir {d} has images of {meta.get('image_size')} px, the model uses {image_size}; "
            f"rebuild with `{rebuild} --image-size {image_size}`"
        )
    if seq_len is not None and meta.get("seq_len") != seq_len:
        problems.append(
            f"shard dir {d} has sequences of {meta.get('seq_len')} tokens, training uses {seq_len}; "
            f"rebuild with `{rebuild} --seq-len {seq_len}`"
        )
    if max_seq_len is not None and meta.get("kind") == "text" and meta.get("seq_len", 0) - 1 > max_seq_len:
        problems.append(
            f"shard dir {d} has sequences of {meta.get('seq_len')} tokens but the decoder takes at most "
            f"{max_seq_len}; rebuild with `{rebuild} --seq-len {max_seq_len + 1}` or less"
        )
    return problems


def write_stats(directory: Path, stats: dict) -> None:
    path = directory / STATS_FILE
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **stats}, indent=2, sort_keys=False) + "\n")
