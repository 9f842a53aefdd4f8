"""Shared checks for the end-to-end launcher tests (processes, checkpoints, MLflow)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (launchers pass it on to their ranks), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The committed `latest` checkpoint and its trainer_state.json."""
    ckpts = run_dir / "checkpoints"
    name = (ckpts / "latest").read_text().strip()
    path = ckpts / name
    assert (path / "COMPLETE").is_file(), f"{path} is not committed"
    return path, json.loads((path / "trainer_state.json").read_text())


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def loss_steps(tracking_uri: str, run_id: str) -> list[int]:
    """Steps of the run's `loss` metric history, in order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def mlflow_run(tracking_uri: str, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
