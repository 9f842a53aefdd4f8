"""A docked encoder's Hugging Face vocabulary as the project tokenizer (`data_prep tokenizer --import-hf`).

Source folder (a BERT / ELECTRA / RoBERTa checkpoint's tokenizer files):
  hf-wordpiece  vocab.txt (one piece per line; the line number is the embedding row)
  hf-bpe        vocab.json ({piece: row}) + merges.txt
  optional      tokenizer_config.json / special_tokens_map.json: do_lower_case, strip_accents,
                tokenize_chinese_chars, clean_up_tokenization_spaces (WordPiece), add_prefix_space
                (BPE), and the unk/pad/cls/sep token spellings (special_tokens_map.json wins, as in
                transformers). added_tokens.json is not read (a warning says so).

Project ids: the seven project special tokens at 0-6 (common/special_tokens.py), the source's own
special tokens folded into them (pad -> <pad>, cls -> <s>, sep -> </s>, unk -> <unk>; <image>
</image> </d> are new), then every other source piece in row order. `project_to_source[i]` is the
embedding row of project id i in the source checkpoint, -1 for a token the source lacks.

Output folder: copies of the vocabulary files + tokenizer.json with `source_vocab` = {kind, path,
files (sha256 of each), options (what changes the tokenization), source_rows, project_to_source}.
`sha256` is the sha256 of `tokenization_manifest()`: the model type, each file's sha256 and the
options, as canonical JSON; so changing a file or an option gives another tokenizer.

The project tokenizer recognizes `<image>` `</image>` `</d>` in text as single tokens (as the
sentencepiece path does with its user-defined symbols); every other special spelling, the project's
(<s>, <pad>, ...) or the source's ([CLS], [MASK], <mask>, ...), is plain text. Decoding drops
<pad> <s> </s> (sentencepiece's control symbols decode to nothing too) and spells <unk>, <image>,
</image>, </d> out.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common import special_tokens as st
from common.errors import UserError
from data_prep.bytelevel_bpe import ByteLevelBPE, parse_merges
from data_prep.wordpiece import WordPiece

log = logging.getLogger(__name__)

WORDPIECE, BPE = "hf-wordpiece", "hf-bpe"
MODEL_TYPES = {WORDPIECE: "wordpiece", BPE: "bpe-bytelevel"}
KIND_OF_MODEL_TYPE = {v: k for k, v in MODEL_TYPES.items()}
FILES = {WORDPIECE: ("vocab.txt",), BPE: ("vocab.json", "merges.txt")}
HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # later files win
MANIFEST_FORMAT = "metalm-hf-vocab/1"  # part of the sha256: a changed id layout gets new hashes

# transformers' defaults (BertTokenizer / RobertaTokenizer) and the tokenizer_config.json keys read.
DEFAULT_OPTIONS = {
    WORDPIECE: {
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "clean_up_tokenization_spaces": True,
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
    },
    BPE: {
        "add_prefix_space": False,
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "sep_token": "</s>",
    },
}
SPECIAL_OPTION = {st.PAD: "pad_token", st.BOS: "cls_token", st.EOS: "sep_token", st.UNK: "unk_token"}
KNOWN_CLASSES = {
    WORDPIECE: ("BertTokenizer", "ElectraTokenizer", "DistilBertTokenizer"),
    BPE: ("RobertaTokenizer", "GPT2Tokenizer", "BartTokenizer", "LongformerTokenizer"),
}
# Project tokens recognized inside text (sentencepiece's user-defined symbols); decode spells them out
# as they are, outside the WordPiece / byte-level text around them. <unk> decodes like a source piece.
IN_TEXT = tuple(st.USER_DEFINED_SYMBOLS)
LITERALS = frozenset(IN_TEXT)
DROPPED_IDS = frozenset((st.PAD_ID, st.BOS_ID, st.EOS_ID))
_IN_TEXT_RE = re.compile("(" + "|".join(map(re.escape, IN_TEXT)) + ")")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class SourceVocab:
    """A parsed source vocabulary: what `import` writes and `load` rebuilds the tokenizer from."""

    kind: str
    files: dict[str, bytes]  # file name -> bytes, in FILES[kind] order
    options: dict  # DEFAULT_OPTIONS[kind] keys, with the source's values
    entries: list[tuple[str, int]]  # (piece, embedding row), in file order
    merges: list[tuple[str, str]] | None = None  # BPE only

    @property
    def model_type(self) -> str:
        return MODEL_TYPES[self.kind]

    def sha256(self) -> str:
        return _sha256(tokenization_manifest(self.model_type, self.files, self.options))

    def layout(self) -> tuple[list[str], list[int], dict[str, int]]:
        """(piece of each project id, project_to_source, piece -> project id for encoding)."""
        row_of = dict(self.entries)  # a repeated piece resolves to its last row, as in transformers
        specials: dict[tuple[str, int], int] = {}
        pieces = list(st.SPECIAL_TOKENS)
        project_to_source = [-1] * len(pieces)
        for project_piece, option in SPECIAL_OPTION.items():
            src = self.options[option]
            if src in row_of and (src, row_of[src]) not in specials:
                pid = st.SPECIAL_TOKENS[project_piece]
                specials[(src, row_of[src])] = pid
                project_to_source[pid] = row_of[src]
        encode_vocab = {src: pid for (src, _), pid in specials.items()}
        for piece, row in sorted(self.entries, key=lambda e: e[1]):  # stable: ties keep file order
            if (piece, row) in specials:
                continue
            if row_of[piece] == row:
                encode_vocab[piece] = len(pieces)
            pieces.append(piece)
            project_to_source.append(row)
        return pieces, project_to_source, encode_vocab


def tokenization_manifest(model_type: str, files: dict[str, bytes], options: dict) -> bytes:
    """What the tokenizer sha256 is computed over (canonical JSON)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_type": model_type,
        "files": {name: _sha256(data) for name, data in files.items()},
        "options": options,
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {what} is not valid UTF-8 JSON ({e})") from e


