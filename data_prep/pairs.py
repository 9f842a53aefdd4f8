"""`python -m data_prep pairs`: image-text sources -> tokenized MDS shards + stats.json.

Readers run in the main process (cheap: tar/JSON parsing); chunks of samples go to worker
processes for the expensive part (image decode/resize/encode, caption tokenization) and come
back in order, so the shards are identical for any `--workers`. The main process writes them
with one `MDSWriter` into a temporary folder that replaces `--output` only when complete.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from streaming import MDSWriter
from tqdm import tqdm

from common.errors import UserError
from data_prep.images import ImageSkip, process_image
from data_prep.pair_readers import RawPair, open_pair_sources
from data_prep.shard_meta import PAIRS_COLUMNS, write_stats
from data_prep.staging import check_output, staged_output
from data_prep.tokenizer import Tokenizer, load_tokenizer
from data_prep.workers import ordered_map

log = logging.getLogger(__name__)

SHARD_HASHES = ["sha1", "xxh64"]  # recorded per shard in index.json; `verify` recomputes them
CHUNK = 32  # samples per task sent to a worker


@dataclass
class PairsConfig:
    inputs: list[Path]  # webdataset tars (or folders of them), COCO JSON, JSONL/CSV manifests
    tokenizer: Path  # tokenizer dir written by `data_prep tokenizer`
    output: Path  # shard dir to create (MDS index.json + shards + stats.json)
    format: str = "auto"  # auto|webdataset|coco|jsonl|csv; auto picks by file type
    image_size: int = 224  # output images are image_size x image_size center crops
    jpeg_quality: int = 95  # JPEG quality of the re-encoded images
    max_caption_tokens: int = 128  # longer captions are cut to this many tokens
    workers: int = 1  # processes doing image + tokenizer work
    coco_captions: str = "all"  # COCO: one sample per caption (all) or per image (first)
    image_root: Path | None = None  # folder image paths are relative to (default: the JSON/manifest's folder)
    image_field: str | None = (
        None  # manifest column with the image path (default: image|image_path|file_name|...)
    )
    caption_field: str | None = None  # manifest column with the caption (default: caption|text)
    shard_size_limit: str = "64mb"  # MDS shard size limit
    force: bool = False  # replace an existing --output
    progress: bool = True  # tqdm progress bar on stderr

    def validate(self) -> None:
        p = []
        if self.image_size < 8:
            p.append(f"--image-size {self.image_size}: must be at least 8")
        if not 1 <= self.jpeg_quality <= 100:
            p.append(f"--jpeg-quality {self.jpeg_quality}: must be in 1..100")
        if self.max_caption_tokens < 1:
            p.append(f"--max-caption-tokens {self.max_caption_tokens}: must be at least 1")
        if self.workers < 1:
            p.append(f"--workers {self.workers}: must be at least 1")
        if self.coco_captions not in ("all", "first"):
            p.append(f"--coco-captions {self.coco_captions}: use all or first")
        if p:
            raise UserError(p)


def normalize_caption(text: str) -> str:
    """Collapse all whitespace (newlines, tabs, repeats) to single spaces and strip."""
    return " ".join(text.split())


# Per-process state for the workers (set by _init_worker, in-process when --workers 1).
_STATE: dict = {}


def _init_worker(tokenizer_dir: str, image_size: int, jpeg_quality: int, max_caption_tokens: int) -> None:
    _STATE.update(
        tok=load_tokenizer(tokenizer_dir),
        image_size=image_size,
        quality=jpeg_quality,
        max_tokens=max_caption_tokens,
    )


def _read_image(pair: RawPair) -> bytes:
    if pair.image_bytes is not None:
        return pair.image_bytes
    try:
        with open(pair.image_path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise ImageSkip("missing_image", str(pair.image_path)) from e
    except OSError as e:
        raise ImageSkip("unreadable_image", f"{pair.image_path}: {e}") from e


def process_chunk(chunk: list[RawPair]) -> list[tuple[dict | None, str | None, bool]]:
    """(sample, None, truncated) or (None, skip_reason, False) for each pair, in order."""
    tok: Tokenizer = _STATE["tok"]
    size, quality, max_tokens = _STATE["image_size"], _STATE["quality"], _STATE["max_tokens"]
    out: list = [None] * len(chunk)
    captions, where = [], []
    for i, pair in enumerate(chunk):
        caption = normalize_caption(pair.caption or "")
        if not caption:
            out[i] = (None, "empty_caption", False)
            continue
        try:
            jpeg = process_image(_read_image(pair), size, quality)
        except ImageSkip as e:
            out[i] = (None, e.reason, False)
            continue
        out[i] = {"image": jpeg, "caption": caption, "key": pair.key, "source": pair.source}
        captions.append(caption)
        where.append(i)
    for i, ids in zip(where, tok.encode_batch(captions)):
        sample = out[i]
        if not ids:
            out[i] = (None, "empty_caption", False)
            continue
        truncated = len(ids) > max_tokens
        sample["caption_ids"] = np.asarray(ids[:max_tokens], dtype=np.int32)
        out[i] = (sample, None, truncated)
    return out


def _chunks(pairs: Iterator[RawPair], size: int) -> Iterator[list[RawPair]]:
    chunk: list[RawPair] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_pairs(cfg: PairsConfig) -> dict:
    """Run the whole step; returns the stats written to stats.json. UserError on bad input."""
    cfg.validate()
    check_output(cfg.output, cfg.force)
    readers = open_pair_sources(
        cfg.inputs, cfg.format, cfg.image_root, cfg.coco_captions, cfg.image_field, cfg.caption_field
    )
    tok = load_tokenizer(cfg.tokenizer)
    skipped: Counter = Counter()
    per_source: dict[str, dict] = {}
    t0 = time.perf_counter()

    def good_pairs() -> Iterator[RawPair]:
        # Reader-level skips are counted here; the rest go to the workers, and `pair_src`
        # remembers each one's source so results (which come back in order) are attributed.
        for reader in readers:
            src = per_source.setdefault(
                str(reader.path), {"format": reader.format, "samples": 0, "skipped": Counter()}
            )
            for pair in reader:
                if pair.skip:
                    skipped[pair.skip] += 1
                    src["skipped"][pair.skip] += 1
                else:
                    pair_src.append(src)
                    yield pair

    pair_src: deque[dict] = deque()  # per pending pair, its source's stats (consumed in order)
    samples = tokens = truncated_captions = max_len = 0
    bar = tqdm(
        desc="pairs",
        unit="img",
        file=sys.stderr,
        disable=not cfg.progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    initargs = (str(cfg.tokenizer), cfg.image_size, cfg.jpeg_quality, cfg.max_caption_tokens)
    with staged_output(cfg.output, cfg.force) as tmp:
        # closing(): on Ctrl-C or an error the workers are stopped at once, not at garbage collection
        mapped = ordered_map(process_chunk, _chunks(good_pairs(), CHUNK), cfg.workers, _init_worker, initargs)
        with (
            closing(mapped),
            MDSWriter(
                out=str(tmp), columns=PAIRS_COLUMNS, hashes=SHARD_HASHES, size_limit=cfg.shard_size_limit
            ) as writer,
        ):
            for results in mapped:
                for sample, reason, truncated in results:
                    src = pair_src.popleft()
                    if sample is None:
                        skipped[reason] += 1
                        src["skipped"][reason] += 1
                        continue
                    writer.write(sample)
                    src["samples"] += 1
                    samples += 1
                    n = len(sample["caption_ids"])
                    tokens += n
                    max_len = max(max_len, n)
                    truncated_captions += truncated
                bar.update(len(results))
        bar.close()
        if samples == 0:
            raise UserError(
                f"pairs: no usable samples in {', '.join(map(str, cfg.inputs))} "
                f"(skipped: {dict(skipped) or 'nothing read'})"
            )
        stats = {
            "kind": "pairs",
            "tokenizer": {**tok.summary(), "path": str(cfg.tokenizer.absolute())},
            "image_size": cfg.image_size,
            "image_encoding": "jpeg",  # the MDS `image` column is `bytes` holding a JPEG file
            "jpeg_quality": cfg.jpeg_quality,
            "samples": samples,
            "images": samples,
            "tokens": tokens,
            "caption_tokens": {
                "mean": round(tokens / samples, 3),
                "max": max_len,
                "truncated": truncated_captions,
                "limit": cfg.max_caption_tokens,
            },
            "skipped": dict(sorted(skipped.items())),
            "sources": {
                k: {**v, "skipped": dict(sorted(v["skipped"].items()))} for k, v in per_source.items()
            },
        }
        write_stats(tmp, stats)
    dt = time.perf_counter() - t0
    log.info(
        "pairs: %d samples (%d caption tokens), skipped %s, in %.1f s (%.0f images/s) -> %s",
        samples,
        tokens,
        dict(skipped) or "none",
        dt,
        samples / dt,
        cfg.output,
    )
    return stats
