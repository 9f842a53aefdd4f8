"""A preemption signal that arrives while `python -m training` is still setting up (imports, process
group, model, DeepSpeed, loaders: minutes on a big job) is kept, not fatal: the job trains to the first
step boundary, commits a checkpoint and exits 75, so the scheduler's requeue loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import exit_codes
from tests.paths import REPO
from tests.training.shards import config_overrides

ROOT = REPO


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler installed for `sig` (SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.slow
def test_usr1_during_setup_checkpoints_at_the_first_step_and_exits_75(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    ov = config_overrides(
        tiny_data, run_dir, **{"parallel.tp": 1, "train.steps": 50, "checkpoint.interval_steps": 100}
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tmp_path / "out.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training", "--config", str(ROOT / "configs" / "debug.yaml"), *ov],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not catches(proc.pid, signal.SIGUSR1):
            assert proc.poll() is None and time.monotonic() < deadline, "no USR1 handler was installed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        sent_before_model = "MetaLM debug parameters" not in log.read_text()  # logged once the model is built
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == exit_codes.PREEMPTED, out[-4000:]
    assert sent_before_model
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert (run_dir / "checkpoints" / "step_00000001" / "COMPLETE").is_file()
