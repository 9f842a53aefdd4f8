"""The sentencepiece tokenizer: training with fixed special ids, and loading with checks.

A tokenizer dir holds `tokenizer.model` (sentencepiece) and `tokenizer.json`:
`{"vocab_size", "sha256" (of tokenizer.model), "special_tokens" {piece: id}, "model_type"}`.
Special ids are those of `common/special_tokens.py`: pad/bos/eos/unk via sentencepiece's own id
options, `<image>` `</image>` `</d>` as user-defined symbols at ids 4, 5, 6.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from common import special_tokens as st
from common.errors import UserError

log = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"
MODEL_TYPES = ("unigram", "bpe")
MAX_SENTENCE_CHARS = 4000  # sentencepiece drops longer sentences; longer lines are cut into pieces


class Tokenizer:
    """A loaded, checked tokenizer. `.sp` is the SentencePieceProcessor."""

    def __init__(
        self, sp: spm.SentencePieceProcessor, sha256: str, model_type: str, path: Path | None = None
    ):
        self.sp = sp
        self.sha256 = sha256
        self.model_type = model_type
        self.path = path

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=1)  # parallelism comes from --workers processes

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def summary(self) -> dict:
        """What shard stats record to tie shards to this tokenizer."""
        return {"vocab_size": self.vocab_size, "sha256": self.sha256}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_special_ids(sp: spm.SentencePieceProcessor) -> list[str]:
    problems = []
    for piece, want in st.SPECIAL_TOKENS.items():
        got = sp.piece_to_id(piece)
        if got != want:
            problems.append(f"special token {piece} has id {got}, expected {want}")
    return problems


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load `directory/tokenizer.model` + `tokenizer.json`; UserError naming the dir if missing/corrupt."""
    d = Path(directory)
    fix = f"build it with `python -m data_prep tokenizer --input ... --output {d}`"
    model_path, meta_path = d / MODEL_FILE, d / META_FILE
    if not model_path.is_file() or not meta_path.is_file():
        raise UserError(f"tokenizer dir {d}: missing {MODEL_FILE} or {META_FILE}; {fix}")
    data = model_path.read_bytes()
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"tokenizer dir {d}: {META_FILE} is not valid JSON ({e}); {fix}") from e
    sha = _sha256(data)
    if not isinstance(meta, dict) or meta.get("sha256") != sha:
        raise UserError(
            f"tokenizer dir {d}: {MODEL_FILE} does not match the sha256 in {META_FILE} "
            f"(the model file was replaced or corrupted); {fix}"
        )
    sp = spm.SentencePieceProcessor()
    try:
        sp.load_from_serialized_proto(data)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError for a bad proto
        raise UserError(f"tokenizer dir {d}: {MODEL_FILE} is not a sentencepiece model ({e}); {fix}") from e
    problems = _check_special_ids(sp)
    if problems:
        raise UserError(
            [f"tokenizer dir {d}: {p}; retrain it with `python -m data_prep tokenizer`" for p in problems]
        )
    return Tokenizer(sp, sha, meta.get("model_type", "unknown"), d)


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Lines of the training texts, long lines cut, blank lines dropped."""
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            while line:
                yield line[:MAX_SENTENCE_CHARS]
                line = line[MAX_SENTENCE_CHARS:]


def train_tokenizer_model(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    max_sentences: int = 2_000_000,
    num_threads: int = 1,
) -> bytes:
    """Train a sentencepiece model and return its serialized bytes (deterministic for the same input)."""
    if model_type not in MODEL_TYPES:
        raise UserError(f"--model-type {model_type}: use one of {', '.join(MODEL_TYPES)}")
    min_vocab = len(st.SPECIAL_TOKENS) + 1
    if vocab_size <= min_vocab:
        raise UserError(f"--vocab-size {vocab_size}: must be more than {min_vocab}")
    sentences = _sentences(texts)
    first = next(sentences, None)
    if first is None:
        raise UserError("tokenizer: the inputs hold no text to train on")

    def all_sentences() -> Iterator[str]:
        yield first
        yield from sentences

    writer = _BytesWriter()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=all_sentences(),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            pad_id=st.PAD_ID,
            bos_id=st.BOS_ID,
            eos_id=st.EOS_ID,
            unk_id=st.UNK_ID,
            pad_piece=st.PAD,
            bos_piece=st.BOS,
            eos_piece=st.EOS,
            unk_piece=st.UNK,
            user_defined_symbols=st.USER_DEFINED_SYMBOLS,
            hard_vocab_limit=False,  # a small corpus gives a smaller vocab instead of failing
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise UserError(f"tokenizer: sentencepiece training failed: {e}") from e
    return writer.getvalue()


class _BytesWriter:
    def __init__(self):
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def write_tokenizer(
    model: bytes, output: str | os.PathLike, model_type: str, force: bool = False, extra: dict | None = None
) -> Tokenizer:
    """Write `model` into `output`; refuses to replace a *different* tokenizer unless `force`."""
    out = Path(output)
    sha = _sha256(model)
    existing = out / MODEL_FILE
    if existing.is_file():
        old_sha = _sha256(existing.read_bytes())
        if old_sha != sha and not force:
            raise UserError(
                f"tokenizer dir {out}: holds a different tokenizer (sha256 {old_sha[:12]}..., new "
                f"{sha[:12]}...); shards built with it would no longer match. Pass --force to replace it"
            )
    sp = spm.SentencePieceProcessor()
    sp.load_from_serialized_proto(model)
    problems = _check_special_ids(sp)
    if problems:  # cannot happen with train_tokenizer_model; guards a changed sentencepiece
        raise RuntimeError(f"trained tokenizer has wrong special ids: {problems}")
    meta = {
        "vocab_size": sp.get_piece_size(),
        "sha256": sha,
        "special_tokens": dict(st.SPECIAL_TOKENS),
        "model_type": model_type,
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in ((MODEL_FILE, model), (META_FILE, (json.dumps(meta, indent=2) + "\n").encode())):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)
    return Tokenizer(sp, sha, model_type, out)


def training_texts(inputs: list[Path], problems: list[str]) -> Iterator[str]:
    """Texts to train on from text corpora (.txt/.jsonl/.jsonl.zst: `text`, else `caption`) and the
    captions of pair sources (webdataset tars or folders of them, COCO JSON, CSV manifests).
    Whole-input problems are appended to `problems` while validating, before anything is read."""
    from data_prep.pair_readers import open_pair_sources
    from data_prep.text_sources import iter_text_records, text_kind

    plan = []
    for path in inputs:
        name = path.name.lower()
        if not path.exists():
            problems.append(f"tokenizer input {path}: no such file")
        elif path.is_file() and name.endswith((".txt", ".jsonl", ".jsonl.zst", ".json.zst")):
            plan.append(("text", path))
        else:
            try:
                plan.extend(("pairs", r) for r in open_pair_sources([path]))
            except UserError as e:
                problems.append(str(e))

    def generate() -> Iterator[str]:
        for kind, item in plan:
            if kind == "pairs":
                yield from item.captions()
                continue
            for rec in iter_text_records(item, "line" if text_kind(item) == "txt" else "file"):
                try:
                    text = rec.data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if rec.is_json:
                    try:
                        obj = json.loads(text)
                    except ValueError:
                        continue
                    text = obj.get("text", obj.get("caption")) if isinstance(obj, dict) else None
                if isinstance(text, str):
                    yield text

    return generate()


def build_tokenizer(
    inputs: list[Path],
    output: Path,
    vocab_size: int,
    model_type: str = "unigram",
    force: bool = False,
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    max_sentences: int = 2_000_000,
    num_threads: int = 1,
) -> Tokenizer:
    """`python -m data_prep tokenizer`: train from text files and/or pair captions, then write."""
    problems: list[str] = []
    if not inputs:
        problems.append("tokenizer: no --input given")
    texts = training_texts(inputs, problems)
    if problems:
        raise UserError(problems)
    existing = output / MODEL_FILE
    if existing.is_file() and not force:
        log.info("tokenizer dir %s exists: will keep it if the retrained model is identical", output)
    model = train_tokenizer_model(
        texts, vocab_size, model_type, character_coverage, byte_fallback, max_sentences, num_threads
    )
    tok = write_tokenizer(
        model,
        output,
        model_type,
        force,
        extra={
            "inputs": [str(p) for p in inputs],
            "byte_fallback": byte_fallback,
            "character_coverage": character_coverage,
            "requested_vocab_size": vocab_size,
        },
    )
    log.info(
        "tokenizer: %s model, vocab %d, sha256 %s... -> %s",
        model_type,
        tok.vocab_size,
        tok.sha256[:12],
        output,
    )
    return tok
