"""The rendered sbatch script: options for several shapes, `bash -n`, and its signal/requeue logic.

The logic tests run the rendered script with stand-ins for srun/scontrol/scancel on PATH (a few
lines of bash each), so the trap -> forward -> exit 75 -> requeue path is checked in seconds;
tests/cluster/test_slurm_real.py runs the same script under a real SLURM.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from cluster.commands import TrainingJob
from cluster.sbatch import SbatchOptions, check_syntax, render_sbatch
from common.errors import UserError
from training.run_dir import RunDir

JOB = TrainingJob("configs/debug.yaml", ["train.steps=10", 'tracking.run_name=it\'s a "run" $HOME'])


def _render(tmp_path: Path, **kw) -> tuple[str, Path]:
    text = render_sbatch(SbatchOptions(**kw), JOB, RunDir(tmp_path / "run"), tmp_path, "/opt/venv/bin/python")
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.sh"
    path.write_text(text)
    return text, path


@pytest.mark.parametrize(
    "kw, expect",
    [
        ({}, ["#SBATCH --nodes=1", "NPROC_PER_NODE=1", "LAUNCHER=torchrun"]),
        (
            {"nodes": 4, "gpus_per_node": 8, "partition": "gpu", "time": "24:00:00", "account": "proj"},
            [
                "#SBATCH --nodes=4",
                "#SBATCH --gpus-per-node=8",
                "#SBATCH --partition=gpu",
                "#SBATCH --time=24:00:00",
                "#SBATCH --account=proj",
                "NPROC_PER_NODE=8",
            ],
        ),
        (
            {
                "nodes": 2,
                "gpus_per_node": 4,
                "launcher": "deepspeed",
                "cpus_per_task": 32,
                "qos": "high",
                "mem": "0",
                "extra_sbatch": ["--constraint=h100", "--exclusive"],
            },
            [
                "#SBATCH --cpus-per-task=32",
                "#SBATCH --qos=high",
                "#SBATCH --mem=0",
                "#SBATCH --constraint=h100",
                "#SBATCH --exclusive",
                "LAUNCHER=deepspeed",
                "OMP_NUM_THREADS:-8",
            ],
        ),
        (
            {"nodes": 16, "nproc_per_node": 2, "signal_lead_s": 120, "rdzv_host": "10.0.0.1"},
            ["#SBATCH --nodes=16", "NPROC_PER_NODE=2", "--signal=B:USR1@120", "METALM_RDZV_HOST:-10.0.0.1"],
        ),
    ],
)
def test_render_shapes(tmp_path, kw, expect):
    text, path = _render(tmp_path, **kw)
    check_syntax(path)  # bash -n
    for line in expect + ["#SBATCH --requeue", "#SBATCH --ntasks-per-node=1", "#SBATCH --open-mode=append"]:
        assert line in text, line
    assert "{{" not in text
    assert f"#SBATCH --output={(tmp_path / 'run').resolve()}/logs/slurm-%j.out" in text
    assert text.startswith("#!/bin/bash\n")


def test_train_args_survive_quoting(tmp_path):
    text, _ = _render(tmp_path)
    line = next(line for line in text.splitlines() if line.startswith("TRAIN_ARGS="))
    out = subprocess.run(
        ["bash", "-c", f'{line}\nprintf "%s\\n" "${{TRAIN_ARGS[@]}}"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == ["training", "--config", "configs/debug.yaml", *JOB.overrides]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"nodes": 0}, "--nodes"),
        ({"time": "tomorrow"}, "--time"),
        ({"launcher": "mpirun"}, "--launcher"),
        ({"partition": "gpu; rm -rf /"}, "--partition"),
        ({"extra_sbatch": ["constraint=h100"]}, "--sbatch"),
        ({"gpus_per_node": -1, "signal_lead_s": 0}, "2 problem"),
        ({"launcher": "deepspeed", "gpus_per_node": 8}, "--cpus-per-task >= 8"),
    ],
)
def test_bad_options_are_user_errors(tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        _render(tmp_path, **kw)


# ---- the script's logic with stand-in SLURM commands -------------------------------------------

FAKE_SRUN = """#!/bin/bash
# stand-in for srun: records its arguments, then plays $FAKE_MODE for one rank
echo "$@" > "$FAKE_DIR/srun.args"
echo $$ > "$FAKE_DIR/srun.pid"
write() { echo "$1" > "$METALM_EXIT_DIR/rank-0.exit"; echo "$1" > "$METALM_EXIT_DIR/rank-1.exit"; }
case "$FAKE_MODE" in
  ok) write 0; exit 0 ;;
  crash) write 0; echo 3 > "$METALM_EXIT_DIR/rank-1.exit"; exit 1 ;;
  preempt)
    trap 'write 75; exit 1' USR1      # the ranks save and exit 75; torchrun itself exits 1
    touch "$FAKE_DIR/ready"
    for _ in $(seq 300); do sleep 0.1; done
    exit 9 ;;
