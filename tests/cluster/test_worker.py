"""cluster/worker.py: exit codes recorded per rank, early SIGUSR1 held, SLURM rank variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.supervisor import job_exit_code
from cluster.worker import fill_rank_env_from_slurm, read_exit_codes
from tests.paths import REPO

MODULES = {
    "exits75.py": "import sys\nsys.exit(75)\n",
    "raises.py": "raise RuntimeError('boom')\n",
    "argv.py": "import sys\nprint(' '.join(sys.argv[1:]))\n",
    # installs its USR1 handler only after 1.5 s (like training after its imports), then waits for it
    "late_handler.py": (
        "import signal, sys, time\n"
        "got = []\n"
        "time.sleep(1.5)\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))\n"
        "for _ in range(100):\n"
        "    if got: sys.exit(75)\n"
        "    time.sleep(0.05)\n"
        "sys.exit(0)\n"
    ),
    "never_handles.py": "import time\ntime.sleep(20)\n",
}


@pytest.fixture
def mods(tmp_path):
    d = tmp_path / "mods"
    d.mkdir()
    for name, body in MODULES.items():
        (d / name).write_text(body)
    return d


def _run(
    mods: Path,
    tmp_path: Path,
    module: str,
    *args: str,
    as_file: bool = False,
    env: dict | None = None,
    signal_after: float | None = None,
) -> tuple[int, dict[int, int], str]:
    exit_dir = tmp_path / "exit"
    full_env = dict(
        os.environ, PYTHONPATH=f"{mods}:{REPO}", METALM_EXIT_DIR=str(exit_dir), RANK="3", **(env or {})
    )
    entry = [str(REPO / "cluster" / "worker.py")] if as_file else ["-m", "cluster.worker"]
    proc = subprocess.Popen(
        [sys.executable, *entry, module, *args],
        env=full_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if signal_after is not None:
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, read_exit_codes(exit_dir), out


def test_exit_code_is_recorded(mods, tmp_path):
    rc, codes, _ = _run(mods, tmp_path, "exits75")
    assert rc == 75 and codes == {3: 75}
    assert job_exit_code(1, tmp_path / "exit") == 75  # torchrun's 1 becomes the ranks' 75


def test_exception_is_recorded_as_failure(mods, tmp_path):
    rc, codes, out = _run(mods, tmp_path, "raises")
    assert rc == 1 and codes == {3: 1}
    assert "RuntimeError: boom" in out
    assert job_exit_code(1, tmp_path / "exit") == 1


def test_arguments_pass_through_and_file_entry_works(mods, tmp_path):
    rc, codes, out = _run(mods, tmp_path, "argv", "--config", "x.yaml", "a.b=1", as_file=True)
    assert rc == 0 and codes == {3: 0}
    assert out.strip() == "--config x.yaml a.b=1"


def test_early_usr1_is_delivered_once_the_program_handles_it(mods, tmp_path):
    rc, codes, out = _run(mods, tmp_path, "late_handler", signal_after=0.7)
    assert rc == 75, out  # without the worker, SIGUSR1 at 0.7 s would have killed the process
    assert codes == {3: 75}


def test_early_usr1_not_taken_over_ends_the_rank_after_the_grace(mods, tmp_path):
    t0 = time.monotonic()
    rc, codes, _ = _run(
        mods, tmp_path, "never_handles", env={"METALM_EARLY_SIGNAL_GRACE_S": "0.5"}, signal_after=0.7
    )
    assert rc == 128 + signal.SIGUSR1 and codes == {3: 128 + signal.SIGUSR1}
    assert time.monotonic() - t0 < 10


def test_rank_variables_from_slurm():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)"}
    fill_rank_env_from_slurm(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (
        "5",
        "8",
        "1",
        "4",
    )
    env = {"RANK": "0", "SLURM_PROCID": "5"}  # a launcher already set them: untouched
    fill_rank_env_from_slurm(env)
    assert env == {"RANK": "0", "SLURM_PROCID": "5"}
