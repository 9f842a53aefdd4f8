"""Real training jobs for the end-to-end fault tests: `python -m training` ranks started as srun does
(one process per rank, RANK/WORLD_SIZE/MASTER_* in the environment), so each rank's exit code and
PID are known exactly and a signal or SIGKILL can target one rank."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.distributed import free_port
from tests.paths import REPO


def make_data(root: Path) -> Path:
    from tests.training.shards import make_dataset

    return make_dataset(root)


def overrides(data: Path, run_dir: Path, **extra) -> list[str]:
    from tests.training.shards import config_overrides

    base = {  # the layout the tests name (TP=2 x DP=1 with 2 ranks, ZeRO-1, fp32), whatever debug.yaml says
        "parallel.tp": 2,
        "train.zero_stage": 1,
        "train.precision": "fp32",
        "model.dropout": 0.1,  # dropout on: exact resume needs every RNG state (incl. the Megatron tracker)
        "model.attention_dropout": 0.1,
        "eval.caption_samples": 0,
        "eval.batches": 0,
        "train.steps": 12,
        "checkpoint.interval_steps": 4,
        "train.log_interval": 1,
    }
    base.update(extra)
    return config_overrides(data, run_dir, **base)


class Job:
    def __init__(self, args: list[str], nproc: int = 2, env: dict | None = None, log_dir: Path | None = None):
        port = free_port()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.t0 = time.monotonic()
        for r in range(nproc):
            e = {
                **os.environ,
                "RANK": str(r),
                "WORLD_SIZE": str(nproc),
                "LOCAL_RANK": str(r),
                "LOCAL_WORLD_SIZE": str(nproc),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
                **(env or {}),
            }
            log = self.log_dir / f"job-{int(self.t0 * 1000)}-rank{r}.out"
            self.logs.append(log)
            with open(log, "w") as f:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "training", "--config", "configs/debug.yaml", *args],
                        cwd=REPO,
                        env=e,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                    )
                )

    def output(self, rank: int = 0) -> str:
        return self.logs[rank].read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 180, rank: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.output(rank)):
                return
            if all(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"{pattern!r} not seen in rank {rank} output:\n{self.output(rank)[-3000:]}")

    def signal(self, rank: int, sig: int) -> None:
        os.kill(self.procs[rank].pid, sig)

    def wait(self, timeout: float = 240) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"job did not finish within {timeout}s:\n{self.output(0)[-3000:]}"
                ) from None
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def run(
    args: list[str], log_dir: Path, env: dict | None = None, timeout: float = 240, nproc: int = 2
) -> tuple[list[int], str]:
    job = Job(args, nproc=nproc, env=env, log_dir=log_dir)
    codes = job.wait(timeout)
    return codes, job.output(0)


def run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]


def logged_losses(db: Path, run: str, key: str = "loss") -> dict[int, list[float]]:
    """Every `key` value MLflow holds for `run`, by step (a step redone after a resume appears twice)."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT step, value, is_nan FROM metrics WHERE run_uuid=? AND key=? ORDER BY timestamp",
            (run, key),
        ).fetchall()
    out: dict[int, list[float]] = {}
    for step, value, is_nan in rows:
        out.setdefault(int(step), []).append(float("nan") if is_nan else float(value))
    return out
