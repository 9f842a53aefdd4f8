"""End to end with the real launcher: `torchrun --nproc-per-node 2 -m training` at TP=2 x DP=1 ZeRO-1 and
TP=1 x DP=2 ZeRO-2 (loss decreases, checkpoint committed, MLflow run readable through the client), then
`-m training.learning_check` on the first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.paths import DEBUG_CONFIG, REPO
from tests.training.shards import config_overrides

CONFIG = DEBUG_CONFIG
LAYOUTS = {
    "tp2_zero1": ["parallel.tp=2", "train.zero_stage=1"],
    "dp2_zero2": [
        "parallel.tp=1",
        "train.zero_stage=2",
        "train.micro_batch_size=4",
        "train.global_batch_size=8",
    ],
}


def torchrun(module: str, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        module,
        *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_two_process_training_run(tiny_data, tmp_path, layout):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / layout
    ov = config_overrides(
        tiny_data,
        run_dir,
        **{
            "train.steps": 12,
            "checkpoint.interval_steps": 6,
            "data.num_workers": 1,
            "optim.lr": 3e-3,
            "eval.interval_steps": 6,
        },
    )
    p = torchrun("training", "--config", str(CONFIG), *ov, *LAYOUTS[layout])
    assert p.returncode == 0, p.stderr[-4000:]
    assert "step 12/12 | loss" in p.stderr  # the rank-0 progress line

    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step_00000012" / "COMPLETE").is_file() and (
        ckpts / "latest"
    ).read_text().strip() == "step_00000012"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "logs" / "train_rank1.log").is_file()

    info = json.loads((run_dir / "mlflow_run.json").read_text())
    c = MlflowClient(info["tracking_uri"])
    run = c.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["parallel.tp"] == LAYOUTS[layout][0].split("=")[1]
    assert run.data.params["train.zero_stage"] == LAYOUTS[layout][1].split("=")[1]
    assert run.data.tags["parallel.layout"] == {"tp2_zero1": "tp2xdp1", "dp2_zero2": "tp1xdp2"}[layout]
    loss = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(loss) == 12 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    for name in (
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "mfu",
        "step_time",
        "data_wait_frac",
        "memory_gb",
        "val_loss",
    ):
        assert name in run.data.metrics, name
    arts = {f.path for f in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "ds_config.json", "tokenizer", "captions"} <= arts, arts

    if layout == "tp2_zero1":  # the learning-check CLI on this run (figures printed and saved; exit by gap)
        p = torchrun(
            "training.learning_check",
            "--config",
            str(run_dir / "config.yaml"),
            "--pairs",
            "32",
            "--captions",
            "2",
            "--min-gap",
            "-100",
        )
        assert p.returncode == 0, p.stderr[-4000:]
        assert "learning check at step 12 on 32 held-out pairs" in p.stdout and "PASS" in p.stdout
        r = json.loads((run_dir / "learning_check.json").read_text())
        assert r["step"] == 12 and len(r["captions"]) == 2 and r["true_image_loss"] > 0
        assert "learning_check/gap" in c.get_run(info["run_id"]).data.metrics
