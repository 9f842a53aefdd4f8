"""`python -m evaluation generate` end to end on a tiny exported model: one process (the real entry
point), two TP ranks (as torchrun starts them) giving the same predictions, and bad inputs rejected
before any model is built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from common import exit_codes
from evaluation.cli import main
from tests.distributed import run_ranks

REPO = Path(__file__).resolve().parents[2]


def _export(rank, world, out_dir):
    """A random debug MetaLM saved as `python -m training.export` writes it (full tensors + metadata)."""
    from safetensors.torch import save_file

    from parallel import ParallelConfig, destroy_distributed, init_distributed
    from training.config import TrainingConfig
    from training.model import MetaLM, model_config_from_preset
    from training.model.tp_shards import gather_full_state_dict

    topo = init_distributed(ParallelConfig(tp=1))
    cfg = model_config_from_preset("debug", vocab_size=64, init_std=0.2)
    model = MetaLM(cfg, topo)
    full = gather_full_state_dict(model, topo)
    out = Path(out_dir)
    meta = {
        "format": "metalm-full",
        "step": "0",
        "vocab_size": "64",
        "saved_tp": "1",
        "dtype": "torch.float32",
    }
    save_file({k: v.contiguous() for k, v in full.items()}, str(out / "metalm.safetensors"), metadata=meta)
    # a pretrained-encoder file the run was initialized from (gone now): the export holds every weight
    cfg.vision_encoder.weights_path = str(out / "clip-vit-that-is-not-here")
    train_cfg = TrainingConfig(model=cfg)
    train_cfg.data.tokenizer = str(out / "tokenizer")
    (out / "config.yaml").write_text(train_cfg.to_yaml())
    destroy_distributed()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.training.shards import write_tokenizer

    root = tmp_path_factory.mktemp("gen_cli")
    export = root / "export"
    export.mkdir()
    write_tokenizer(export / "tokenizer")
    run_ranks(1, _export, str(export))
    data = root / "data"
    (data / "img").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(data / "img" / "red.jpg")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(data / "img" / "blue.png")
    lines = [
        {
            "image": "img/red.jpg",
            "encoder": ["what colour is the square?"],
            "prompt": "answer:",
            "question_id": 7,
        },
        {"encoder": ["a cat sat on the mat", "and ran home"], "prompt": "", "id": "b"},
        {"images": ["img/blue.png", str(data / "img" / "red.jpg")], "prompt": "a"},
    ]
    (data / "examples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    demos = [
        {
            "encoder": ["what colour is the square?"],
            "image": "img/blue.png",
            "prompt": "answer:",
            "label": "blue",
        },
        {"encoder": ["the dog"], "prompt": "answer:", "label": "a dog"},
    ]
    (data / "demos.jsonl").write_text("\n".join(json.dumps(x) for x in demos) + "\n")
    return export / "metalm.safetensors", data


def _argv(model, data, out, *extra):
    return [
        "generate",
        "--model",
        str(model),
        "--input",
        str(data / "examples.jsonl"),
        "--output",
        str(out),
        "--max-new-tokens",
        "4",
        *extra,
    ]


FEW_SHOT = (
    "--demos",
    "demos.jsonl",
    "--num-beams",
    "2",
    "--length-penalty",
    "0.5",
    "--demo-style",
    "decoder",
)


def _cli_rank(rank, world, argv):
    rc = main(argv)
    return rc


def test_generate_cli_one_process_and_tp2(setup, tmp_path):
    model, data = setup
    out1 = tmp_path / "preds.jsonl"
    few_shot = [a if a != "demos.jsonl" else str(data / "demos.jsonl") for a in FEW_SHOT]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation", *_argv(model, data, out1, *few_shot)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == exit_codes.OK, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["num_examples"] == 3 and summary["num_demonstrations"] == 2 and summary["tp"] == 1
    preds = [json.loads(line) for line in out1.read_text().splitlines()]
    assert [p["index"] for p in preds] == [0, 1, 2]
    assert preds[0]["question_id"] == 7 and preds[1]["id"] == "b"  # other input fields are copied
    for p in preds:
        assert isinstance(p["prediction"], str) and len(p["tokens"]) <= 4 and isinstance(p["score"], float)
        assert "image" not in p and "encoder" not in p
    # two TP ranks (the environment torchrun gives): rank 0 writes the same predictions
    out2 = tmp_path / "preds_tp2.jsonl"
    rcs = run_ranks(2, _cli_rank, _argv(model, data, out2, *few_shot))
    assert rcs == [exit_codes.OK, exit_codes.OK]
    preds2 = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [p["tokens"] for p in preds2] == [p["tokens"] for p in preds]
    # two data-parallel replicas (--tp 1) split the examples; rank 0 gathers them in input order
    out_dp = tmp_path / "preds_dp2.jsonl"
    assert run_ranks(2, _cli_rank, _argv(model, data, out_dp, *few_shot, "--tp", "1")) == [0, 0]
    preds_dp = [json.loads(line) for line in out_dp.read_text().splitlines()]
    assert [{**p, "score": None} for p in preds_dp] == [{**p, "score": None} for p in preds]
    assert [p["score"] for p in preds_dp] == pytest.approx([p["score"] for p in preds], abs=1e-5)
    # a zero-shot greedy run of the same examples gives other answers
    out3 = tmp_path / "zero.jsonl"
    assert run_ranks(1, _cli_rank, _argv(model, data, out3)) == [exit_codes.OK]
    zero = [json.loads(line)["tokens"] for line in out3.read_text().splitlines()]
    assert zero != [p["tokens"] for p in preds]


def test_generate_cli_rejects_bad_inputs_before_building_a_model(setup, tmp_path, capsys, caplog):
    model, data = setup
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    lines = [
        json.dumps({"encoder": ["fine"], "prompt": "ok"}),
        json.dumps({"encoder": ["no prompt"]}),
        json.dumps({"image": "missing.jpg", "prompt": "x"}),
        json.dumps({"image": str(tmp_path / "broken.jpg"), "prompt": "x"}),
        json.dumps({"encoder": "a string", "prompt": "x"}),
        "{not json",
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(model), "--input", str(bad), "--output", str(out)]
    caplog.clear()
    rc = main(argv + ["--demos", str(tmp_path / "nope.jsonl")])
    logs = caplog.text
    assert rc == exit_codes.USER_ERROR and capsys.readouterr().out == "" and not out.exists()
    assert f'{bad}:2: missing "prompt"' in logs
    assert f"{bad}:3: image {tmp_path / 'missing.jpg'} does not exist" in logs
    assert f"{bad}:4: image {tmp_path / 'broken.jpg'} cannot be decoded" in logs
    assert f'{bad}:5: "encoder" must be a list of strings' in logs
    assert f"{bad}:6: not valid JSON" in logs
    assert "nope.jsonl does not exist" in logs
    # a prefix that cannot fit the model is found before generating too
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": " ".join(["cat"] * 300)}) + "\n")
    caplog.clear()
    assert main(argv[:3] + ["--input", str(long), "--output", str(out)]) == exit_codes.USER_ERROR
    assert f"{long}:1:" in caplog.text and "max_seq_len" in caplog.text and not out.exists()
