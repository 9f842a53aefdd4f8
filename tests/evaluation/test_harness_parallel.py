"""The harness on several ranks and with MLflow: TP=2 and DP=2 give the TP=1 predictions and metrics, the
metrics land in a given MLflow run (or a new one), and training's `eval.harness` hook logs eval/<task>/<metric>
in the training run (TP=2; and ZeRO-3 with DP=2, uneven shares)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import exit_codes
from tests.distributed import run_ranks
from tests.evaluation.test_harness import cli_rank, run_argv
from tests.evaluation.test_harness_helpers import (
    EVAL_TASKS,
    write_eval_config,
    write_eval_data,
    write_train_config,
)
from tests.paths import DEBUG_CONFIG
from tests.training.shards import config_overrides, make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Training shards + tokenizer (tests/training/shards.py) and eval data written with that tokenizer."""
    from training.config.tokenizer import run_tokenizer

    root = make_dataset(tmp_path_factory.mktemp("harness_par"), pairs=64, texts=16)
    write_eval_data(root / "eval", run_tokenizer(root / "tokenizer"))
    return root


def _predictions(out: Path) -> dict:
    d = out.with_name(out.stem + "_predictions")
    return {
        "cap": json.loads((d / "cap.json").read_text()),
        "vqa": json.loads((d / "vqa.json").read_text()),
        "vqa_1shot": json.loads((d / "vqa_1shot.json").read_text()),
        "mc": [json.loads(x) for x in (d / "mc.jsonl").read_text().splitlines()],
        "ppl": [json.loads(x) for x in (d / "ppl.jsonl").read_text().splitlines()],
    }


def _same(a: dict, b: dict) -> None:
    for name in ("cap", "vqa", "vqa_1shot"):
        assert a[name] == b[name], name
    for ra, rb in zip(a["mc"], b["mc"], strict=True):
        assert ra["loglikelihoods"] == pytest.approx(rb["loglikelihoods"], abs=1e-4)
    for ra, rb in zip(a["ppl"], b["ppl"], strict=True):
        assert ra["tokens"] == rb["tokens"] and ra["loss_sum"] == pytest.approx(rb["loss_sum"], rel=1e-5)


