"""The project tokenizer: a trained sentencepiece model, or a docked encoder's imported vocabulary.

Two ways to make one (`python -m data_prep tokenizer`):
- `--input FILE... --vocab-size N`: train sentencepiece (unigram or BPE). The dir holds
  `tokenizer.model` and `tokenizer.json` {"vocab_size", "sha256" (of tokenizer.model),
  "special_tokens" {piece: id}, "model_type" (unigram|bpe)}. pad/bos/eos/unk use sentencepiece's own
  id options, `<image>` `</image>` `</d>` are user-defined symbols at ids 4, 5, 6.
- `--import-hf DIR`: adopt the vocabulary of the pretrained language encoder that MetaLM docks
  (BERT / ELECTRA WordPiece `vocab.txt`, RoBERTa byte-level BPE `vocab.json` + `merges.txt`). The
  encoder's word embeddings only make sense for its own vocabulary, so decoder tokens and encoder
  spans share it: one tokenizer for the whole model. The dir holds copies of those files and
  `tokenizer.json` with model_type `wordpiece` | `bpe-bytelevel`, `sha256` (of the files and the
  options that define the tokenization) and `source_vocab` {"kind": "hf-wordpiece" | "hf-bpe",
  "path", "project_to_source": the source embedding row of each project id, -1 for a token the
  source lacks (the encoder-weight loader permutes embedding rows with it), ...}. The special tokens
  keep ids 0-6; the source's [PAD]/[CLS]/[SEP]/[UNK] (<pad> <s> </s> <unk>) become them. Encoding and
  decoding reimplement transformers' BertTokenizer / RobertaTokenizer without `transformers` or
  `tokenizers` (data_prep/wordpiece.py, data_prep/bytelevel_bpe.py, data_prep/hf_vocab.py, which
  document the small, deliberate differences).

Consequences of the choice: a decoder trained with one tokenizer cannot be combined with an encoder
(or checkpoint) of another; shards record the tokenizer sha256, and training refuses shards built with
another tokenizer, so shards built before an import must be rebuilt.

Either kind, `Tokenizer` offers encode / encode_batch / decode / vocab_size / summary / sha256 /
id_to_piece. Replacing a dir's tokenizer by a different one needs --force; an identical one is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from common import special_tokens as st
from common.errors import UserError
from data_prep import hf_vocab

log = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"
MODEL_TYPES = ("unigram", "bpe")
MAX_SENTENCE_CHARS = 4000  # sentencepiece drops longer sentences; longer lines are cut into pieces


class Tokenizer:
    """A loaded, checked tokenizer: `.sp` (SentencePieceProcessor) or `.hf` (an imported vocabulary)."""

    def __init__(
        self,
        sp: spm.SentencePieceProcessor | None,
        sha256: str,
        model_type: str,
        path: Path | None = None,
        hf: hf_vocab.HfVocabTokenizer | None = None,
        source_vocab: dict | None = None,
    ):
        self.sp = sp
        self.hf = hf
        self.sha256 = sha256
        self.model_type = model_type
        self.path = path
        self.source_vocab = source_vocab  # tokenizer.json's source_vocab (imported kinds), else None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.hf is None else self.hf.vocab_size

    def encode(self, text: str) -> list[int]:
        if self.hf is None:
            return self.sp.encode(text)
        return self.hf.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.hf is None:
            return self.sp.encode(texts, num_threads=1)  # parallelism comes from --workers processes
        return [self.hf.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        if self.hf is None:
            return self.sp.decode([int(i) for i in ids])
        return self.hf.decode(ids)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i)) if self.hf is None else self.hf.id_to_piece(int(i))

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


def _read_meta(meta_path: Path, d: Path, fix: str) -> dict:
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"tokenizer dir {d}: {META_FILE} is not valid JSON ({e}); {fix}") from e
    return meta if isinstance(meta, dict) else {}


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load the tokenizer in `directory` (either kind); UserError naming the dir if missing/corrupt."""
    d = Path(directory)
    fix = f"build it with `python -m data_prep tokenizer --input ... --output {d}`"
    model_path, meta_path = d / MODEL_FILE, d / META_FILE
    meta = _read_meta(meta_path, d, fix) if meta_path.is_file() else None
    if meta is not None and meta.get("model_type") in hf_vocab.KIND_OF_MODEL_TYPE:
        src = meta.get("source_vocab")
        origin = src.get("path") if isinstance(src, dict) else None
        fix = f"re-import it with `python -m data_prep tokenizer --import-hf {origin or 'DIR'} --output {d} --force`"
        hf, sha = hf_vocab.load(d, meta, fix)
        return Tokenizer(None, sha, meta["model_type"], d, hf=hf, source_vocab=src)
    if not model_path.is_file() or meta is None:
        hint = ""
        if meta is not None and "model" in meta and "sha256" not in meta:
            hint = " (its tokenizer.json is a Hugging Face one: import that folder with --import-hf)"
        raise UserError(f"tokenizer dir {d}: missing {MODEL_FILE} or {META_FILE}{hint}; {fix}")
    data = model_path.read_bytes()
    sha = _sha256(data)
    if meta.get("sha256") != sha:
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


