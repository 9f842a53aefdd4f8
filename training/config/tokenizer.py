"""The run's tokenizer, read once per process (config resolution, validation, the trainer and the
checks all ask for it): `data_prep.tokenizer.load_tokenizer` memoized by path and file times."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from data_prep.tokenizer import Tokenizer, load_tokenizer


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple) -> Tokenizer:
    return load_tokenizer(path)


def run_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer in `directory` (UserError naming the dir and the fix when missing or corrupt)."""
    d = Path(directory).resolve()
    try:  # every file of the folder: sentencepiece's tokenizer.model or an imported vocabulary's files
        stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in d.iterdir() if f.is_file()))
    except OSError:
        return load_tokenizer(d)  # raises the UserError that names what is missing
    if "tokenizer.json" not in {name for name, _ in stamp}:
        return load_tokenizer(d)
    return _load(str(d), stamp)
