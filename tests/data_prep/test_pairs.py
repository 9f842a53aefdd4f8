import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

import data_prep.pairs as pairs_mod
from common.errors import UserError
from data_prep.pairs import PairsConfig, build_pairs, normalize_caption
from data_prep.shard_meta import read_shard_meta
from data_prep.verify import verify_shards

from .conftest import jpeg_bytes, write_coco, write_tar


def _cfg(inputs, tokenizer_dir, out, **kw):
    kw.setdefault("image_size", 24)
    return PairsConfig(inputs=list(inputs), tokenizer=tokenizer_dir, output=out, progress=False, **kw)


def test_bad_samples_are_skipped_and_counted_by_reason(tmp_path, tokenizer_dir):
    good = jpeg_bytes(size=(64, 48))
    tar = write_tar(
        tmp_path / "mixed.tar",
        [
            ("a.jpg", good),
            ("a.txt", b"  large\n red\tcircle  "),
            ("b.jpg", b""),
            ("b.txt", b"zero byte image"),
            ("c.jpg", good[:300]),
            ("c.txt", b"truncated image"),
            ("d.jpg", b"garbage bytes"),
            ("d.txt", b"corrupt image"),
            ("e.jpg", good),
            ("e.txt", b"   "),
            ("f.jpg", good),
            ("g.txt", b"no image"),
            ("h.jpg", good),
            ("h.txt", b"\xff\xfe"),
            ("stray.parquet", b"x"),
            ("i.jpg", good),
            ("i.txt", " ".join(["red"] * 50).encode()),
        ],
    )
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "ok.png").write_bytes(jpeg_bytes(fmt="PNG", mode="RGB"))
    coco = write_coco(
        tmp_path,
        [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": "gone.jpg"}],
        [{"id": 5, "image_id": 1, "caption": "blue square"}, {"id": 6, "image_id": 2, "caption": "x"}],
    )
    out = tmp_path / "shards"
    stats = build_pairs(
        _cfg([tar, coco], tokenizer_dir, out, image_root=tmp_path / "imgs", max_caption_tokens=10)
    )
    assert stats["samples"] == 3
    assert stats["skipped"] == {
        "corrupt_image": 2,
        "empty_caption": 1,
        "empty_file": 1,
        "missing_caption": 1,
        "missing_image": 2,
        "non_utf8_caption": 1,
        "stray_file": 1,
    }
    assert stats["caption_tokens"]["truncated"] == 1 and stats["caption_tokens"]["max"] == 10
    assert stats["sources"][str(coco)]["skipped"] == {"missing_image": 1}
    assert verify_shards(out)[0] == []
    assert read_shard_meta(out) == json.loads((out / "stats.json").read_text())


def test_output_identical_for_any_worker_count(tmp_path, raw_data, tokenizer_dir):
    tars = sorted((raw_data / "pairs").glob("train-*.tar"))
    a = build_pairs(_cfg(tars, tokenizer_dir, tmp_path / "w1", workers=1))
    b = build_pairs(_cfg(tars, tokenizer_dir, tmp_path / "w2", workers=2))
    assert a == b and a["samples"] == 48
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_whole_input_problems_fail_before_anything_is_written(tmp_path, raw_data, tokenizer_dir):
    out = tmp_path / "out"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    good = raw_data / "pairs" / "train-00000.tar"
    with pytest.raises(UserError) as e:
        build_pairs(_cfg([good, bad_json, tmp_path / "missing.tar"], tokenizer_dir, out))
    assert "bad.json" in str(e.value) and "missing.tar" in str(e.value)
    with pytest.raises(UserError, match="tokenizer dir"):
        build_pairs(_cfg([good], tmp_path / "no-tokenizer", out))
    with pytest.raises(UserError, match="--image-size"):
        build_pairs(_cfg([good], tokenizer_dir, out, image_size=2))
    assert not out.exists() and list(tmp_path.glob(".out*")) == []


def test_existing_output_needs_force(tmp_path, raw_data, tokenizer_dir):
    tar = raw_data / "pairs" / "val-00000.tar"
    out = tmp_path / "out"
    build_pairs(_cfg([tar], tokenizer_dir, out))
    with pytest.raises(UserError, match="--force"):
        build_pairs(_cfg([tar], tokenizer_dir, out))
    stats = build_pairs(_cfg([tar], tokenizer_dir, out, force=True, image_size=16))
    assert read_shard_meta(out)["image_size"] == 16 == stats["image_size"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_mid_run_leaves_no_output(tmp_path, raw_data, tokenizer_dir, monkeypatch):
    calls = {"n": 0}
    real = pairs_mod.process_chunk

    def flaky(chunk):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(chunk)

    monkeypatch.setattr(pairs_mod, "process_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_pairs(_cfg(sorted((raw_data / "pairs").glob("train-*.tar")), tokenizer_dir, tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_killed_run_leaves_nothing_verify_accepts_and_rerun_completes(tmp_path, raw_data, tokenizer_dir):
    out = tmp_path / "out"
    tars = sorted((raw_data / "pairs").glob("*.tar")) * 100  # long enough to kill mid-way
    cfg = _cfg(tars, tokenizer_dir, out, shard_size_limit="20kb")
    proc = multiprocessing.get_context("fork").Process(target=build_pairs, args=(cfg,))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".out.tmp-*/shard.*.mds")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    temps = list(tmp_path.glob(".out.tmp-*"))
    assert temps, "the run finished before it could be killed"
    assert not out.exists()
    with pytest.raises(UserError, match="not a complete shard set"):
        verify_shards(temps[0])
    stats = build_pairs(_cfg(tars[:4], tokenizer_dir, out))
    assert stats["samples"] == 64 and verify_shards(out)[0] == []
    assert list(tmp_path.glob(".out.*")) == []  # the stale temp folder was removed


def test_caption_normalization_and_ids(tmp_path, tokenizer_dir):
    assert normalize_caption("  a\n\tb   c ") == "a b c"
    tar = write_tar(tmp_path / "x.tar", [("k.jpg", jpeg_bytes()), ("k.txt", b"large\nred  circle")])
    build_pairs(_cfg([tar], tokenizer_dir, tmp_path / "o"))
    from data_prep.verify import shard_readers

    ((info, reader),) = list(shard_readers(tmp_path / "o"))
    s = reader.get_item(0)
    assert s["caption"] == "large red circle" and s["key"] == "k" and s["source"] == "x.tar"
    assert s["caption_ids"].dtype == np.int32 and len(s["caption_ids"]) == 3


def test_sigterm_cleans_up_and_exits_130(tmp_path, raw_data, tokenizer_dir):
    from data_prep.cli import main

    out = tmp_path / "out"
    tars = [str(p) for p in sorted((raw_data / "pairs").glob("*.tar"))] * 100
    argv = [
        "pairs",
        "--input",
        *tars,
        "--tokenizer",
        str(tokenizer_dir),
        "--image-size",
        "24",
        "--output",
        str(out),
        "--shard-size-limit",
        "20kb",
        "--no-progress",
        "--workers",
        "2",
    ]
    proc = multiprocessing.get_context("fork").Process(target=lambda: os._exit(main(argv)))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".out.tmp-*/shard.*.mds")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    assert proc.exitcode == 130
    assert list(tmp_path.iterdir()) == []
