import json

import numpy as np
import pytest
import zstandard

from common.errors import UserError
from common.special_tokens import END_DOC_ID
from data_prep.text import TextConfig, build_text
from data_prep.tokenizer import load_tokenizer
from data_prep.verify import shard_readers, verify_shards


def _cfg(inputs, tokenizer_dir, out, **kw):
    return TextConfig(inputs=list(inputs), tokenizer=tokenizer_dir, output=out, progress=False, **kw)


def _read_all(d):
    return [reader.get_item(i) for info, reader in shard_readers(d) for i in range(info["samples"])]


def test_text_shards_pack_documents_with_separators(tmp_path, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    docs = [
        f"the {c} square sits at the top left of the picture." * (i + 1)
        for i, c in enumerate(["red", "blue", "green", "black"] * 5)
    ]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    stats = build_text(_cfg([src], tokenizer_dir, tmp_path / "out", seq_len=32))
    samples = _read_all(tmp_path / "out")
    stream = np.concatenate([s["tokens"] for s in samples])
    want = []
    for d in docs:
        want += tok.encode(d) + [END_DOC_ID]
    assert len(samples) == len(want) // 32 == stats["samples"]
    assert stream.tolist() == want[: len(stream)]
    assert stats["dropped_tail_tokens"] == len(want) % 32 and stats["documents"] == 20
    assert stats["tokens"] == 32 * len(samples) and stats["seq_len"] == 32
    for s in samples:  # every document start is right after a </d> (or at 0)
        starts = s["doc_starts"].tolist()
        assert starts[0] == 0
        assert all(s["tokens"][p - 1] == END_DOC_ID for p in starts[1:])
    assert verify_shards(tmp_path / "out")[0] == []


def test_zst_txt_and_bad_documents_are_counted(tmp_path, tokenizer_dir):
    lines = [
        b'{"text": "a red circle"}',
        b'{"text": ""}',
        b'{"text": "bad \xff byte"}',
        b"{oops",
        b'{"title": "no text"}',
        b'{"text": "blue square at the top"}',
    ]
    zst = tmp_path / "c.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n"))
    txt = tmp_path / "d.txt"
    txt.write_text("green triangle\n\nsmall cross\n")
    stats = build_text(_cfg([zst, txt], tokenizer_dir, tmp_path / "out", seq_len=4, txt_docs="paragraph"))
    assert stats["documents"] == 4
    assert stats["skipped"] == {
        "bad_json_line": 1,
        "empty_document": 1,
        "missing_text_field": 1,
        "non_utf8": 1,
    }
    assert verify_shards(tmp_path / "out")[0] == []


def test_identical_output_for_any_worker_count(tmp_path, raw_data, tokenizer_dir):
    src = raw_data / "text" / "train.jsonl"
    a = build_text(_cfg([src], tokenizer_dir, tmp_path / "a", seq_len=64))
    b = build_text(_cfg([src], tokenizer_dir, tmp_path / "b", seq_len=64, workers=2))
    assert a == b
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


def test_bad_whole_inputs(tmp_path, tokenizer_dir):
    short = tmp_path / "s.jsonl"
    short.write_text('{"text": "tiny"}\n')
    with pytest.raises(UserError, match="less than one"):
        build_text(_cfg([short], tokenizer_dir, tmp_path / "o", seq_len=512))
    assert not (tmp_path / "o").exists()
    notjson = tmp_path / "n.jsonl"
    notjson.write_text("plain\n")
    with pytest.raises(UserError) as e:
        build_text(_cfg([notjson, tmp_path / "gone.jsonl"], tokenizer_dir, tmp_path / "o", seq_len=8))
    assert "n.jsonl" in str(e.value) and "gone.jsonl" in str(e.value)
    with pytest.raises(UserError, match="--seq-len"):
        build_text(_cfg([short], tokenizer_dir, tmp_path / "o", seq_len=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.jsonl", "s.jsonl"]