def _options(kind: str, src: Path) -> dict:
    options = dict(DEFAULT_OPTIONS[kind])
    for name in HF_CONFIG_FILES:
        path = src / name
        if not path.is_file():
            continue
        cfg = _read_json(path, name)
        if not isinstance(cfg, dict):
            raise UserError(f"{path}: expected a JSON object")
        cls = cfg.get("tokenizer_class")
        if isinstance(cls, str) and cls.removesuffix("Fast") not in KNOWN_CLASSES[kind]:
            raise UserError(
                f"{path}: tokenizer_class {cls} is not one this importer reproduces "
                f"({', '.join(KNOWN_CLASSES[kind])}); its tokenization may differ, so it is refused"
            )
        if cfg.get("do_basic_tokenize") is False:
            raise UserError(f"{path}: do_basic_tokenize=false is not supported (BERT's basic tokenizer is)")
        for key in DEFAULT_OPTIONS[kind]:
            if key not in cfg:
                continue
            value = cfg[key]
            if key.endswith("_token"):
                value = _token_text(value)
                if value is None and cfg[key] is not None:
                    raise UserError(f"{path}: {key}={cfg[key]!r}: expected a string")
            elif not (isinstance(value, bool) or (key == "strip_accents" and value is None)):
                raise UserError(f"{path}: {key}={value!r}: expected true or false")
            options[key] = value
    added = src / "added_tokens.json"
    if added.is_file():
        log.warning(
            "%s: not read; tokens added after pretraining are not part of the project vocabulary", added
        )
    return options


def detect_kind(src: Path) -> str:
    """hf-wordpiece or hf-bpe from the files present; UserError naming the folder and what it needs."""
    expected = (
        "vocab.txt (BERT / ELECTRA WordPiece) or vocab.json + merges.txt (RoBERTa byte-level BPE), "
        "optionally with tokenizer_config.json"
    )
    if not src.is_dir():
        raise UserError(f"--import-hf {src}: no such folder; expected a folder with {expected}")
    has = {name: (src / name).is_file() for name in ("vocab.txt", "vocab.json", "merges.txt")}
    if has["vocab.txt"] and has["vocab.json"]:
        raise UserError(f"--import-hf {src}: holds both vocab.txt and vocab.json; keep only the encoder's")
    if has["vocab.txt"]:
        return WORDPIECE
    if has["vocab.json"] and has["merges.txt"]:
        return BPE
    if has["vocab.json"]:
        raise UserError(f"--import-hf {src}: has vocab.json but no merges.txt; expected {expected}")
    hint = ""
    if (src / "tokenizer.json").is_file():
        hint = (
            " (it has only a fast-tokenizer tokenizer.json: write the vocabulary files with "
            "`AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR, legacy_format=True)`)"
        )
    raise UserError(f"--import-hf {src}: no vocabulary files; expected {expected}{hint}")


