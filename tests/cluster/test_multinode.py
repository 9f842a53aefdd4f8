"""Multi-node launches without a cluster, with the real training on the tiny dataset.

- two `./launch.sh local --nnodes 2 --node-rank 0/1` (torchrun, c10d rendezvous on loopback) train
  the debug model together, logging to an MLflow server started with `./launch.sh mlflow-server`;
- `./launch.sh deepspeed --launcher pdsh` over a hostfile with two hosts that are this machine
  reached over ssh (one sshd per host on a loopback port);
- `./launch.sh local` turns SIGUSR1 into a checkpoint and exit 75 (the contract trainer).

Each simulated node runs in its own mount namespace with a private /dev/shm, as on separate
machines (mosaicml-streaming's per-node shared memory would collide otherwise).
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from cluster.testbed.daemons import free_port, port_open, private_shm
from cluster.worker import read_exit_codes
from common.exit_codes import PREEMPTED

from .conftest import LAUNCH, REPO, train_overrides
from .helpers import latest_checkpoint, loss_steps, mlflow_run, stop, wait_http_ok

CONFIG = str(REPO / "configs" / "debug.yaml")


@pytest.mark.slow
def test_two_torchrun_nodes_train_together_logging_to_mlflow_server(node_isolation, debug_data, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            LAUNCH,
            "mlflow-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--artifacts-destination",
            str(tmp_path / "art"),
        ],
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    nodes: list[subprocess.Popen] = []
    try:
        wait_http_ok(f"{uri}/health", 120, server)
        run_dir = tmp_path / "run"
        steps = 4
        overrides = train_overrides(
            debug_data, run_dir, steps=steps, tp=1, dp=2, ckpt_every=steps, tracking_uri=uri
        )
        rdzv = f"127.0.0.1:{free_port()}"
        for rank in (0, 1):
            cmd = [
                LAUNCH,
                "local",
                "--nproc",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--rdzv-endpoint",
                rdzv,
                "--rdzv-id",
                "two-nodes",
                CONFIG,
                *overrides,
            ]
            log = open(tmp_path / f"node{rank}.log", "w")  # noqa: SIM115
            nodes.append(subprocess.Popen(private_shm(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
        for rank, proc in enumerate(nodes):
            rc = proc.wait(timeout=400)
            assert rc == 0, f"node {rank} exited {rc}:\n" + (tmp_path / f"node{rank}.log").read_text()[-4000:]

        path, state = latest_checkpoint(run_dir)
        assert state["step"] == steps and state["parallel"]["world"] == 2 and state["parallel"]["dp"] == 2
        # one world of 2 ranks across the two launchers: each recorded one global rank, exit 0
        per_node = [read_exit_codes(d) for d in sorted(run_dir.glob("logs/local-node*/exit"))]
        assert len(per_node) == 2 and all(len(codes) == 1 for codes in per_node)
        assert {**per_node[0], **per_node[1]} == {0: 0, 1: 0}
        run = mlflow_run(uri, state["mlflow_run_id"])  # read back through the server
        assert run.info.status == "FINISHED"
        assert run.data.tags["parallel.world_size"] == "2"
        assert loss_steps(uri, state["mlflow_run_id"]) == list(range(1, steps + 1))
    finally:
        for proc in nodes:
            stop(proc)
        stop(server)
        server_log.close()
    assert server.returncode is not None
    deadline = time.monotonic() + 10
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(port), "the MLflow server still listens after it was stopped"


@pytest.mark.slow
@pytest.mark.cluster
def test_deepspeed_pdsh_launch_on_two_ssh_hosts(ssh_hosts, debug_data, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    run_dir = tmp_path / "run"
    steps = 3
    # TP=2 across the two hosts: every step crosses "machines"
    overrides = train_overrides(debug_data, run_dir, steps=steps, tp=2, dp=1, ckpt_every=steps)
    cmd = [
        LAUNCH,
        "deepspeed",
        "--hostfile",
        str(hostfile),
        "--launcher",
        "pdsh",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "--no-ssh-check",
        CONFIG,
        *overrides,
    ]
    res = subprocess.run(cmd, env=ssh_hosts.env(), capture_output=True, text=True, timeout=500, cwd=REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "node-a:" in out and "node-b:" in out  # pdsh ran one launcher on each host
    _, state = latest_checkpoint(run_dir)
    assert state["step"] == steps and state["parallel"] == {"tp": 2, "dp": 1, "world": 2}
    (exit_dir,) = run_dir.glob("logs/deepspeed-*/exit")
    assert read_exit_codes(exit_dir) == {0: 0, 1: 0}


@pytest.mark.slow
def test_local_mode_usr1_checkpoints_and_exits_75(tmp_path):
    """SIGUSR1 to ./launch.sh local reaches the ranks through torchrun; the launcher exits 75."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"train: {{run_dir: {tmp_path}/run, steps: 200, global_batch_size: 4, micro_batch_size: 2}}\n"
        "data: {span_min_len: 8, span_max_len: 16}\nparallel: {tp: 1}\n"
    )
    cmd = [
        LAUNCH,
        "local",
        "--nproc",
        "2",
        "--skip-data-check",
        "--module",
        "tests.cluster.contract_trainer",
        str(cfg),
        "model.vocab_size=512",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps_log = tmp_path / "run" / "contract" / "steps.log"
    try:
        deadline = time.monotonic() + 120
        while not (steps_log.exists() and len(steps_log.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == PREEMPTED, out
    committed = int((tmp_path / "run" / "contract" / "latest").read_text())
    assert 2 <= committed < 200
    assert "preempted" in out
