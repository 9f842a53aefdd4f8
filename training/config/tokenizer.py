"""The run's tokenizer, read once per process (config resolution, validation, the trainer and the
checks all ask for it): `data_prep.tokenizer.load_tokenizer` memoized by path and file times."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from data_prep.tokenizer import MODEL_FILE, Tokenizer, load_tokenizer


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple[int, int]) -> Tokenizer:
    return load_tokenizer(path)


def run_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer in `directory` (UserError naming the dir and the fix when missing or corrupt)."""
    d = Path(directory).resolve()
    try:
        stamp = ((d / MODEL_FILE).stat().st_mtime_ns, (d / "tokenizer.json").stat().st_mtime_ns)
    except OSError:
        return load_tokenizer(d)  # raises the UserError that names what is missing
    return _load(str(d), stamp)
