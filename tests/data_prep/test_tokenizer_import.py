"""`data_prep tokenizer --import-hf`: a Hugging Face encoder vocabulary as the project tokenizer.

Parity tests compare against transformers' slow BertTokenizer / RobertaTokenizer (test-only; they are
installed with mosaicml-streaming's dependencies) on small vocabularies built here.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from common import special_tokens as st
from common.errors import UserError
from data_prep.bytelevel_bpe import bytes_to_unicode, pretokenize
from data_prep.cli import main
from data_prep.tokenizer import META_FILE, MODEL_FILE, build_tokenizer, import_hf_tokenizer, load_tokenizer

HF_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>")

WORDS = (
    "the a of and to in is it red blue green circle square large small top left right bottom center dog "
    "cat play run hello world photo man woman on with two three people street"
).split()
PIECES = "##ing ##ed ##s ##er ##ly ##es un ##aff ##able ##ning ##ness re ##d ##t ##n don 19 ##99 20".split()
EXTRA_CHARS = list("éèêëñüçøåßàáâäíóúαβγδσςοφιπλμдимрв中文日本の한ÉΣΟΦΙΑ")
EXTRA_CHARS += ["##" + c for c in EXTRA_CHARS]

FRAGMENTS = [
    *WORDS,
    *(w.capitalize() for w in WORDS[:12]),
    "RED",
    "Circle",
    "unaffable",
    "Unaffable",
    "playing",
    "played",
    "players",
    "running",
    "zyxq",
    "qwertyuiop",
    "Überraschung",
    "naïve",
    "Straße",
    "café",
    "CAFÉ",
    "ΣΟΦΙΑΣ",
    "Ὀδυσσεύς",
    "σοφία",
    "мир",
    "Привет",
    "中文字",
    "日本語",
    "한국어",
    "ひらがな",
    "😀",
    "👍🏽",
    "x\u0301",
    "e\u0301te\u0301",
    "ﬁne",
    "①",
    "½",
    "x²",
    "٣٤",
    "१२",
    "İstanbul",
    "ǅemal",
    "ﬀ",
    "...",
    "!?",
    "—",
    "–",
    "“quoted”",
    "«guillemets»",
    "¿qué?",
    "§",
    "©",
    "™",
    "$5.00",
    "#hashtag",
    "@user",
    "a/b",
    "C++",
    "e-mail",
    "U.S.A.",
    "don't",
    "DON'T",
    "I'm",
    "we've",
    "they're",
    "it's",
    "'s",
    "O'Neil",
    "'ll",
    "'d",
    "123",
    "3.14",
    "1,000,000",
    "2022-06-14",
    "1999",
    "2022",
    "(parens)",
    "[brackets]",
    "{braces}",
    "<angle>",
    "a" * 120,
    "b" * 99,
    "\u200b",
    "\ufeff",
    "\u200d",
    "\x00",
    "\ufffd",
    "\x07",
    "\x1c",
    "\x85",
    "\u2028",
    "\u2029",
    "\u00ad",
]
SEPARATORS = ["", " ", " ", " ", "  ", "\r\n", " \n ", *"\t\n\u00a0\u3000\u2009\x0b\x0c"]
HANDWRITTEN = [
    "",
    " ",
    "   ",
    "\n\n",
    "large red circle top left",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How's it going?",
    "  leading and trailing spaces  ",
    "multiple   spaces\tand\ttabs\nand newlines",
    "unaffable",
    "UNAFFABLE people playing",
    "Don't stop: it's 3.14 or 1,000,000?",
    "ΣΑΣ σας ΟΔΟΣ",
    "naïve café déjà vu",
    "中文和日本語 mixed with English",
    "emoji 😀👍🏽 and symbols ©™§",
    "x\u0301 e\u0301 (combining accents, not NFC)",
    "control\x00chars\x07in\x1cthe\x7ftext",
    "zero\u200bwidth\ufeffand\u200dso on",
    "ﬁne ﬂowers ①②③ ½ ²",
    "a" * 101,
    "a" * 100,
    "http://example.com/path?q=1&r=2",
    "snake_case and camelCase and kebab-case",
    "tabs\t\t\tonly",
    "trailing newline\n",
    "İstanbul ǅemal",
    "Ὀδυσσεύς Привет мир",
    "1999 2022 19 99",
    "the the the",
]


def _make_strings(seed: int, n: int) -> list[str]:
    """HANDWRITTEN + seeded random concatenations of fragments, separators and random code points."""
    rng = random.Random(seed)
    assigned = [
        cp
        for cp in range(0x20, 0x30000)
        if unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co") and chr(cp) not in "<>[]"
    ]
    out = list(HANDWRITTEN)
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.75:
                parts.append(rng.choice(FRAGMENTS))
            else:
                parts.append("".join(chr(rng.choice(assigned)) for _ in range(rng.randint(1, 4))))
            parts.append(rng.choice(SEPARATORS))
        out.append("".join(parts))
    return [s for s in out if not any(sp in s for sp in (*HF_SPECIALS, *st.SPECIAL_TOKENS))]


STRINGS = _make_strings(0, 400)


# ---------------------------------------------------------------- source vocabularies built here


def _bert_vocab(cased: bool) -> list[str]:
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(5)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127)]
    if not cased:
        chars = [c for c in chars if not c.isupper()]
    vocab += chars
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    if cased:
        vocab += ["##" + c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
        vocab += [w.capitalize() for w in WORDS[:12]] + ["RED"]
    vocab += WORDS + PIECES + EXTRA_CHARS + ["the"]  # a repeated piece: transformers uses its last row
    return vocab


def write_bert(folder: Path, cased: bool = False, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(_bert_vocab(cased)) + "\n", encoding="utf-8")
    cfg = {"do_lower_case": not cased, "tokenizer_class": "BertTokenizer", **(config or {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_roberta(folder: Path, merges: int = 300, config: dict | None = None) -> Path:
    """A tiny byte-level BPE trained here (most frequent pair first); some 4-byte UTF-8 lead bytes are
    left out of vocab.json so emoji hit the unknown token."""
    folder.mkdir(parents=True, exist_ok=True)
    b2u = bytes_to_unicode()
    corpus = HANDWRITTEN + _make_strings(1, 200) + [" ".join(WORDS)] * 5
    words: Counter = Counter()
    for text in corpus:
        for w in re.findall(r" ?\w+| ?[^\w\s]+|\s+", text):
            words[tuple(b2u[b] for b in w.encode("utf-8", "surrogatepass"))] += 1
    ranked: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs: Counter = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        ranked.append(best)
        words = Counter({_merge(w, best): c for w, c in words.items()})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for b in range(256):
        if b not in (0xF0, 0xF1):
            vocab.setdefault(b2u[b], len(vocab))
    for a, b in ranked:
        vocab.setdefault(a + b, len(vocab))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranked), encoding="utf-8"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "RobertaTokenizer", **(config or {})})
    )
    return folder


def _hf_bert(folder: Path, **kw):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(str(folder / "vocab.txt"), **kw)


def _hf_roberta(folder: Path, **kw):
    transformers = pytest.importorskip("transformers")
    return transformers.RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), **kw)


def _mismatches(tok, hf, strings, decode_fix=lambda s: s) -> list[str]:
    p2s = tok.source_vocab["project_to_source"]
    bad = []
    for s in strings:
        want = hf.encode(s, add_special_tokens=False)
        got = tok.encode(s)
        if [p2s[i] for i in got] != want:
            bad.append(f"encode {s!r}: got rows {[p2s[i] for i in got]}, transformers {want}")
            continue
        if tok.decode(got) != decode_fix(hf.decode(want)):
            bad.append(f"decode {s!r}: got {tok.decode(got)!r}, transformers {hf.decode(want)!r}")
    return bad


# ---------------------------------------------------------------- parity with transformers

BERT_CASES = {
    "uncased": (False, {}, {}),
    "cased": (True, {}, {"do_lower_case": False}),
    "uncased-keep-accents": (False, {"strip_accents": False}, {"strip_accents": False}),
    "cased-strip-accents-no-cjk": (
        True,
        {"strip_accents": True, "tokenize_chinese_chars": False},
        {"do_lower_case": False, "strip_accents": True, "tokenize_chinese_chars": False},
    ),
}


@pytest.mark.parametrize("case", list(BERT_CASES))
def test_wordpiece_matches_transformers(case, tmp_path):
    cased, config, hf_kw = BERT_CASES[case]
    src = write_bert(tmp_path / "bert", cased=cased, config=config)
    tok = import_hf_tokenizer(src, tmp_path / "tok")
    hf = _hf_bert(src, **hf_kw)
    assert len(STRINGS) >= 300
    bad = _mismatches(tok, hf, STRINGS, decode_fix=lambda s: s.replace("[UNK]", st.UNK))
    assert not bad, f"{len(bad)} of {len(STRINGS)} differ:\n" + "\n".join(bad[:20])
    # the strings exercise unknown words, continuation pieces and the repeated piece
    ids = [i for s in STRINGS for i in tok.encode(s)]
    assert st.UNK_ID in ids and any(tok.id_to_piece(i).startswith("##") for i in ids)
    assert tok.encode("the") == [max(i for i, p in enumerate(tok.hf.pieces) if p == "the")]


@pytest.mark.parametrize("prefix_space", [False, True])
def test_bytelevel_bpe_matches_transformers(prefix_space, tmp_path):
    src = write_roberta(tmp_path / "roberta", config={"add_prefix_space": prefix_space})
    tok = import_hf_tokenizer(src, tmp_path / "tok")
    hf = _hf_roberta(src, add_prefix_space=prefix_space)
    bad = _mismatches(tok, hf, STRINGS)
    assert not bad, f"{len(bad)} of {len(STRINGS)} differ:\n" + "\n".join(bad[:20])
    unknown = 0
    for s in STRINGS:  # byte-level: lossless whenever no byte is missing from the vocabulary
        ids = tok.encode(s)
        if st.UNK_ID in ids:
            unknown += 1
        else:
            assert tok.decode(ids) == (" " + s if prefix_space and s and not s[0].isspace() else s)
    assert 0 < unknown < len(STRINGS) // 2


def test_decode_of_any_ids_matches_transformers(tmp_path):
    """Arbitrary id sequences (not only encoder output: '##' after <unk>, split UTF-8 bytes) decode as
    transformers decodes their source ids; <s> </s> <pad> are left out (the project drops them), and so
    is the shadowed first row of a repeated piece (transformers decodes it as [UNK], the project as the
    piece; encoding never produces it)."""
    rng = random.Random(0)
    for src, hf, fix in (
        (write_bert(tmp_path / "bert"), None, lambda s: s.replace("[UNK]", st.UNK)),
        (write_roberta(tmp_path / "roberta"), None, lambda s: s),
    ):
        tok = import_hf_tokenizer(src, tmp_path / f"tok-{src.name}")
        hf = _hf_bert(src) if src.name == "bert" else _hf_roberta(src)
        p2s = tok.source_vocab["project_to_source"]
        last = {tok.id_to_piece(i): i for i in range(7, tok.vocab_size)}
        choices = [st.UNK_ID, *last.values()]
        for _ in range(200):
            ids = [rng.choice(choices) for _ in range(rng.randint(0, 12))]
            assert tok.decode(ids) == fix(hf.decode([p2s[i] for i in ids])), ids


def test_runtime_needs_neither_transformers_nor_regex(tmp_path):
    import subprocess
    import sys

    for src in (write_bert(tmp_path / "bert"), write_roberta(tmp_path / "roberta")):
        import_hf_tokenizer(src, tmp_path / f"tok-{src.name}")
    code = (
        "import sys; from data_prep.tokenizer import load_tokenizer\n"
        "for d in sys.argv[1:]:\n"
        "    tok = load_tokenizer(d); tok.decode(tok.encode('Hello, wörld 中文 😀'))\n"
        "bad = {'transformers', 'tokenizers', 'regex'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    dirs = [str(tmp_path / "tok-bert"), str(tmp_path / "tok-roberta")]
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code, *dirs], check=True, cwd=root)


def test_pretokenizer_equals_regex_module_on_assigned_characters():
    """The `re` version of GPT-2's pattern equals `regex`'s on every character this Python assigns."""
    regex = pytest.importorskip("regex")
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    rng = random.Random(0)
    seps = [" ", "  ", "\t", "\x1c", "\u3000", "'s", "'ll", " '", "1", "a"]
    text = "".join(c + (rng.choice(seps) if n % 5 == 0 else "") for n, c in enumerate(chars))
    assert pretokenize(text) == pat.findall(text)


# ---------------------------------------------------------------- ids, schema, specials


def test_special_ids_and_source_mapping(tmp_path):
    tok = import_hf_tokenizer(write_bert(tmp_path / "bert"), tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / META_FILE).read_text())
    vocab = _bert_vocab(cased=False)
    p2s = meta["source_vocab"]["project_to_source"]
    assert meta["model_type"] == tok.model_type == "wordpiece"
    assert meta["special_tokens"] == st.SPECIAL_TOKENS and meta["sha256"] == tok.sha256
    assert meta["source_vocab"]["kind"] == "hf-wordpiece"
    assert meta["source_vocab"]["path"] == str((tmp_path / "bert").absolute())
    assert [tok.id_to_piece(i) for i in range(7)] == list(st.SPECIAL_TOKENS)
    mapped = [vocab[r] if r >= 0 else None for r in p2s[:7]]
    assert mapped == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", None, None, None]
    # the rest: every other source row once, in row order
    assert p2s[7:] == [r for r, p in enumerate(vocab) if p not in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")]
    assert meta["vocab_size"] == tok.vocab_size == len(vocab) + 3 == len(p2s)
    assert all(tok.id_to_piece(i) == vocab[r] for i, r in enumerate(p2s) if i >= 7)
    # project special spellings in text: <image> </image> </d> are tokens, the others plain text
    ids = tok.encode("a <image> b </image> c </d>")
    assert ids.count(st.IMAGE_ID) == ids.count(st.END_IMAGE_ID) == ids.count(st.END_DOC_ID) == 1
    assert not {st.PAD_ID, st.BOS_ID, st.EOS_ID} & set(tok.encode("<s> </s> <pad> [CLS] [SEP] [PAD]"))
    assert tok.decode([st.BOS_ID, *tok.encode("red circle"), st.EOS_ID, st.PAD_ID]) == "red circle"
    assert tok.decode(tok.encode("red <image> circle </d>")) == "red <image> circle </d>"
    texts = ["red circle", "", "top left"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.summary() == {"vocab_size": tok.vocab_size, "sha256": tok.sha256}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_roberta_specials_and_bpe_decode(tmp_path):
    tok = import_hf_tokenizer(write_roberta(tmp_path / "roberta"), tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / META_FILE).read_text())
    assert meta["model_type"] == "bpe-bytelevel" and meta["source_vocab"]["kind"] == "hf-bpe"
    p2s = meta["source_vocab"]["project_to_source"]
    assert p2s[:7] == [1, 0, 2, 3, -1, -1, -1]  # <pad> <s> </s> <unk> rows of vocab.json
    src_vocab = json.loads((tmp_path / "roberta" / "vocab.json").read_text(encoding="utf-8"))
    assert tok.id_to_piece(tok.vocab_size - 1) == "<mask>" and p2s[-1] == src_vocab["<mask>"]
    text = "a <image> b </image>\n</d> ünïcode"
    ids = tok.encode(text)
    assert tok.decode(ids) == text  # byte-level: exact, specials spelled out with no added spaces


def test_import_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=rf"{re.escape(str(empty))}.*vocab\.txt.*vocab\.json \+ merges\.txt"):
        import_hf_tokenizer(empty, tmp_path / "tok")
    (empty / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="legacy_format=True"):
        import_hf_tokenizer(empty, tmp_path / "tok")
    with pytest.raises(UserError, match="no such folder"):
        import_hf_tokenizer(tmp_path / "missing", tmp_path / "tok")
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_text("{}")
    with pytest.raises(UserError, match="no merges.txt"):
        import_hf_tokenizer(half, tmp_path / "tok")
    src = write_bert(tmp_path / "bert", config={"tokenizer_class": "BertJapaneseTokenizer"})
    with pytest.raises(UserError, match="BertJapaneseTokenizer"):
        import_hf_tokenizer(src, tmp_path / "tok")
    src = write_bert(tmp_path / "bert2")
    with pytest.raises(UserError, match="is the --import-hf folder"):
        import_hf_tokenizer(src, src)
    assert not (tmp_path / "tok").exists()


def test_rerun_is_noop_and_different_needs_force(tmp_path, raw_data):
    src = write_bert(tmp_path / "bert")
    out = tmp_path / "tok"
    first = import_hf_tokenizer(src, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = import_hf_tokenizer(src, out)
    assert again.sha256 == first.sha256 and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # another option changes the tokenization: refused without --force
    cased = write_bert(tmp_path / "bert-cased", config={"do_lower_case": False})
    with pytest.raises(UserError, match="--force"):
        import_hf_tokenizer(cased, out)
    assert load_tokenizer(out).sha256 == first.sha256
    forced = import_hf_tokenizer(cased, out, force=True)
    assert forced.sha256 != first.sha256 and load_tokenizer(out).encode("RED") != first.encode("RED")
    # switching kinds: a BPE import replaces vocab.txt, a sentencepiece build the vocabulary files
    bpe = import_hf_tokenizer(write_roberta(tmp_path / "roberta"), out, force=True)
    assert not (out / "vocab.txt").exists() and load_tokenizer(out).sha256 == bpe.sha256
    corpus = [raw_data / "text" / "train.jsonl"]
    with pytest.raises(UserError, match="--force"):
        build_tokenizer(corpus, out, vocab_size=200, model_type="bpe")
    sp = build_tokenizer(corpus, out, vocab_size=200, model_type="bpe", force=True)
    assert not (out / "vocab.json").exists() and load_tokenizer(out).sha256 == sp.sha256
    with pytest.raises(UserError, match="--force"):
        import_hf_tokenizer(src, out)
    import_hf_tokenizer(src, out, force=True)
    assert not (out / MODEL_FILE).exists() and load_tokenizer(out).sha256 == first.sha256


def test_load_detects_changed_files(tmp_path):
    out = tmp_path / "tok"
    import_hf_tokenizer(write_bert(tmp_path / "bert"), out)
    vocab = out / "vocab.txt"
    original = vocab.read_bytes()
    vocab.write_bytes(original + b"extra\n")
    with pytest.raises(UserError, match="do not match the sha256.*--import-hf"):
        load_tokenizer(out)
    vocab.write_bytes(original)
    meta = json.loads((out / META_FILE).read_text())
    meta["source_vocab"]["project_to_source"][7] = 99
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="project_to_source"):
        load_tokenizer(out)
    vocab.unlink()
    with pytest.raises(UserError, match="missing vocab.txt"):
        load_tokenizer(out)


def test_cli(tmp_path):
    src = write_bert(tmp_path / "bert")
    out = tmp_path / "tok"
    assert main(["tokenizer", "--import-hf", str(src), "--output", str(out)]) == 0
    assert load_tokenizer(out).model_type == "wordpiece"
    assert main(["tokenizer", "--import-hf", str(src), "--output", str(out)]) == 0
    assert main(["tokenizer", "--import-hf", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert main(["tokenizer", "--import-hf", str(src), "--vocab-size", "9", "--output", f"{tmp_path}/y"]) == 2
    assert main(["tokenizer", "--input", str(tmp_path / "a.txt"), "--output", str(tmp_path / "z")]) == 2
    assert not any((tmp_path / n).exists() for n in ("x", "y", "z"))
    with pytest.raises(SystemExit):  # argparse: --input and --import-hf exclude each other
        main(["tokenizer", "--import-hf", str(src), "--input", "a.txt", "--output", str(out)])


def test_text_shards_with_an_imported_tokenizer(tmp_path, raw_data):
    """data_prep text needs nothing from the tokenizer but encode_batch/summary."""
    from data_prep.text import TextConfig, build_text
    from data_prep.verify import verify_shards

    tok = import_hf_tokenizer(write_roberta(tmp_path / "roberta"), tmp_path / "tok")
    out = tmp_path / "shards"
    stats = build_text(
        TextConfig(
            inputs=[raw_data / "text" / "val.jsonl"],
            tokenizer=tmp_path / "tok",
            output=out,
            seq_len=64,
            progress=False,
        )
    )
    assert stats["tokenizer"]["sha256"] == tok.sha256 and stats["samples"] > 0
    problems, _ = verify_shards(out)
    assert not problems


def test_encode_is_cached_and_bounded(tmp_path, monkeypatch):
    from data_prep import wordpiece

    monkeypatch.setattr(wordpiece, "CACHE_LIMIT", 4)
    tok = import_hf_tokenizer(write_bert(tmp_path / "bert"), tmp_path / "tok")
    want = [tok.encode(w) for w in WORDS]
    assert [tok.encode(w) for w in WORDS] == want and len(tok.hf.backend._cache) <= 4
