import json
import shutil

import pytest

from common.errors import UserError
from data_prep.pairs import PairsConfig, build_pairs
from data_prep.shard_meta import check_compatible, read_shard_meta
from data_prep.tokenizer import load_tokenizer
from data_prep.verify import verify_shards


@pytest.fixture(scope="module")
def shards(raw_data, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("v") / "pairs"
    build_pairs(
        PairsConfig(
            inputs=[raw_data / "pairs"],
            tokenizer=tokenizer_dir,
            output=out,
            image_size=16,
            shard_size_limit="8kb",
            progress=False,
        )
    )
    return out


def _copy(shards, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(shards, d)
    return d


def test_good_set_verifies(shards):
    problems, summary = verify_shards(shards)
    assert problems == [] and summary["shards"] > 1 and summary["samples"] == 64


def test_flipped_byte_names_the_shard(shards, tmp_path):
    d = _copy(shards, tmp_path)
    victim = sorted(d.glob("shard.*.mds"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    problems, _ = verify_shards(d)
    assert any(victim.name in p and "hash mismatch" in p for p in problems)


def test_missing_shard_and_wrong_counts(shards, tmp_path):
    d = _copy(shards, tmp_path)
    victim = sorted(d.glob("shard.*.mds"))[0]
    victim.unlink()
    problems, _ = verify_shards(d)
    assert any(victim.name in p and "missing" in p for p in problems)
    assert any("stats.json says" in p for p in problems)


def test_schema_mismatch(shards, tmp_path):
    d = _copy(shards, tmp_path)
    stats = json.loads((d / "stats.json").read_text())
    stats["kind"] = "text"
    stats["seq_len"] = 8
    (d / "stats.json").write_text(json.dumps(stats))
    problems, _ = verify_shards(d)
    assert problems and all("schema" in p or "stats.json says" in p for p in problems)


def test_not_a_shard_dir_is_a_user_error_with_the_fix(tmp_path):
    with pytest.raises(UserError, match="python -m data_prep pairs"):
        read_shard_meta(tmp_path)
    with pytest.raises(UserError, match="not a complete shard set"):
        verify_shards(tmp_path)


def test_check_compatible(shards, tokenizer_dir):
    meta = read_shard_meta(shards)
    tok = load_tokenizer(tokenizer_dir)
    check_compatible(
        meta, shards, tokenizer_sha256=tok.sha256, vocab_size=tok.vocab_size, image_size=16, kind="pairs"
    )
    with pytest.raises(UserError) as e:
        check_compatible(meta, shards, tokenizer_sha256="0" * 64, image_size=224)
    assert "another tokenizer" in str(e.value) and "--image-size 224" in str(e.value)
