"""The exact command lines the launch modes run (also what `--dry-run` prints).

Every mode starts `python -m cluster.worker training --config FILE [overrides]` on each rank:
the training entry point plus a recorded exit code (see cluster/worker.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

# torchrun forwards these to the ranks (USR1 = SLURM's preemption warning; the default list lacks it)
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
DEEPSPEED_LAUNCHERS = ("pdsh", "slurm", "openmpi")
WORKER_FILE = Path(__file__).resolve().parent / "worker.py"


@dataclass
class TrainingJob:
    config: str  # training config YAML (configs/debug.yaml, ...)
    overrides: list[str] = field(default_factory=list)  # dotted overrides, e.g. train.steps=100
    module: str = "training"  # the training entry module (`python -m training`)

    def module_args(self) -> list[str]:
        """`training --config FILE overrides...`: what cluster.worker runs."""
        return [self.module, "--config", self.config, *self.overrides]


def shell_join(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def torchrun_local(
    job: TrainingJob, python: str, nproc: int, shutdown_timeout_s: int = 600, log_dir: str | None = None
) -> list[str]:
    """torchrun on this machine: one node, `nproc` ranks, a private rendezvous (--standalone)."""
    return _torchrun(job, python, ["--standalone", "--nnodes=1"], nproc, shutdown_timeout_s, log_dir)


def torchrun_node(
    job: TrainingJob,
    python: str,
    nnodes: int,
    nproc: int,
    rdzv_endpoint: str,
    rdzv_id: str,
    shutdown_timeout_s: int = 600,
    log_dir: str | None = None,
) -> list[str]:
    """One node's torchrun of a multi-node job (c10d rendezvous at `rdzv_endpoint` = host:port)."""
    rdzv = [
        f"--nnodes={nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv_endpoint}",
        f"--rdzv-id={rdzv_id}",
    ]
    return _torchrun(job, python, rdzv, nproc, shutdown_timeout_s, log_dir)


def _torchrun(
    job: TrainingJob, python: str, rdzv: list[str], nproc: int, shutdown_timeout_s: int, log_dir: str | None
) -> list[str]:
    """`python -m torch.distributed.run RDZV... --nproc-per-node N ... -m cluster.worker JOB`."""
    cmd = [python, "-m", "torch.distributed.run", *rdzv[:2], f"--nproc-per-node={nproc}", *rdzv[2:]]
    cmd += [
        "--max-restarts=0",
        f"--signals-to-handle={FORWARDED_SIGNALS}",
        f"--shutdown-timeout={shutdown_timeout_s}",
    ]
    if log_dir:
        cmd += [f"--log-dir={log_dir}", "--redirects=3", "--tee=3"]
    return cmd + ["-m", "cluster.worker", *job.module_args()]


def deepspeed_command(
    job: TrainingJob,
    python: str,
    hostfile: str,
    launcher: str = "pdsh",
    master_addr: str = "",
    master_port: int | None = None,
    num_gpus: int | None = None,
    ssh_port: int | None = None,
    no_ssh_check: bool = False,
    launcher_args: str = "",
) -> list[str]:
    """The `deepspeed` multi-node launcher (`python -m deepspeed.launcher.runner` == the `deepspeed` script)."""
    cmd = [python, "-m", "deepspeed.launcher.runner", "--hostfile", hostfile, "--launcher", launcher]
    if master_addr:
        cmd += ["--master_addr", master_addr]
    if master_port:
        cmd += ["--master_port", str(master_port)]
    if num_gpus:
        cmd += ["--num_gpus", str(num_gpus)]
    if ssh_port:
        cmd += ["--ssh_port", str(ssh_port)]
    if no_ssh_check:
        cmd += ["--no_ssh_check"]
    if launcher_args:
        cmd += ["--launcher_args", launcher_args]
    # a script path (not -m): DeepSpeed's slurm/openmpi launchers run `python -u SCRIPT`
    return cmd + ["--no_local_rank", str(WORKER_FILE), *job.module_args()]
