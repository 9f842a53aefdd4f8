"""Text corpus readers: JSONL (`text` field), `.jsonl.zst` (the Pile's format) and plain `.txt`.

Readers yield raw records (bytes) so the expensive part (UTF-8 + JSON decode, tokenization) can
run in worker processes; `decode_record` turns one record into a document or a skip reason.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".jsonl", ".jsonl.zst", ".json.zst", ".txt")
TXT_MODES = ("file", "paragraph", "line")


@dataclass(frozen=True)
class TextRecord:
    """One raw document as read from disk, not yet decoded."""

    data: bytes  # a JSONL line or the bytes of a .txt document
    is_json: bool  # True: `data` is a JSON object with a `text` field
    field: str = "text"  # the JSON field holding the document


def text_kind(path: Path) -> str:
    """'jsonl', 'jsonl.zst' or 'txt' for a text input path; UserError for anything else."""
    name = path.name.lower()
    if name.endswith(".jsonl.zst") or name.endswith(".json.zst"):
        return "jsonl.zst"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    raise UserError(
        f"text input {path}: unsupported file type; use .jsonl (a `text` field per line), .jsonl.zst or .txt"
    )


def open_lines(path: Path) -> Iterator[bytes]:
    """Lines (bytes, without the newline) of a plain or zstd-compressed file, streamed."""
    if path.name.lower().endswith(".zst"):
        import zstandard

        with open(path, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            for line in io.BufferedReader(reader, buffer_size=1 << 20):
                yield line.rstrip(b"\r\n")
    else:
        with open(path, "rb") as f:
            for line in f:
                yield line.rstrip(b"\r\n")


def validate_text_input(path: Path, field: str = "text") -> str:
    """Check a whole input before any shard is written; return its kind. Raises UserError."""
    if not path.is_file():
        raise UserError(f"text input {path}: no such file")
    kind = text_kind(path)
    if kind == "txt":
        return kind
    try:
        first = next((line for line in open_lines(path) if line.strip()), None)
    except Exception as e:  # zstd frame errors, I/O errors
        raise UserError(f"text input {path}: cannot be read as {kind} ({e})") from e
    if first is None:
        return kind  # an empty file is allowed: it simply has no documents
    try:
        obj = json.loads(first)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(
            f"text input {path}: the first line is not JSON ({e}); expected JSONL with a `{field}` field"
        ) from e
    if not isinstance(obj, dict) or field not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(
            f"text input {path}: the first record has no `{field}` field (found {keys}); pass --text-field"
        )
    return kind


def iter_text_records(path: Path, txt_mode: str = "file", field: str = "text") -> Iterator[TextRecord]:
    """Raw documents of one input file, in file order."""
    kind = text_kind(path)
    if kind == "txt":
        data = path.read_bytes()
        if txt_mode == "file":
            yield TextRecord(data, False)
        elif txt_mode == "line":
            for line in data.splitlines():
                yield TextRecord(line, False)
        else:  # paragraph: blank-line separated
            for para in data.replace(b"\r\n", b"\n").split(b"\n\n"):
                yield TextRecord(para, False)
        return
    for line in open_lines(path):
        if line.strip():
            yield TextRecord(line, True, field)


def decode_record(rec: TextRecord) -> tuple[str | None, str | None]:
    """(document text, None) or (None, skip reason)."""
    try:
        text = rec.data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "non_utf8"
    if rec.is_json:
        try:
            obj = json.loads(text)
        except ValueError:
            return None, "bad_json_line"
        if not isinstance(obj, dict) or rec.field not in obj:
            return None, "missing_text_field"
        text = obj[rec.field]
        if not isinstance(text, str):
            return None, "missing_text_field"
    if not text.strip():
        return None, "empty_document"
    return text, None