def _parse(kind: str, files: dict[str, bytes], options: dict, where: str) -> SourceVocab:
    """SourceVocab from file bytes; UserError naming `where` for malformed files."""
    if kind == WORDPIECE:
        try:
            lines = io.TextIOWrapper(io.BytesIO(files["vocab.txt"]), encoding="utf-8").readlines()
        except UnicodeDecodeError as e:
            raise UserError(f"{where}/vocab.txt is not UTF-8 ({e})") from e
        entries = [(line.rstrip("\n"), row) for row, line in enumerate(lines)]
        vocab = SourceVocab(kind, files, options, entries)
    else:
        try:
            table = json.loads(files["vocab.json"].decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{where}/vocab.json is not valid UTF-8 JSON ({e})") from e
        if not isinstance(table, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in table.values()
        ):
            raise UserError(f"{where}/vocab.json: expected an object {{piece: row}} with rows >= 0")
        try:
            merges = parse_merges(files["merges.txt"].decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{where}/merges.txt: {e}") from e
        vocab = SourceVocab(kind, files, options, list(table.items()), merges)
    if not vocab.entries:
        raise UserError(f"{where}: the vocabulary is empty")
    return vocab


def read_source(src: Path) -> SourceVocab:
    """Read and check a Hugging Face tokenizer folder (`--import-hf DIR`)."""
    kind = detect_kind(src)
    options = _options(kind, src)
    files = {name: (src / name).read_bytes() for name in FILES[kind]}
    return _parse(kind, files, options, str(src))


def source_vocab_meta(vocab: SourceVocab, src: Path) -> dict:
    """tokenizer.json's `source_vocab` (keys kind, path, project_to_source are a contract with the
    encoder-weight loader)."""
    _, project_to_source, _ = vocab.layout()
    return {
        "kind": vocab.kind,
        "path": str(src.absolute()),
        "files": {name: _sha256(data) for name, data in vocab.files.items()},
        "options": vocab.options,
        "source_rows": 1 + max(row for _, row in vocab.entries),
        "project_to_source": project_to_source,
    }


class HfVocabTokenizer:
    """Encode/decode with an imported vocabulary: project special tokens + WordPiece or byte-level BPE."""

    def __init__(self, vocab: SourceVocab):
        self.kind = vocab.kind
        self.pieces, self.project_to_source, encode_vocab = vocab.layout()
        opts = vocab.options
        if vocab.kind == WORDPIECE:
            self.backend: WordPiece | ByteLevelBPE = WordPiece(
                encode_vocab,
                st.UNK_ID,
                do_lower_case=opts["do_lower_case"],
                strip_accents=opts["strip_accents"],
                tokenize_chinese_chars=opts["tokenize_chinese_chars"],
                clean_up_tokenization_spaces=opts["clean_up_tokenization_spaces"],
            )
        else:
            self.backend = ByteLevelBPE(
                encode_vocab, vocab.merges or [], st.UNK_ID, add_prefix_space=opts["add_prefix_space"]
            )

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        text = self.backend.prepare(text)
        if "<" not in text:
            return self.backend.encode(text)
        ids: list[int] = []
        for n, part in enumerate(_IN_TEXT_RE.split(text)):
            if n % 2:
                ids.append(st.SPECIAL_TOKENS[part])
            elif part:
                ids.extend(self.backend.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        pieces, n = self.pieces, len(self.pieces)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{n - 1})")
            if i not in DROPPED_IDS:
                out.append(pieces[i])
        return self.backend.decode(out, LITERALS)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]


def load(directory: Path, meta: dict, fix: str) -> tuple[HfVocabTokenizer, str]:
    """(tokenizer, sha256) from a folder written by `--import-hf`; UserError naming the dir and `fix`."""
    d = directory
    src = meta.get("source_vocab")
    kind = KIND_OF_MODEL_TYPE[meta["model_type"]]
    if not isinstance(src, dict) or src.get("kind") != kind or not isinstance(src.get("options"), dict):
        raise UserError(f"tokenizer dir {d}: tokenizer.json has no valid source_vocab for {kind}; {fix}")
    missing = [name for name in FILES[kind] if not (d / name).is_file()]
    if missing:
        raise UserError(f"tokenizer dir {d}: missing {', '.join(missing)}; {fix}")
    files = {name: (d / name).read_bytes() for name in FILES[kind]}
    options = {**DEFAULT_OPTIONS[kind], **src["options"]}
    sha = _sha256(tokenization_manifest(MODEL_TYPES[kind], files, options))
    if meta.get("sha256") != sha:
        raise UserError(
            f"tokenizer dir {d}: {' / '.join(FILES[kind])} or the options do not match the sha256 in "
            f"tokenizer.json (a file was replaced or corrupted); {fix}"
        )
    tok = HfVocabTokenizer(_parse(kind, files, options, str(d)))
    if src.get("project_to_source") != tok.project_to_source or meta.get("vocab_size") != tok.vocab_size:
        raise UserError(
            f"tokenizer dir {d}: vocab_size / source_vocab.project_to_source in tokenizer.json do not "
            f"match the vocabulary files (edited, or written by another version); {fix}"
        )
    recorded = meta.get("unicode_version")
    if recorded and recorded != unicodedata.unidata_version:
        log.warning(
            "tokenizer dir %s was imported under Unicode %s, this Python has %s: characters assigned "
            "in between may tokenize differently",
            d,
            recorded,
            unicodedata.unidata_version,
        )
    return tok, sha