esac
"""
FAKE_SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$FAKE_DIR/calls"
sig=${1#--signal=}
kill -"$sig" "$(cat "$FAKE_DIR/srun.pid")"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_DIR/calls"
if [ "$1" = show ]; then echo n1; echo n2; fi
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("scontrol", FAKE_SCONTROL)):
        p = bin_dir / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_DIR=str(tmp_path),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="n[1-2]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_RESTART_COUNT="0",
    )
    return env


def _start(tmp_path, env, mode, **kw):
    _, script = _render(tmp_path, nodes=2, **kw)
    return subprocess.Popen(
        ["bash", str(script)],
        env=dict(env, FAKE_MODE=mode),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


def _calls(tmp_path) -> str:
    p = tmp_path / "calls"
    return p.read_text() if p.exists() else ""


def test_script_success_runs_torchrun_on_the_head_node(tmp_path, fake_slurm):
    proc = _start(tmp_path, fake_slurm, "ok")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    args = (tmp_path / "srun.args").read_text()
    assert "--rdzv-endpoint=n1:24242" in args and "--rdzv-id=4242-0" in args and "--nnodes=2" in args
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in args
    assert "-m cluster.worker training --config configs/debug.yaml" in args
    assert "requeue" not in _calls(tmp_path)
    assert "rank exit codes: 0 x2" in out
    # the script's own paths follow RunDir's layout
    assert (RunDir(tmp_path / "run").slurm_restart_logs("4242", 0).exit / "rank-0.exit").exists()


def test_script_rdzv_host_override(tmp_path, fake_slurm):
    proc = _start(tmp_path, dict(fake_slurm, METALM_RDZV_HOST="127.0.0.1", METALM_RDZV_PORT="29999"), "ok")
    proc.communicate(timeout=30)
    assert "--rdzv-endpoint=127.0.0.1:29999" in (tmp_path / "srun.args").read_text()


def test_script_crash_is_not_requeued(tmp_path, fake_slurm):
    proc = _start(tmp_path, fake_slurm, "crash")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "requeue" not in _calls(tmp_path)
    assert "training failed" in out


def test_script_usr1_is_forwarded_then_requeued(tmp_path, fake_slurm):
    proc = _start(tmp_path, fake_slurm, "preempt")
    deadline = time.monotonic() + 20
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "fake srun did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@N / scancel --batch does
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    calls = _calls(tmp_path)
    assert "scancel --signal=USR1 4242" in calls
    assert "scontrol requeue 4242" in calls
    assert "got SIGUSR1" in out and "requeueing job 4242" in out


def test_script_stops_requeueing_after_the_limit(tmp_path, fake_slurm):
    proc = _start(tmp_path, dict(fake_slurm, SLURM_RESTART_COUNT="3"), "preempt", max_requeues=3)
    deadline = time.monotonic() + 20
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 75, out
    assert "scontrol requeue" not in _calls(tmp_path)
    assert "not requeueing" in out


def test_script_requeues_when_the_warning_killed_ranks_before_a_checkpoint(tmp_path, fake_slurm):
    # the ranks die on USR1 without recording 75 (e.g. still starting): resume from latest anyway
    srun = Path(fake_slurm["PATH"].split(":")[0]) / "srun"
    srun.write_text(FAKE_SRUN.replace("trap 'write 75; exit 1' USR1", "trap 'exit 1' USR1"))
    proc = _start(tmp_path, fake_slurm, "preempt")
    deadline = time.monotonic() + 20
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "scontrol requeue 4242" in _calls(tmp_path)
    assert "signalled before a checkpoint could be committed" in out
