"""`python -m data_prep verify DIR`: read every shard, check hashes, schema and every sample.

Returns a list of problems, each naming the shard (empty list = the set is good).
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from streaming.base.format import reader_from_json
from streaming.base.hashing import get_hash

from common.errors import UserError
from data_prep.shard_meta import COLUMNS, INDEX_FILE, read_shard_meta, split_images

log = logging.getLogger(__name__)


def shard_readers(directory: Path) -> Iterator[tuple[dict, object]]:
    """(index entry, streaming Reader) for each shard of an MDS dir, in index order."""
    index = json.loads((directory / INDEX_FILE).read_text())
    for info in index["shards"]:
        yield info, reader_from_json(str(directory), None, info)


def _check_jpeg(data, meta: dict) -> str | None:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # any decode failure is a corrupt sample
        return f"image does not decode ({e})"
    size = meta["image_size"]
    if img.format != "JPEG" or img.mode != "RGB" or img.size != (size, size):
        return f"image is {img.format} {img.mode} {img.size}, expected JPEG RGB ({size}, {size})"
    return None


def _id_list(ids, vocab: int) -> bool:
    """A JSON list of token ids, all in [0, vocab) (may be empty)."""
    return isinstance(ids, list) and all(isinstance(t, int) and 0 <= t < vocab for t in ids)


def _bad_ids(ids, vocab: int, name: str) -> str | None:
    if not isinstance(ids, np.ndarray) or ids.dtype != np.int32 or ids.ndim != 1:
        return f"{name} must be a 1-D int32 array, got {getattr(ids, 'dtype', type(ids).__name__)}"
    if len(ids) == 0:
        return f"{name} is empty"
    if ids.min() < 0 or ids.max() >= vocab:
        return f"{name} outside [0, {vocab})"
    return None


def _check_task_sample(sample: dict, meta: dict) -> str | None:
    vocab = meta["tokenizer"]["vocab_size"]
    segments, images = sample["encoder_segments"], split_images(sample)
    if not isinstance(segments, list) or not isinstance(images, list):
        return "encoder_segments and images must be lists"
    if not segments and not images:
        return "no image and no encoder segment"
    for i, seg in enumerate(segments):
        if not seg or not _id_list(seg, vocab):
            return f"encoder segment {i} is empty or holds ids outside [0, {vocab})"
    if not _id_list(sample["decoder_prompt_ids"], vocab):
        return f"decoder_prompt_ids must be a list of ids in [0, {vocab})"
    err = _bad_ids(sample["target_ids"], vocab, "target_ids")
    if err:
        return err
    if not sample["target"] or not sample["dataset"] or not sample["key"] or sample["template_id"] < 0:
        return "empty target, dataset or key, or a negative template_id"
    answers, choices = sample["answers"], sample["choices"]
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
        return "answers must be a non-empty list of strings"
    if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        return "choices must be a list of strings"
    label = sample["label"]
    if label < -1 or (choices and label >= len(choices)):
        return f"label {label} is neither -1 nor an index into the {len(choices)} choices"
    if images and "image_size" not in meta:
        return "sample has images but stats.json records no image_size"
    for j, data in enumerate(images):
        err = _check_jpeg(data, meta) if isinstance(data, bytes) else "not bytes"
        if err:
            return f"image {j}: {err}"
    return None


def sample_tokens(kind: str, sample: dict) -> int:
    """Token ids a sample holds (what stats.json `tokens` counts)."""
    if kind == "pairs":
        return len(sample["caption_ids"])
    if kind == "tasks":
        return (
            sum(len(s) for s in sample["encoder_segments"])
            + len(sample["decoder_prompt_ids"])
            + len(sample["target_ids"])
        )
    return len(sample["tokens"])


def _check_sample(kind: str, sample: dict, meta: dict) -> str | None:
    vocab = meta["tokenizer"]["vocab_size"]
    if kind == "tasks":
        return _check_task_sample(sample, meta)
    if kind == "pairs":
        ids = sample["caption_ids"]
        if ids.dtype != np.int32 or ids.ndim != 1 or len(ids) == 0:
            return f"caption_ids has dtype {ids.dtype}, shape {ids.shape}"
        if ids.min() < 0 or ids.max() >= vocab:
            return f"caption_ids outside [0, {vocab})"
        if not sample["caption"]:
            return "empty caption"
        return _check_jpeg(sample["image"], meta)
    tokens, starts = sample["tokens"], sample["doc_starts"]
    seq_len = meta["seq_len"]
    if tokens.dtype != np.int32 or tokens.shape != (seq_len,):
        return f"tokens has dtype {tokens.dtype}, shape {tokens.shape}, expected int32 ({seq_len},)"
    if tokens.min() < 0 or tokens.max() >= vocab:
        return f"tokens outside [0, {vocab})"
    if (
        starts.dtype != np.int32
        or len(starts) == 0
        or starts[0] != 0
        or np.any(np.diff(starts) <= 0)
        or starts[-1] >= seq_len
    ):
        return f"doc_starts {starts[:8].tolist()}... must be int32, start at 0, increase, stay < {seq_len}"
    return None


def verify_shards(directory: str | Path) -> tuple[list[str], dict]:
    """(problems, summary). UserError if DIR is not a shard set at all."""
    d = Path(directory)
    meta = read_shard_meta(d)
    kind = meta["kind"]
    problems: list[str] = []
    try:
        index = json.loads((d / INDEX_FILE).read_text())
        shards = index["shards"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{d / INDEX_FILE}: unreadable MDS index ({e})"], {}
    want = COLUMNS[kind]
    samples = tokens = 0
    per_dataset: Counter = Counter()
    for info in shards:
        name = (info.get("raw_data") or {}).get("basename", "?")
        where = f"{d}/{name}"
        cols = dict(zip(info.get("column_names", []), info.get("column_encodings", [])))
        if info.get("format") != "mds" or cols != want:
            problems.append(f"{where}: schema {info.get('format')} {cols}, expected mds {want}")
            continue
        file_info = info.get("zip_data") or info["raw_data"]
        path = d / file_info["basename"]
        if not path.is_file():
            problems.append(f"{where}: shard file missing")
            continue
        data = path.read_bytes()
        if len(data) != file_info["bytes"]:
            problems.append(f"{where}: {len(data)} bytes, index says {file_info['bytes']}")
            continue
        if not file_info.get("hashes"):
            problems.append(f"{where}: no hashes recorded; rebuild with data_prep")
        bad_hash = [a for a, h in file_info.get("hashes", {}).items() if get_hash(a, data) != h]
        if bad_hash:
            problems.append(f"{where}: {'/'.join(bad_hash)} hash mismatch (corrupted shard)")
            continue
        if info.get("zip_data"):
            problems.append(f"{where}: compressed shards are not produced by data_prep; rebuild")
            continue
        try:
            reader = reader_from_json(str(d), None, info)
            n_bad = 0
            for i in range(info["samples"]):
                sample = reader.get_item(i)
                err = _check_sample(kind, sample, meta)
                if err:
                    n_bad += 1
                    if n_bad <= 3:
                        problems.append(f"{where}: sample {i}: {err}")
                samples += 1
                tokens += sample_tokens(kind, sample)
                if kind == "tasks":
                    per_dataset[sample["dataset"]] += 1
            if n_bad > 3:
                problems.append(f"{where}: {n_bad} bad samples in all")
        except Exception as e:  # a structurally broken shard (offsets, encodings)
            problems.append(f"{where}: cannot be decoded ({type(e).__name__}: {e})")
    if samples != meta.get("samples"):
        problems.append(f"{d}: shards hold {samples} samples, stats.json says {meta.get('samples')}")
    if tokens != meta.get("tokens"):
        problems.append(f"{d}: shards hold {tokens} tokens, stats.json says {meta.get('tokens')}")
    if kind == "tasks":
        recorded = {k: v.get("samples") for k, v in (meta.get("datasets") or {}).items() if v.get("samples")}
        if dict(per_dataset) != recorded:
            problems.append(
                f"{d}: shards hold {dict(per_dataset)} samples per dataset, stats.json says {recorded}"
            )
    summary = {"dir": str(d), "kind": kind, "shards": len(shards), "samples": samples, "tokens": tokens}
    return problems, summary


def verify_or_raise(directory: str | Path) -> dict:
    problems, summary = verify_shards(directory)
    if problems:
        raise UserError(problems)
    return summary
