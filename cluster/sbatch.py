"""Render the sbatch script (cluster/slurm/metalm.sbatch.in) and submit it.

opts = SbatchOptions(nodes=2, gpus_per_node=8, partition="gpu", time="24:00:00")
text = render_sbatch(opts, job)          # a complete bash script; `bash -n` clean
job_id = submit(path_to_written_script)  # sbatch --parsable
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError

from .commands import TrainingJob

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "slurm" / "metalm.sbatch.in"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$|^(UNLIMITED|INFINITE)$")
LAUNCHERS = ("torchrun", "deepspeed")


@dataclass
class SbatchOptions:
    nodes: int = 1  # nodes (one SLURM task per node)
    gpus_per_node: int = 0  # GPUs per node (0 = CPU job); also the processes per node when > 0
    nproc_per_node: int | None = None  # processes per node (default: gpus_per_node, or 1 on CPU)
    cpus_per_task: int | None = None  # CPU cores for each node's task (None = partition default)
    partition: str = ""  # SLURM partition (empty = cluster default)
    account: str = ""  # SLURM account to charge (empty = user default)
    qos: str = ""  # SLURM QOS (empty = default)
    time: str = ""  # time limit, e.g. 24:00:00 or 2-00:00:00 (empty = partition default)
    mem: str = ""  # memory per node, e.g. 500G (empty = default; 0 = all of it)
    job_name: str = "metalm"  # SLURM job name
    launcher: str = "torchrun"  # per-node launcher: torchrun (c10d) or deepspeed (--launcher slurm)
    signal_lead_s: int = 300  # USR1 this many seconds before the time limit (save + requeue)
    shutdown_timeout_s: int = 600  # torchrun waits this long for ranks to save after a signal before SIGKILL
    max_requeues: int = 50  # stop requeueing after this many restarts (a job that never progresses)
    rdzv_host: str = ""  # rendezvous address baked into the script (default: first node of the allocation)
    extra_sbatch: list[str] = field(default_factory=list)  # more #SBATCH options, e.g. --constraint=h100

    @property
    def procs_per_node(self) -> int:
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def problems(self) -> list[str]:
        p = []
        if self.nodes < 1:
            p.append(f"--nodes {self.nodes}: need at least 1")
        if self.gpus_per_node < 0:
            p.append(f"--gpus-per-node {self.gpus_per_node}: must be >= 0")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            p.append(f"--nproc-per-node {self.nproc_per_node}: must be >= 1")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            p.append(f"--cpus-per-task {self.cpus_per_task}: must be >= 1")
        if self.time and not _TIME.match(self.time):
            p.append(f"--time {self.time!r}: use SLURM's format, e.g. 30:00, 24:00:00 or 2-00:00:00")
        if self.launcher not in LAUNCHERS:
            p.append(f"--launcher {self.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
        if self.launcher == "deepspeed" and self.procs_per_node > (self.cpus_per_task or 1):
            p.append(
                f"--launcher deepspeed starts {self.procs_per_node} srun tasks per node inside a one-task-per-node "
                f"allocation: set --cpus-per-task >= {self.procs_per_node}"
            )
        if self.signal_lead_s < 1:
            p.append(f"--signal-lead {self.signal_lead_s}: must be >= 1 second")
        if self.shutdown_timeout_s < 1:
            p.append(f"--shutdown-timeout {self.shutdown_timeout_s}: must be >= 1 second")
        if self.max_requeues < 0:
            p.append(f"--max-requeues {self.max_requeues}: must be >= 0")
        for name in ("partition", "account", "qos", "mem", "job_name", "rdzv_host"):
            value = getattr(self, name)
            if value and (any(c.isspace() for c in value) or any(c in value for c in "'\"`$;\\")):
                p.append(f"--{name.replace('_', '-')} {value!r}: no spaces, quotes or shell characters")
        for opt in self.extra_sbatch:
            if "\n" in opt or not opt.startswith("-"):
                p.append(
                    f"--sbatch {opt!r}: pass one sbatch option per flag, e.g. --sbatch=--constraint=h100"
                )
        return p


def _sbatch_lines(opts: SbatchOptions) -> str:
    lines = []
    if opts.gpus_per_node > 0:
        lines.append(f"--gpus-per-node={opts.gpus_per_node}")
    if opts.cpus_per_task:
        lines.append(f"--cpus-per-task={opts.cpus_per_task}")
    for flag, value in (
        ("partition", opts.partition),
        ("account", opts.account),
        ("qos", opts.qos),
        ("time", opts.time),
        ("mem", opts.mem),
    ):
        if value:
            lines.append(f"--{flag}={value}")
    lines += opts.extra_sbatch
    return "\n".join(f"#SBATCH {line}" for line in lines) if lines else "# (no further #SBATCH options)"


def render_sbatch(opts: SbatchOptions, job: TrainingJob, run_dir: Path, workdir: Path, python: str) -> str:
    """The complete sbatch script for `job` (placeholders filled, arguments shell-quoted)."""
    problems = opts.problems()
    if problems:
        raise UserError(problems)
    run_dir = Path(run_dir).resolve()
    omp = max(1, (opts.cpus_per_task or opts.procs_per_node) // opts.procs_per_node)
    values = {
        "job_name": opts.job_name,
        "nodes": str(opts.nodes),
        "sbatch_options": _sbatch_lines(opts),
        "signal_lead_s": str(opts.signal_lead_s),
        "log_root": str(run_dir / "logs"),
        "workdir": str(Path(workdir).resolve()),
        "run_dir": shlex.quote(str(run_dir)),
        "python": shlex.quote(python),
        "repo": shlex.quote(str(Path(__file__).resolve().parent.parent)),
        "nproc_per_node": str(opts.procs_per_node),
        "launcher": opts.launcher,
        "max_requeues": str(opts.max_requeues),
        "shutdown_timeout_s": str(opts.shutdown_timeout_s),
        "train_args": " ".join(shlex.quote(a) for a in job.module_args()),
        "rdzv_host_line": (
            f"export METALM_RDZV_HOST=${{METALM_RDZV_HOST:-{shlex.quote(opts.rdzv_host)}}}"
            if opts.rdzv_host
            else "# rendezvous on the first node (set METALM_RDZV_HOST to override)"
        ),
        "omp_num_threads": str(omp),
    }
    if any(c.isspace() for c in values["log_root"] + values["workdir"]):
        raise UserError(
            f"run folder {run_dir} or working folder {workdir}: #SBATCH paths cannot contain spaces"
        )
    text = TEMPLATE.read_text()
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise RuntimeError(f"template {TEMPLATE} has placeholders without values: {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def check_syntax(script: Path) -> None:
    """`bash -n`: refuse to submit a script bash cannot parse."""
    res = subprocess.run(
        [shutil.which("bash") or "/bin/bash", "-n", str(script)], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(f"rendered script {script} does not parse: {res.stderr.strip()}")


def submit(script: Path, env: dict | None = None, sbatch: str = "sbatch") -> str:
    """sbatch the script; return the job id. A missing sbatch or a refusal is a UserError."""
    try:
        res = subprocess.run(
            [sbatch, "--parsable", str(script)],
            capture_output=True,
            text=True,
            env=env if env is not None else os.environ,
            timeout=120,
        )
    except FileNotFoundError:
        raise UserError(
            "`sbatch` was not found; run `./launch.sh slurm` on a SLURM login node "
            "(or use --dry-run to only write the script)"
        ) from None
    if res.returncode != 0:
        raise UserError(f"sbatch refused {script}: {res.stderr.strip() or res.stdout.strip()}")
    job_id = res.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise RuntimeError(f"unexpected sbatch output: {res.stdout!r}")
    return job_id
