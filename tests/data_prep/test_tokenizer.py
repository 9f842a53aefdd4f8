import json
import shutil

import pytest

from common import special_tokens as st
from common.errors import UserError
from data_prep.tokenizer import META_FILE, MODEL_FILE, build_tokenizer, load_tokenizer


def test_special_ids_and_roundtrip(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    for piece, want in st.SPECIAL_TOKENS.items():
        assert tok.sp.piece_to_id(piece) == want
    assert tok.sp.pad_id() == st.PAD_ID and tok.sp.bos_id() == st.BOS_ID
    assert tok.sp.eos_id() == st.EOS_ID and tok.sp.unk_id() == st.UNK_ID
    # user-defined symbols are single tokens inside text
    ids = tok.encode("a <image> b </image> c </d>")
    for special in (st.IMAGE_ID, st.END_IMAGE_ID, st.END_DOC_ID):
        assert special in ids
    text = "large red circle top left"
    assert tok.decode(tok.encode(text)) == text
    meta = json.loads((tokenizer_dir / META_FILE).read_text())
    assert meta["vocab_size"] == tok.vocab_size == 300
    assert meta["sha256"] == tok.sha256 and meta["special_tokens"] == st.SPECIAL_TOKENS
    assert meta["model_type"] == "bpe"


def test_caption_words_are_single_tokens(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert len(tok.encode("small purple diamond bottom center")) == 5


def test_missing_and_corrupt_tokenizer_dirs(tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        load_tokenizer(tmp_path / "nope")
    bad = tmp_path / "bad"
    shutil.copytree(tokenizer_dir, bad)
    (bad / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match="does not match the sha256"):
        load_tokenizer(bad)
    (bad / META_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_tokenizer(bad)


def test_refuses_to_overwrite_a_different_tokenizer(raw_data, tmp_path):
    out = tmp_path / "tok"
    inputs = [raw_data / "text" / "train.jsonl"]
    first = build_tokenizer(inputs, out, vocab_size=200, model_type="bpe")
    again = build_tokenizer(inputs, out, vocab_size=200, model_type="bpe")  # identical: fine
    assert again.sha256 == first.sha256
    with pytest.raises(UserError, match="--force"):
        build_tokenizer(inputs, out, vocab_size=250, model_type="bpe")
    assert load_tokenizer(out).sha256 == first.sha256
    forced = build_tokenizer(inputs, out, vocab_size=250, model_type="bpe", force=True)
    assert load_tokenizer(out).sha256 == forced.sha256 != first.sha256


def test_unigram_and_bad_inputs(raw_data, tmp_path):
    tok = build_tokenizer([raw_data / "text" / "train.jsonl"], tmp_path / "uni", vocab_size=150)
    assert tok.model_type == "unigram" and tok.sp.piece_to_id("</d>") == st.END_DOC_ID
    with pytest.raises(UserError, match="no such file"):
        build_tokenizer([tmp_path / "missing.jsonl"], tmp_path / "x", vocab_size=100)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="no text"):
        build_tokenizer([empty], tmp_path / "y", vocab_size=100)
    assert not (tmp_path / "y").exists()


def test_tokenizer_with_other_special_ids_is_refused(raw_data, tmp_path):
    import hashlib
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["red circle top left"] * 50),
        model_writer=buf,
        vocab_size=30,
        model_type="bpe",
        minloglevel=2,
        hard_vocab_limit=False,
    )
    d = tmp_path / "plain"
    d.mkdir()
    (d / MODEL_FILE).write_bytes(buf.getvalue())
    (d / META_FILE).write_text(json.dumps({"sha256": hashlib.sha256(buf.getvalue()).hexdigest()}))
    with pytest.raises(UserError, match="special token <unk> has id 0, expected 3"):
        load_tokenizer(d)
