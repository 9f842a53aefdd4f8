"""Fault injection on real `python -m training` jobs (2 ranks, debug MetaLM, fp32, tiny data).

Each job pays ~20 s of imports on 2 cores, so scenarios are chained: one chain of launches goes
through a crash while writing a checkpoint, a preemption signal and a final resume, and its losses
must equal an uninterrupted run step for step."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import exit_codes
from tests.training.checkpoint.jobs import REPO, Job, logged_losses, make_data, overrides, run, run_id

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ft_data"))


def _latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text()


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted TP=2 x DP=1 ZeRO-1 run of 12 steps (validation loss at the end)."""
    tmp = tmp_path_factory.mktemp("straight")
    run_dir = tmp / "run"
    codes, out = run(overrides(data, run_dir, **{"eval.batches": 2}), tmp / "logs")
    assert codes == [0, 0], out[-3000:]
    db = run_dir.parent / "mlflow.db"
    return run_dir, logged_losses(db, run_id(run_dir)), logged_losses(db, run_id(run_dir), "val_loss")[12][0]


def test_crash_while_saving_then_preemption_then_resume_is_exact(data, straight, tmp_path):
    """TP=2 x DP=1, ZeRO-1: straight 12 steps == (crash in checkpoint 8) + (SIGUSR1) + (resume to 12)."""
    straight_dir, straight, _ = straight
    dir_ = tmp_path / "b" / "run"
    assert sorted(straight) == list(range(1, 13))

    # 1. every rank is SIGKILLed after writing the shards of checkpoint 8, before the commit
    codes, out = run(
        overrides(data, dir_), tmp_path / "logs", env={"METALM_TEST_CKPT_CRASH": "8:after_shards"}
    )
    assert codes == [-signal.SIGKILL, -signal.SIGKILL], out[-3000:]
    partial = dir_ / "checkpoints" / "step_00000008"
    assert partial.is_dir() and not (partial / "COMPLETE").exists()
    assert _latest(dir_) == "step_00000004"

    # 2. resume: the partial checkpoint is reported and skipped; SIGUSR1 to one rank -> save + exit 75
    job = Job(overrides(data, dir_), log_dir=tmp_path / "logs")
    job.wait_for(r"step 6/12")
    job.signal(1, signal.SIGUSR1)
    codes = job.wait()
    out = job.output(0)
    assert codes == [exit_codes.PREEMPTED] * 2, out[-3000:]
    assert "step_00000008: no COMPLETE marker" in out and "resumed at step 4" in out
    stopped = json.loads((dir_ / "checkpoints" / _latest(dir_) / "trainer_state.json").read_text())["step"]
    assert 6 <= stopped < 12

    # 3. resume again and finish
    codes, out = run(overrides(data, dir_), tmp_path / "logs")
    assert codes == [0, 0], out[-3000:]
    assert f"resumed at step {stopped}" in out
    resumed = logged_losses(dir_.parent / "mlflow.db", run_id(dir_))  # one MLflow run across the 3 jobs
    assert sorted(resumed) == list(range(1, 13))
    for step, values in resumed.items():
        assert all(v == straight[step][0] for v in values), (step, values, straight[step])  # bit-exact
    # the data loader is where the uninterrupted run's is
    final = "step_00000012/trainer_state.json"
    a = json.loads((straight_dir / "checkpoints" / final).read_text())
    b = json.loads((dir_ / "checkpoints" / final).read_text())
    assert a["dataloader"] == b["dataloader"] and a["consumed_samples"] == b["consumed_samples"]


