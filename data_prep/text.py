"""`python -m data_prep text`: JSONL / .jsonl.zst / .txt corpora -> packed token MDS shards + stats.json.

The main process reads raw records; workers decode (UTF-8, JSON) and tokenize chunks of them and
return token arrays in order; the main process packs (`packing.Packer`) and writes one MDS set
through a temporary folder. Output is identical for any `--workers`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from streaming import MDSWriter
from tqdm import tqdm

from common.errors import UserError
from data_prep.packing import Packer
from data_prep.pairs import SHARD_HASHES
from data_prep.shard_meta import TEXT_COLUMNS, write_stats
from data_prep.staging import check_output, staged_output
from data_prep.text_sources import (
    TXT_MODES,
    TextRecord,
    decode_record,
    iter_text_records,
    validate_text_input,
)
from data_prep.tokenizer import load_tokenizer
from data_prep.workers import ordered_map

log = logging.getLogger(__name__)

CHUNK = 256  # documents per worker task


@dataclass
class TextConfig:
    inputs: list[Path]  # .jsonl (a `text` field per line), .jsonl.zst, .txt files
    tokenizer: Path  # tokenizer dir written by `data_prep tokenizer`
    output: Path  # shard dir to create
    seq_len: int = 2048  # tokens per packed sequence
    workers: int = 1  # tokenizer processes
    text_field: str = "text"  # JSONL field holding the document
    txt_docs: str = "file"  # .txt files: one document per file, paragraph (blank-line separated) or line
    shard_size_limit: str = "64mb"  # MDS shard size limit
    force: bool = False  # replace an existing --output
    progress: bool = True  # tqdm progress bar on stderr

    def validate(self) -> None:
        p = []
        if self.seq_len < 2:
            p.append(f"--seq-len {self.seq_len}: must be at least 2")
        if self.workers < 1:
            p.append(f"--workers {self.workers}: must be at least 1")
        if self.txt_docs not in TXT_MODES:
            p.append(f"--txt-docs {self.txt_docs}: use one of {', '.join(TXT_MODES)}")
        if not self.inputs:
            p.append("text: no --input given")
        if p:
            raise UserError(p)


_STATE: dict = {}


def _init_worker(tokenizer_dir: str) -> None:
    _STATE["tok"] = load_tokenizer(tokenizer_dir)


def tokenize_chunk(records: list[TextRecord]) -> list[tuple[list[int] | None, str | None]]:
    """(token ids, None) or (None, skip reason) per record, in order."""
    out: list = [None] * len(records)
    texts, where = [], []
    for i, rec in enumerate(records):
        text, reason = decode_record(rec)
        if reason:
            out[i] = (None, reason)
        else:
            texts.append(text)
            where.append(i)
    for i, ids in zip(where, _STATE["tok"].encode_batch(texts)):
        out[i] = (ids, None) if ids else (None, "empty_document")
    return out


def _chunks(records: Iterator[TextRecord], size: int) -> Iterator[list[TextRecord]]:
    chunk: list[TextRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_text(cfg: TextConfig) -> dict:
    """Run the whole step; returns the stats written to stats.json. UserError on bad input."""
    cfg.validate()
    check_output(cfg.output, cfg.force)
    problems = []
    for path in cfg.inputs:
        try:
            validate_text_input(path, cfg.text_field)
        except UserError as e:
            problems.append(str(e))
    if problems:
        raise UserError(problems)
    tok = load_tokenizer(cfg.tokenizer)
    t0 = time.perf_counter()

    def records() -> Iterator[TextRecord]:
        for path in cfg.inputs:
            yield from iter_text_records(path, cfg.txt_docs, cfg.text_field)

    skipped: Counter = Counter()
    documents = doc_tokens = samples = 0
    packer = Packer(cfg.seq_len)
    bar = tqdm(
        desc="text",
        unit="tok",
        unit_scale=True,
        file=sys.stderr,
        disable=not cfg.progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    with staged_output(cfg.output, cfg.force) as tmp:
        mapped = ordered_map(
            tokenize_chunk, _chunks(records(), CHUNK), cfg.workers, _init_worker, (str(cfg.tokenizer),)
        )
        with (
            closing(mapped),
            MDSWriter(
                out=str(tmp), columns=TEXT_COLUMNS, hashes=SHARD_HASHES, size_limit=cfg.shard_size_limit
            ) as writer,
        ):
            for results in mapped:
                docs = []
                for ids, reason in results:
                    if reason:
                        skipped[reason] += 1
                    else:
                        docs.append(ids)
                        doc_tokens += len(ids)
                documents += len(docs)
                for tokens, doc_starts in packer.add(docs):
                    writer.write({"tokens": tokens, "doc_starts": doc_starts})
                    samples += 1
                bar.update(sum(len(d) + 1 for d in docs))
        bar.close()
        if samples == 0:
            raise UserError(
                f"text: the inputs hold {doc_tokens + documents} tokens (with </d>), less than one "
                f"--seq-len {cfg.seq_len} sequence (skipped: {dict(skipped) or 'none'})"
            )
        stats = {
            "kind": "text",
            "tokenizer": {**tok.summary(), "path": str(cfg.tokenizer.absolute())},
            "seq_len": cfg.seq_len,
            "samples": samples,
            "tokens": samples * cfg.seq_len,
            "images": 0,
            "documents": documents,
            "document_tokens": doc_tokens,
            "dropped_tail_tokens": packer.pending_tokens,
            "skipped": dict(sorted(skipped.items())),
            "inputs": [str(p) for p in cfg.inputs],
        }
        write_stats(tmp, stats)
    dt = time.perf_counter() - t0
    log.info(
        "text: %d documents -> %d sequences of %d tokens, skipped %s, in %.1f s (%.0f tokens/s) -> %s",
        documents,
        samples,
        cfg.seq_len,
        dict(skipped) or "none",
        dt,
        samples * cfg.seq_len / dt,
        cfg.output,
    )
    return stats
