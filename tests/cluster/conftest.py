"""Fixtures for the launcher tests: a real SLURM, ssh hosts, tiny real data, config overrides.

The `cluster`-marked tests need root and Debian packages, which the fixtures install
(idempotently) or skip with the reason. Every daemon is stopped by PID at the end of the session,
also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster.testbed.packages import SLURM_PACKAGES, SSH_PACKAGES, TestbedUnavailable, ensure_packages
from tests.paths import REPO

LAUNCH = str(REPO / "launch.sh")


def _private_shm_works() -> str | None:
    """None if mount namespaces with a private /dev/shm work here, else the reason."""
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is missing"
    res = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m t /dev/shm",
        ],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        return f"cannot give a simulated node its own /dev/shm (unshare + mount tmpfs failed: {res.stderr.strip()})"
    return None


def _testbed_dir(prefix: str) -> Path:
    # not under pytest's 0700 tmp root: munged runs as the munge user and must reach its socket folder
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


@pytest.fixture(scope="session")
def node_isolation():
    if os.geteuid() != 0:
        pytest.skip("simulated nodes need root (mount namespaces; munged/slurmd/sshd run as system users)")
    reason = _private_shm_works()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(node_isolation):
    from cluster.testbed.slurm import LocalSlurm

    try:
        ensure_packages(SLURM_PACKAGES)
    except TestbedUnavailable as e:
        pytest.skip(f"real SLURM test: {e}")
    root = _testbed_dir("metalm-slurm-")
    slurm = LocalSlurm(root)
    slurm.start()
    try:
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_hosts(node_isolation):
    from cluster.testbed.ssh import LocalSshHosts

    try:
        ensure_packages(SSH_PACKAGES)
    except TestbedUnavailable as e:
        pytest.skip(f"ssh/pdsh test: {e}")
    root = _testbed_dir("metalm-ssh-")
    hosts = LocalSshHosts(root, aliases=("node-a", "node-b"))
    hosts.start()
    try:
        yield hosts
    finally:
        hosts.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def debug_data():
    """A tiny real dataset made by data_prep (synth -> tokenizer -> pairs + text shards)."""
    from data_prep.cli import main as data_prep

    root = _testbed_dir("metalm-cluster-data-")
    raw = root / "raw"
    steps = [
        [
            "synth",
            "--output",
            str(raw),
            "--num-images",
            "48",
            "--num-val-images",
            "8",
            "--image-size",
            "32",
            "--num-docs",
            "48",
            "--num-val-docs",
            "8",
        ],
        [
            "tokenizer",
            "--input",
            str(raw / "text" / "train.jsonl"),
            str(raw / "pairs"),
            "--vocab-size",
            "256",
            "--output",
            str(root / "tok"),
        ],
        [
            "pairs",
            "--input",
            str(raw / "pairs" / "train-00000.tar"),
            "--tokenizer",
            str(root / "tok"),
            "--image-size",
            "32",
            "--output",
            str(root / "pairs"),
            "--no-progress",
        ],
        [
            "text",
            "--input",
            str(raw / "text" / "train.jsonl"),
            "--tokenizer",
            str(root / "tok"),
            "--seq-len",
            "129",
            "--output",
            str(root / "text"),
            "--no-progress",
        ],
    ]
    for argv in steps:
        assert data_prep(argv) == 0, f"data_prep {argv[0]} failed"
    yield root
    shutil.rmtree(root, ignore_errors=True)


def train_overrides(
    data: Path,
    run_dir: Path,
    steps: int,
    tp: int = 1,
    dp: int = 2,
    micro: int = 2,
    accum: int = 1,
    ckpt_every: int = 0,
    tracking_uri: str = "",
) -> list[str]:
    """Overrides of configs/debug.yaml for a few-step CPU run on the tiny dataset."""
    out = [
        f"data.tokenizer={data / 'tok'}",
        f"data.train.0.path={data / 'pairs'}",
        f"data.train.1.path={data / 'text'}",
        "data.val=[]",
        "data.num_workers=0",
        f"parallel.tp={tp}",
        f"train.run_dir={run_dir}",
        f"train.steps={steps}",
        f"train.micro_batch_size={micro}",
        f"train.global_batch_size={micro * dp * accum}",
        "train.log_interval=1",
        "eval.interval_steps=0",
        "eval.caption_samples=0",
        f"checkpoint.interval_steps={ckpt_every}",
        "tracking.experiment=cluster-tests",
    ]
    if tracking_uri:
        out.append(f"tracking.uri={tracking_uri}")
    return out