def test_kill9_of_one_rank_exits_without_hanging_and_resumes(data, tmp_path):
    """TP=1 x DP=2, ZeRO-2: SIGKILL one rank mid-run; the other leaves within the timeout; resume redoes exactly;
    then the run continues at DP=1 with its optimizer state (universal checkpoint)."""
    dir_ = tmp_path / "run"
    ov = overrides(
        data,
        dir_,
        **{
            "parallel.tp": 1,
            "train.micro_batch_size": 4,
            "train.zero_stage": 2,
            "train.watchdog_timeout_s": 20,
            "parallel.timeout_minutes": 1,
        },
    )
    job = Job(ov, log_dir=tmp_path / "logs")
    job.wait_for(r"step 6/12")
    job.signal(1, signal.SIGKILL)
    t0 = time.monotonic()
    codes = job.wait(timeout=90)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, job.output(0)[-3000:]
    assert time.monotonic() - t0 < 60  # the watchdog (20 s) at the latest; gloo usually notices at once
    assert _latest(dir_) == "step_00000004"

    codes, out = run(ov, tmp_path / "logs")
    assert codes == [0, 0], out[-3000:]
    assert "resumed at step 4" in out
    losses = logged_losses(dir_.parent / "mlflow.db", run_id(dir_))
    redone = [s for s, v in losses.items() if len(v) > 1]
    assert 5 in redone  # steps after checkpoint 4 ran twice, with identical losses
    for s in redone:
        assert len(set(losses[s])) == 1, (s, losses[s])

    # the same run goes on with one process (DP 2 -> 1): the ZeRO-2 optimizer state is re-partitioned
    # through a DeepSpeed universal checkpoint of the real MetaLM (Megatron layers and all)
    codes, out = run([*ov, "train.steps=14"], tmp_path / "logs", nproc=1)
    assert codes == [0], out[-3000:]
    assert "converting it to a DeepSpeed universal checkpoint" in out and "resumed at step 12" in out
    losses = logged_losses(dir_.parent / "mlflow.db", run_id(dir_))
    assert all(math.isfinite(losses[s][0]) for s in (13, 14)) and losses[13][0] < losses[1][0]


def test_nan_steps_skipped_then_rollback_then_stop(data, tmp_path):
    """NaN at step 3: skipped. NaN from step 7 on: 2 skips, rollback to checkpoint 8, 3 more, exit 77."""
    dir_ = tmp_path / "run"
    codes, out = run(
        overrides(data, dir_, **{"train.max_bad_steps": 2}),
        tmp_path / "logs",
        env={"METALM_TEST_NAN_STEPS": "3,7+"},
    )
    assert codes == [exit_codes.BAD_STEPS] * 2, out[-3000:]
    assert "step 3 skipped" in out and "step 4/12 | loss" in out
    assert "rolling back to the last checkpoint once" in out and "resumed at step 8" in out
    assert "again after rolling back" in out
    losses = logged_losses(dir_.parent / "mlflow.db", run_id(dir_))
    assert math.isnan(losses[3][0]) and all(math.isfinite(losses[s][0]) for s in (1, 2, 4, 5, 6))


def test_hung_rank_is_detected_by_the_watchdog(data, tmp_path):
    """Rank 1 stops making progress at step 3 (test hook): its watchdog dumps its stacks and exits 76; rank 0,
    blocked in a collective with it, leaves too (its own watchdog, 76, or gloo's "connection closed", 1)."""
    dir_ = tmp_path / "run"
    t0 = time.monotonic()
    codes, out = run(
        overrides(data, dir_, **{"train.watchdog_timeout_s": 4}),
        tmp_path / "logs",
        env={"METALM_TEST_STALL_STEP": "3:1"},
        timeout=120,
    )
    assert codes[1] == exit_codes.HANG and codes[0] in (exit_codes.HANG, exit_codes.FAILURE), (
        codes,
        out[-3000:],
    )
    assert time.monotonic() - t0 < 110
    dump = (dir_ / "hangs" / "rank1.txt").read_text()
    assert "last completed step: 2" in dump and "in stall" in dump


def test_export_then_start_at_another_tp(data, straight, tmp_path):
    """Export the TP=2 run's last checkpoint; a TP=1 run started from it has the same validation loss (1e-5)."""
    straight_dir, _, val_loss = straight
    out = tmp_path / "export" / "metalm.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.export",
            "--checkpoint",
            str(straight_dir / "checkpoints" / "step_00000012"),
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out.parent / "config.yaml").is_file() and (out.parent / "tokenizer").is_dir()
    dir_ = tmp_path / "run"
    # one process, TP=1: the same validation batches; lr ~0 so the one training step leaves the weights
    ov = overrides(
        data,
        dir_,
        **{
            "parallel.tp": 1,
            "checkpoint.load_weights_from": out,
            "optim.lr": 1e-12,
            "train.steps": 1,
            "checkpoint.interval_steps": 0,
            "eval.batches": 2,
        },
    )
    codes, log = run(ov, tmp_path / "logs", nproc=1)
    assert codes == [0], log[-3000:]
    assert "initialized weights from" in log
    val = logged_losses(dir_.parent / "mlflow.db", run_id(dir_), "val_loss")[1][0]
    assert val == pytest.approx(val_loss, abs=1e-5)
