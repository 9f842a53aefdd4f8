"""The debug training through `./launch.sh slurm` on a real SLURM: munged + slurmctld + two slurmd.

1. `--nodes 2` (torchrun, the default): one torchrun per node, c10d rendezvous across them, TP=2
   spanning the two nodes. Mid-run, `scancel --signal=USR1 --batch` (what `--signal=B:USR1@N` does
   at the time limit) -> the batch shell forwards it -> the ranks save and exit 75 -> `scontrol
   requeue` -> the job runs again (SLURM_RESTART_COUNT=1), resumes from `latest` and completes:
   checkpoint committed, step count continuous, one MLflow run with every step.
2. `--nodes 2 --launcher deepspeed`: a hostfile from the node list and `deepspeed --launcher slurm`;
   the job completes, the checkpoint is committed, the MLflow run is there.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from cluster.testbed.slurm import LocalSlurm
from cluster.worker import read_exit_codes
from common.exit_codes import PREEMPTED

from .conftest import LAUNCH, REPO, train_overrides
from .helpers import latest_checkpoint, loss_steps, mlflow_run

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

CONFIG = str(REPO / "configs" / "debug.yaml")
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def submit(slurm: LocalSlurm, overrides: list[str], *extra: str) -> str:
    cmd = [
        LAUNCH,
        "slurm",
        "--nodes",
        "2",
        "--rdzv-host",
        "127.0.0.1",
        "--time",
        "15:00",
        *extra,
        CONFIG,
        *overrides,
    ]
    res = subprocess.run(cmd, env=slurm.env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"submitted job (\d+)", res.stdout)
    assert m, res.stdout
    return m.group(1)


def wait_job(slurm: LocalSlurm, job_id: str, timeout: float, until=None) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = slurm.job_info(job_id)
        if (until or (lambda i: i.get("JobState") in TERMINAL))(info):
            return info
        time.sleep(1)
    raise TimeoutError(f"job {job_id} not done in {timeout:.0f}s: {info}\n{slurm.diagnostics()}")


def batch_log(run_dir: Path, job_id: str) -> str:
    p = run_dir / "logs" / f"slurm-{job_id}.out"
    return p.read_text() if p.exists() else "(no batch log)"


def _tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{run_dir.parent / 'mlflow.db'}"  # the training default: next to the run folder


def test_two_node_job_preempted_requeued_resumes_and_completes(slurm_cluster, debug_data, tmp_path):
    run_dir = tmp_path / "run"
    steps = 40
    # TP=2 across the two nodes; 4 micro-batches per step keep the run busy long enough to be signalled
    overrides = train_overrides(debug_data, run_dir, steps=steps, tp=2, dp=1, accum=4, ckpt_every=steps)
    job = submit(slurm_cluster, overrides, "--signal-lead", "60")
    rank_log = run_dir / "logs" / "train_rank0.log"

    def at_step(n: int) -> bool:
        text = rank_log.read_text() if rank_log.exists() else ""
        done = [int(s) for s in re.findall(rf"step (\d+)/{steps}", text)]
        return bool(done) and max(done) >= n

    deadline = time.monotonic() + 300
    while not at_step(3):
        state = slurm_cluster.job_info(job).get("JobState")
        assert state not in TERMINAL and time.monotonic() < deadline, f"{state}\n{batch_log(run_dir, job)}"
        time.sleep(0.5)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)

    info = wait_job(
        slurm_cluster,
        job,
        timeout=500,
        until=lambda i: i.get("JobState") in TERMINAL and i.get("Restarts") not in (None, "0"),
    )
    log = batch_log(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log}"
    assert info["NumNodes"] == "2" and info["NodeList"] == "n[1-2]" and info["Restarts"] == "1", log
    assert "nodes n[1-2], head n1, rendezvous 127.0.0.1:" in log
    assert (
        "got SIGUSR1" in log and f"requeueing job {job} (restart 1)" in log and f"job {job} restart 1:" in log
    )

    logs = run_dir / "logs" / f"slurm-{job}"
    assert read_exit_codes(logs / "restart-0" / "exit") == {0: PREEMPTED, 1: PREEMPTED}
    assert read_exit_codes(logs / "restart-1" / "exit") == {0: 0, 1: 0}
    for attempt in ("restart-0", "restart-1"):  # one torchrun per node, its output in node-<N>.log
        assert (logs / attempt / "node-0.log").is_file() and (logs / attempt / "node-1.log").is_file()

    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    preempt_step = int(checkpoints[0].split("_")[1])
    assert 3 <= preempt_step < steps, checkpoints
    assert f"resumed at step {preempt_step}" in rank_log.read_text()

    _, state = latest_checkpoint(run_dir)
    assert state["step"] == steps and state["parallel"] == {"tp": 2, "dp": 1, "world": 2}
    first = (run_dir / "checkpoints" / checkpoints[0] / "trainer_state.json").read_text()
    assert state["mlflow_run_id"] in first  # the requeued job continued the same MLflow run
    uri = _tracking_uri(run_dir)
    assert loss_steps(uri, state["mlflow_run_id"]) == list(range(1, steps + 1))  # every step once, no gap
    run = mlflow_run(uri, state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["slurm_job_id"] == job


def test_two_node_job_with_the_deepspeed_launcher(slurm_cluster, debug_data, tmp_path):
    run_dir = tmp_path / "run"
    steps = 3
    overrides = train_overrides(debug_data, run_dir, steps=steps, tp=1, dp=2, ckpt_every=steps)
    job = submit(slurm_cluster, overrides, "--launcher", "deepspeed")
    info = wait_job(slurm_cluster, job, timeout=400)
    log = batch_log(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log}"
    assert info["NumNodes"] == "2" and info["NodeList"] == "n[1-2]"
    attempt = run_dir / "logs" / f"slurm-{job}" / "restart-0"
    assert read_exit_codes(attempt / "exit") == {0: 0, 1: 0}
    # DeepSpeed's srun started each rank; the hostfile was made from SLURM_JOB_NODELIST
    assert (attempt / "hostfile").read_text() == "n1 slots=1\nn2 slots=1\n"
    assert (attempt / "rank-0.log").is_file() and (attempt / "rank-1.log").is_file()
    _, state = latest_checkpoint(run_dir)
    assert state["step"] == steps and state["parallel"] == {"tp": 1, "dp": 2, "world": 2}
    uri = _tracking_uri(run_dir)
    assert mlflow_run(uri, state["mlflow_run_id"]).info.status == "FINISHED"
    assert loss_steps(uri, state["mlflow_run_id"]) == list(range(1, steps + 1))