def test_tp2_and_dp2_equal_tp1_and_metrics_land_in_mlflow(data, tmp_path):
    from mlflow.tracking import MlflowClient

    train_cfg = write_train_config(tmp_path / "train.yaml", data / "tokenizer", tmp_path / "runs" / "r")
    eval_cfg = write_eval_config(tmp_path / "eval.yaml", data / "eval")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("train-exp", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.set_terminated(run_id, "FINISHED")

    one = tmp_path / "one.json"
    assert run_ranks(1, cli_rank, run_argv(eval_cfg, train_cfg, one, "--no-mlflow")) == [exit_codes.OK]
    # TP=2 (one TP group), logged into the given run
    tp2 = tmp_path / "tp2.json"
    argv = run_argv(eval_cfg, train_cfg, tp2, "--tp", "2", "--mlflow-run-id", run_id, f"tracking.uri={uri}")
    assert run_ranks(2, cli_rank, argv) == [exit_codes.OK, exit_codes.OK]
    # DP=2 (two replicas split the examples, 3 + 3 / 4 + 4 / 3 + 3), logged into a new run
    dp2 = tmp_path / "dp2.json"
    argv = run_argv(eval_cfg, train_cfg, dp2, "--tp", "1", f"tracking.uri={uri}", "tracking.experiment=evals")
    assert run_ranks(2, cli_rank, argv) == [exit_codes.OK, exit_codes.OK]

    ref = json.loads(one.read_text())
    for out, layout in ((tp2, {"tp": 2, "dp": 1, "world": 2}), (dp2, {"tp": 1, "dp": 2, "world": 2})):
        res = json.loads(out.read_text())
        assert res["layout"] == layout
        _same(_predictions(out), _predictions(one))
        for name, task in res["tasks"].items():
            assert task["metrics"] == pytest.approx(ref["tasks"][name]["metrics"], rel=1e-5), name

    # MLflow: the given run got eval/<task>/<metric> at the model's step (init: 0) and kept its status
    res = json.loads(tp2.read_text())
    assert res["mlflow_run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    expected = {f"eval/{n}/{k}": v for n, t in res["tasks"].items() for k, v in t["metrics"].items()}
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")} == pytest.approx(expected)
    assert (
        "eval/cap/CIDEr-D" in expected and "eval/vqa/accuracy" in expected and "eval/mc/accuracy" in expected
    )
    assert [m.step for m in client.get_metric_history(run_id, "eval/ppl/perplexity")] == [0]
    arts = [a.path for a in client.list_artifacts(run_id, "eval/tp2")]
    assert "eval/tp2/tp2.json" in arts
    # without a run id: a new run in the EVAL config's experiment, finished
    new_id = json.loads(dp2.read_text())["mlflow_run_id"]
    assert new_id and new_id != run_id
    new = client.get_run(new_id)
    assert new.info.status == "FINISHED" and client.get_experiment(new.info.experiment_id).name == "evals"
    assert new.data.metrics["eval/mc/accuracy"] == pytest.approx(expected["eval/mc/accuracy"])
    assert new.data.params["eval.model"] == "init" and new.data.tags["eval.step"] == "0"


def _train(rank, world, data: Path, run_dir: Path, extra: list[str]) -> dict:
    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from training.config import load_config
    from training.trainer import Trainer

    base = {"checkpoint.interval_steps": 0, "eval.caption_samples": 0, "train.precision": "fp32"}
    cfg = load_config(DEBUG_CONFIG, config_overrides(data, run_dir, **base) + extra)
    cfg.validate(world)
    run_dir.mkdir(parents=True, exist_ok=True)  # `python -m training` makes it
    topo = init_distributed(cfg.parallel)
    trainer = Trainer(cfg, topo, load_tokenizer(cfg.data.tokenizer).sha256)
    return {"code": trainer.train(), "run_id": trainer.tracker.run_id}


def _hook_config(tmp_path: Path, data: Path) -> Path:
    tasks = [dict(t) for t in EVAL_TASKS if t["name"] in ("cap", "vqa", "mc", "ppl")]
    tasks[0]["limit"] = 3  # uneven shares over 2 DP ranks: 2 + 1 (the short rank pads its calls)
    return write_eval_config(tmp_path / "eval.yaml", data / "eval", tasks)


def test_training_hook_logs_eval_metrics_in_the_training_run(data, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    extra = [
        "train.steps=3",
        f"eval.harness={_hook_config(tmp_path, data)}",
        "eval.harness_interval_steps=2",
    ]
    out = run_ranks(2, _train, data, run_dir, extra)  # debug.yaml: TP=2
    assert [o["code"] for o in out] == [0, 0]
    run_id = out[0]["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key in (
        "eval/cap/CIDEr-D",
        "eval/vqa/accuracy",
        "eval/mc/accuracy",
        "eval/ppl/loss",
        "time/eval_harness",
    ):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [2, 3], (
            key
        )  # every 2 steps + the end
    for step in (2, 3):
        res = json.loads((run_dir / "eval" / f"step_{step:08d}.json").read_text())
        assert res["step"] == step and res["layout"]["tp"] == 2 and res["tasks"]["cap"]["num_examples"] == 3
        logged = client.get_metric_history(run_id, "eval/ppl/loss")[step - 2].value
        assert logged == pytest.approx(res["tasks"]["ppl"]["metrics"]["loss"])
    ppl = [m.value for m in client.get_metric_history(run_id, "eval/ppl/loss")]
    assert ppl[1] != ppl[0]  # the weights trained between the two evaluations
    assert "eval/step_00000003/step_00000003.json" in [
        a.path for a in client.list_artifacts(run_id, "eval/step_00000003")
    ]


def test_training_hook_under_zero3_dp2(data, tmp_path):
    run_dir = tmp_path / "z3"
    extra = [
        "parallel.tp=1",
        "train.zero_stage=3",
        "train.micro_batch_size=4",
        "train.global_batch_size=8",
        "train.steps=2",
        "tracking.enabled=false",
        f"eval.harness={_hook_config(tmp_path, data)}",
    ]
    out = run_ranks(2, _train, data, run_dir, extra)
    assert [o["code"] for o in out] == [0, 0]
    res = json.loads((run_dir / "eval" / "step_00000002.json").read_text())
    assert res["layout"] == {"tp": 1, "dp": 2, "world": 2}
    assert [
        len(json.loads((run_dir / "eval" / "step_00000002_predictions" / f"{n}.json").read_text()))
        for n in ("cap", "vqa")
    ] == [3, 8]