def _existing_tokenizer(out: Path) -> tuple[str | None, str | None]:
    """(sha256, model_type) of the tokenizer already in `out`, (None, None) if there is none."""
    meta_path = out / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError):
            meta = None
        if isinstance(meta, dict) and isinstance(meta.get("sha256"), str):
            return meta["sha256"], meta.get("model_type")
    if (out / MODEL_FILE).is_file():
        return _sha256((out / MODEL_FILE).read_bytes()), None
    return None, None


def _refuse_different(out: Path, sha: str, force: bool) -> str | None:
    """The existing tokenizer's model_type; UserError if `out` holds a different one and not `force`."""
    old_sha, old_type = _existing_tokenizer(out)
    if old_sha is not None and old_sha != sha and not force:
        raise UserError(
            f"tokenizer dir {out}: holds a different tokenizer (sha256 {old_sha[:12]}..., new "
            f"{sha[:12]}...); shards built with it would no longer match. Pass --force to replace it"
        )
    return old_type


def _write_files(out: Path, files: dict[str, bytes], stale: Iterable[str] = ()) -> None:
    """Write each file atomically (tokenizer.json last: it names what the others must be)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out / name).unlink(missing_ok=True)
    for name, data in sorted(files.items(), key=lambda kv: kv[0] == META_FILE):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)


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
    old_type = _refuse_different(out, sha, force)
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
    stale = (
        hf_vocab.FILES[hf_vocab.KIND_OF_MODEL_TYPE[old_type]]
        if old_type in hf_vocab.KIND_OF_MODEL_TYPE
        else ()
    )
    _write_files(out, {MODEL_FILE: model, META_FILE: (json.dumps(meta, indent=2) + "\n").encode()}, stale)
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


def _meta_json(meta: dict) -> bytes:
    """tokenizer.json text: indented, with the long project_to_source list on one line."""
    src = meta["source_vocab"]
    placeholder = "@@PROJECT_TO_SOURCE@@"
    text = json.dumps({**meta, "source_vocab": {**src, "project_to_source": placeholder}}, indent=2)
    ids = json.dumps(src["project_to_source"], separators=(",", ":"))
    return (text.replace(json.dumps(placeholder), ids, 1) + "\n").encode()


def import_hf_tokenizer(source: Path, output: Path, force: bool = False) -> Tokenizer:
    """`python -m data_prep tokenizer --import-hf DIR`: adopt a Hugging Face encoder's vocabulary.

    Re-importing the same files and options into `output` changes nothing; a different tokenizer
    there needs `force`."""
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise UserError(
            f"--output {output} is the --import-hf folder itself; write the project tokenizer to another folder"
        )
    vocab = hf_vocab.read_source(source)
    sha = vocab.sha256()
    src_meta = hf_vocab.source_vocab_meta(vocab, source)
    meta = {
        "vocab_size": len(src_meta["project_to_source"]),
        "sha256": sha,
        "special_tokens": dict(st.SPECIAL_TOKENS),
        "model_type": vocab.model_type,
        "unicode_version": unicodedata.unidata_version,
        "source_vocab": src_meta,
    }
    files = {**vocab.files, META_FILE: _meta_json(meta)}
    old_type = _refuse_different(output, sha, force)
    unchanged = all(
        (output / name).is_file() and (output / name).read_bytes() == data for name, data in files.items()
    )
    if unchanged:
        log.info("tokenizer dir %s already holds this tokenizer (sha256 %s...): unchanged", output, sha[:12])
    else:
        stale = [MODEL_FILE] if old_type not in hf_vocab.KIND_OF_MODEL_TYPE else []
        stale += [name for kind in hf_vocab.FILES for name in hf_vocab.FILES[kind] if name not in vocab.files]
        _write_files(output, files, stale)
    tok = load_tokenizer(output)
    mapped = sum(1 for r in src_meta["project_to_source"][: len(st.SPECIAL_TOKENS)] if r >= 0)
    log.info(
        "tokenizer: imported %s vocabulary of %s (%d pieces; %d of %d special tokens mapped, rest new), "
        "vocab %d, sha256 %s... -> %s",
        vocab.kind,
        source,
        len(vocab.entries),
        mapped,
        len(st.SPECIAL_TOKENS),
        tok.vocab_size,
        sha[:12],
        output,
    )
    return tok
