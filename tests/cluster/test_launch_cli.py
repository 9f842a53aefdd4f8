"""./launch.sh modes: --dry-run output, config validation before anything starts, help text."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.mlflow_server import MlflowServerOptions, allowed_host_headers, mlflow_server_command
from common.errors import UserError
from common.exit_codes import USER_ERROR

from .conftest import LAUNCH, REPO

CONFIG = str(REPO / "configs" / "debug.yaml")
# configs/debug.yaml reads its vocabulary from demo_out/tokenizer; the dry runs skip the data checks
BASE = ["--skip-data-check", CONFIG, "model.vocab_size=512", "train.steps=20"]


def test_local_dry_run(capsys, tmp_path):
    assert main(["local", "--nproc", "2", "--dry-run", *BASE, f"train.run_dir={tmp_path}/run"]) == 0
    out = capsys.readouterr().out.splitlines()
    cmd = shlex.split(out[-1])
    assert cmd[0].startswith("METALM_EXIT_DIR=") and "torch.distributed.run" in cmd
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd
    i = cmd.index("cluster.worker")
    assert cmd[i + 1 :] == [
        "training",
        "--config",
        CONFIG,
        "model.vocab_size=512",
        "train.steps=20",
        f"train.run_dir={tmp_path}/run",
    ]
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_local_multinode_dry_run(capsys):
    args = [
        "local",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--rdzv-endpoint",
        "10.0.0.1:29400",
        "--dry-run",
        *BASE,
    ]
    assert main(args) == 0
    cmd = capsys.readouterr().out.splitlines()[-1]
    assert "--nnodes=2" in cmd and "--rdzv-backend=c10d" in cmd and "--rdzv-endpoint=10.0.0.1:29400" in cmd
    assert main(["local", "--nnodes", "2", "--dry-run", *BASE]) == USER_ERROR  # no rendezvous endpoint


def test_deepspeed_dry_run(capsys, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("gpu1 slots=1\ngpu2 slots=1\n")
    args = [
        "deepspeed",
        "--hostfile",
        str(hosts),
        "--master-addr",
        "10.0.0.1",
        "--ssh-port",
        "2222",
        "--dry-run",
        *BASE,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 host(s), 2 rank(s)" in out
    cmd = shlex.split(out.splitlines()[-1])
    assert cmd[1:4] == ["-m", "deepspeed.launcher.runner", "--hostfile"]
    for flag in ("--launcher", "pdsh", "--master_addr", "10.0.0.1", "--ssh_port", "2222", "--no_local_rank"):
        assert flag in cmd
    assert cmd[cmd.index("--no_local_rank") + 1].endswith("cluster/worker.py")


def test_slurm_dry_run_prints_a_valid_script(capsys, tmp_path):
    args = [
        "slurm",
        "--nodes",
        "2",
        "--gpus-per-node",
        "1",
        "--partition",
        "gpu",
        "--time",
        "1:00:00",
        "--dry-run",
        *BASE,
        f"train.run_dir={tmp_path}/run",
    ]
    assert main(args) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/bin/bash\n")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=gpu" in script
    # the job reads a frozen copy of the config, written next to the script at submit time
    assert f"--config {tmp_path}/run/logs/sbatch-" in script
    p = tmp_path / "s.sh"
    p.write_text(script)
    assert subprocess.run(["bash", "-n", str(p)]).returncode == 0
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", [["local", "--nproc", "2"], ["slurm", "--nodes", "3"]])
def test_config_is_validated_before_launch(caplog, mode):
    # TP=2 cannot divide 3 ranks / a batch of 20 over 2 DP ranks: reported, nothing started
    args = [
        *mode,
        "--dry-run",
        "--skip-data-check",
        CONFIG,
        "model.vocab_size=512",
        "train.global_batch_size=33",
        "train.bogus=1",
    ]
    assert main(args) == USER_ERROR
    assert "unknown config key 'train.bogus'" in caplog.text


def test_missing_hostfile_is_a_user_error(caplog, tmp_path):
    assert main(["deepspeed", "--hostfile", str(tmp_path / "nope"), "--dry-run", *BASE]) == USER_ERROR
    assert "does not exist" in caplog.text


def test_slurm_without_sbatch_is_a_user_error(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert main(["slurm", "--nodes", "2", *BASE, f"train.run_dir={tmp_path}/run"]) == USER_ERROR
    assert "`sbatch` was not found" in caplog.text


def test_mlflow_server_command(tmp_path):
    opts = MlflowServerOptions(
        host="0.0.0.0",
        port=5123,
        backend_store_uri=f"sqlite:///{tmp_path}/m.db",
        artifacts_destination=str(tmp_path / "art"),
        allowed_hosts="mlflow.example.org",
    )
    cmd = mlflow_server_command(opts, "python")
    assert cmd[:4] == ["python", "-m", "mlflow", "server"]
    assert cmd[cmd.index("--port") + 1] == "5123" and "--serve-artifacts" in cmd
    hosts = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert "mlflow.example.org:*" in hosts and "localhost:*" in hosts
    assert set(allowed_host_headers(opts)) == set(hosts)
    with pytest.raises(UserError, match="does not exist"):
        mlflow_server_command(
            MlflowServerOptions(backend_store_uri="sqlite:////nonexistent/dir/m.db"), "python"
        )


def test_mlflow_server_dry_run_relative_sqlite_made_absolute(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["mlflow-server", "--backend-store-uri", "sqlite:///mlflow.db", "--dry-run"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"


def test_launch_sh_help_documents_every_mode():
    out = subprocess.run([LAUNCH, "--help"], capture_output=True, text=True, check=True).stdout
    for mode in ("local", "deepspeed", "slurm", "mlflow-server", "hostfile", "75 preempted"):
        assert mode in out
    for mode in ("local", "deepspeed", "slurm", "mlflow-server"):
        sub = subprocess.run([LAUNCH, mode, "--help"], capture_output=True, text=True, check=True).stdout
        assert "--dry-run" in sub
    assert Path(LAUNCH).stat().st_mode & 0o111
