"""Render the sbatch script (cluster/slurm/metalm.sbatch.in) and submit it.

opts = SbatchOptions(nodes=2, gpus_per_node=8, partition="gpu", time="24:00:00")
text = render_sbatch(opts, job, cfg.run_dir, Path.cwd(), python)  # a complete bash script; `bash -n` clean
job_id = submit(path_to_written_script)  # sbatch --parsable
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from training.run_dir import LaunchLogs, RunDir

from .commands import TrainingJob
from .options import option

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "slurm" / "metalm.sbatch.in"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$|^(UNLIMITED|INFINITE)$")
LAUNCHERS = ("torchrun", "deepspeed")


@dataclass
class SbatchOptions:
    """The job's shape and SLURM settings; each field is also a `./launch.sh slurm` option."""

    nodes: int = option(1, "nodes (default %(default)s)")  # one SLURM task per node
    gpus_per_node: int = option(0, "GPUs per node = processes per node (default %(default)s: CPU job)")
    nproc_per_node: int | None = option(None, "processes per node (default: --gpus-per-node, or 1 on CPU)")
    cpus_per_task: int | None = option(None, "CPU cores per node's task")  # None = partition default
    partition: str = option("", "SLURM partition")  # empty = cluster default
    account: str = option("", "SLURM account")  # empty = user default
    qos: str = option("", "SLURM QOS")  # empty = default
    time: str = option("", "time limit, e.g. 24:00:00")  # or 2-00:00:00; empty = partition default
    mem: str = option("", "memory per node, e.g. 500G")  # empty = default; 0 = all of it
    job_name: str = option("metalm", "job name (default %(default)s)")
    launcher: str = option(
        "torchrun",
        "per-node launcher: torchrun with c10d rendezvous (default) or deepspeed --launcher slurm",
        choices=LAUNCHERS,
    )
    signal_lead_s: int = option(
        300,
        "send USR1 (save + requeue) this many seconds before the time limit (default %(default)s)",
        flag="--signal-lead",
    )
    shutdown_timeout_s: int = option(
        600,
        "seconds ranks get to checkpoint after the signal before SIGKILL (default %(default)s)",
        flag="--shutdown-timeout",
    )
    # a job that fails to progress is not requeued forever
    max_requeues: int = option(50, "stop requeueing after this many restarts (default %(default)s)")
    rdzv_host: str = option(
        "",
        "rendezvous address (default: first node of the allocation, from `scontrol show hostnames`; "
        "the env METALM_RDZV_HOST at submit time does the same)",
    )
    extra_sbatch: list[str] = option(
        help="extra sbatch option, repeatable, e.g. --sbatch=--constraint=h100",
        default_factory=list,
        flag="--sbatch",
        metavar="OPTION",
    )

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


def render_sbatch(opts: SbatchOptions, job: TrainingJob, run: RunDir, workdir: Path, python: str) -> str:
    """The complete sbatch script for `job` (placeholders filled, arguments shell-quoted)."""
    problems = opts.problems()
    if problems:
        raise UserError(problems)
    run = run.resolved()
    # the paths the script computes at run time, spelled with its own shell variables
    shell_run = RunDir("$RUN_DIR")
    job_logs = LaunchLogs("$JOB_LOG_DIR")  # = shell_run.slurm_restart_logs("$SLURM_JOB_ID", "$RESTART")
    omp = max(1, (opts.cpus_per_task or opts.procs_per_node) // opts.procs_per_node)
    values = {
        "job_name": opts.job_name,
        "nodes": str(opts.nodes),
        "sbatch_options": _sbatch_lines(opts),
        "signal_lead_s": str(opts.signal_lead_s),
        "batch_log": str(run.slurm_batch_log("%j")),
        "workdir": str(Path(workdir).resolve()),
        "run_dir": shlex.quote(str(run.root)),
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
        "job_log_dir": str(shell_run.slurm_restart_logs("$SLURM_JOB_ID", "$RESTART").root),
        "exit_dir": str(job_logs.exit),
        "ranks_dir": str(job_logs.ranks),
        "hostfile": str(job_logs.hostfile),
        "latest": str(shell_run.latest),
    }
    if any(c.isspace() for c in values["batch_log"] + values["workdir"]):
        raise UserError(
            f"run folder {run.root} or working folder {workdir}: #SBATCH paths cannot contain spaces"
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
