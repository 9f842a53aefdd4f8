"""synth -> tokenizer -> pairs + text (CLI) -> verify -> read back with streaming.StreamingDataset."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from streaming import StreamingDataset
from streaming.base.util import clean_stale_shared_memory

from common import exit_codes
from data_prep.cli import build_parser, main
from data_prep.images import process_image
from data_prep.tokenizer import load_tokenizer
from tests.paths import REPO


def _originals(tars):
    out = {}
    for t in tars:
        with tarfile.open(t) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".jpg"):
                key = name[:-4]
                out[key] = (data, members[f"{key}.txt"].decode(), json.loads(members[f"{key}.json"]))
    return out


def test_synth_to_streaming_dataset_round_trip(tmp_path, raw_data, tokenizer_dir, capsys):
    tars = sorted((raw_data / "pairs").glob("train-*.tar"))
    pairs_out, text_out = tmp_path / "pairs", tmp_path / "text"
    assert (
        main(
            [
                "pairs",
                "--input",
                *map(str, tars),
                "--tokenizer",
                str(tokenizer_dir),
                "--image-size",
                "32",
                "--output",
                str(pairs_out),
                "--workers",
                "2",
                "--no-progress",
            ]
        )
        == exit_codes.OK
    )
    assert (
        main(
            [
                "text",
                "--input",
                str(raw_data / "text" / "train.jsonl"),
                "--tokenizer",
                str(tokenizer_dir),
                "--seq-len",
                "128",
                "--output",
                str(text_out),
                "--no-progress",
            ]
        )
        == exit_codes.OK
    )
    assert main(["verify", str(pairs_out), str(text_out)]) == exit_codes.OK
    assert main(["inspect", str(pairs_out), "--images-out", str(tmp_path / "look"), "--samples", "3"]) == 0
    assert len(list((tmp_path / "look").glob("*.jpg"))) == 3
    capsys.readouterr()
    assert main(["inspect", str(text_out), "--samples", "2"]) == 0
    report = capsys.readouterr().out
    assert "text shards" in report and "segments per sequence" in report and "<unk> rate" in report

    tok = load_tokenizer(tokenizer_dir)
    originals = _originals(tars)
    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(pairs_out), shuffle=False, batch_size=4)
    assert len(ds) == len(originals) == 48
    for i in range(len(ds)):
        s = ds[i]
        raw, caption, meta = originals[s["key"]]
        assert s["caption"] == caption == meta["caption"]
        assert caption == f"{meta['size']} {meta['colour']} {meta['shape']} {meta['row']} {meta['column']}"
        assert tok.decode(s["caption_ids"]) == caption
        assert s["image"] == process_image(raw, 32, 95)  # bytes as the image path makes them
        img = Image.open(io.BytesIO(s["image"]))
        assert img.size == (32, 32) and img.mode == "RGB"
    text = StreamingDataset(local=str(text_out), shuffle=False, batch_size=4)
    first = text[0]
    assert first["tokens"].shape == (128,) and first["tokens"].dtype == np.int32
    assert first["doc_starts"][0] == 0


def test_cli_exit_codes(tmp_path, raw_data, tokenizer_dir, capsys):
    out = tmp_path / "o"
    assert (
        main(
            [
                "pairs",
                "--input",
                str(tmp_path / "missing.tar"),
                "--tokenizer",
                str(tokenizer_dir),
                "--output",
                str(out),
            ]
        )
        == exit_codes.USER_ERROR
    )
    assert (
        main(
            [
                "text",
                "--input",
                str(raw_data / "text" / "val.jsonl"),
                "--tokenizer",
                str(tmp_path),
                "--seq-len",
                "8",
                "--output",
                str(out),
            ]
        )
        == exit_codes.USER_ERROR
    )
    assert main(["verify", str(tmp_path)]) == exit_codes.USER_ERROR
    assert not out.exists()
    good = tmp_path / "g"
    assert (
        main(
            [
                "text",
                "--input",
                str(raw_data / "text" / "val.jsonl"),
                "--tokenizer",
                str(tokenizer_dir),
                "--seq-len",
                "16",
                "--output",
                str(good),
                "--no-progress",
            ]
        )
        == 0
    )
    shard = next(good.glob("shard.*.mds"))
    shard.write_bytes(shard.read_bytes()[:-3])
    capsys.readouterr()
    assert main(["verify", str(good)]) == exit_codes.FAILURE
    assert shard.name in capsys.readouterr().out


def test_every_subcommand_has_help_with_an_example(capsys):
    parser = build_parser()
    for cmd in ("tokenizer", "pairs", "text", "inspect", "verify", "synth"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([cmd, "--help"])
        assert e.value.code == 0
        assert "example" in capsys.readouterr().out


def test_synth_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert (
            main(
                [
                    "synth",
                    "--output",
                    str(d),
                    "--num-images",
                    "12",
                    "--num-val-images",
                    "3",
                    "--num-docs",
                    "5",
                    "--num-val-docs",
                    "2",
                    "--seed",
                    "3",
                ]
            )
            == 0
        )
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [str(f) for f in files if f.parts[0] in ("pairs", "text")] == [
        "pairs/train-00000.tar",
        "pairs/val-00000.tar",
        "text/train.jsonl",
        "text/val.jsonl",
    ]
    assert {f.parts[0] for f in files} == {"pairs", "text", "eval", "tasks"}  # + held-out eval and task sets
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()


@pytest.mark.slow
def test_demo_data_script(tmp_path):
    """The script the demo runs (about 9 interpreter starts; re-running is covered by --force tests)."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "demo"
    (out / "shards" / "pairs-train").mkdir(parents=True)  # an existing output is replaced
    (out / "shards" / "pairs-train" / "old").write_text("x")
    r = subprocess.run(
        ["bash", "scripts/demo_data.sh", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("hashes and schema verified") == 6
    for name in ("pairs-train", "pairs-val", "text-train", "text-val", "tasks-train", "tasks-val"):
        assert (out / "shards" / name / "stats.json").is_file()
    assert not (out / "shards" / "pairs-train" / "old").exists()
    assert (out / "tokenizer" / "tokenizer.model").is_file() and len(
        list((out / "inspect").glob("*.jpg"))
    ) == 8


def test_inputs_from_an_at_file(tmp_path, raw_data):
    listing = tmp_path / "tars.txt"
    tars = [str(p) for p in sorted((raw_data / "pairs").glob("train-*.tar"))]
    listing.write_text("\n".join(tars) + "\n")
    args = build_parser().parse_args(["pairs", "--input", f"@{listing}", "--tokenizer", "t", "--output", "o"])
    assert args.input == tars
