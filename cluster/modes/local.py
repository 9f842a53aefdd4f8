"""`./launch.sh local`: torchrun on this machine, or one node of a multi-node run (c10d rendezvous)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.exit_codes import OK
from training.run_dir import LaunchLogs

from .. import commands
from ..commands import shell_join
from ..options import add_options, from_args, option
from ..supervisor import new_launch, supervise
from ..worker import EXIT_DIR_ENV
from .job import JobArgs, python

NAME = "local"


@dataclass
class LocalOptions:
    """This node's share of the job; each field is also a `./launch.sh local` option."""

    nproc: int | None = option(None, "processes (default: number of visible GPUs, or 1 on CPU)")
    nnodes: int = option(1, "nodes of the job; > 1 makes this one node of a multi-node run")
    node_rank: int = option(0, "this node's rank (0 .. nnodes-1) when --nnodes > 1")
    rdzv_endpoint: str = option(
        "", "HOST:PORT of the c10d rendezvous, the same on every node (needed when --nnodes > 1)"
    )
    rdzv_id: str = option("metalm", "rendezvous id, the same on every node (default %(default)s)")
    shutdown_timeout: int = option(
        600, "seconds ranks get to checkpoint after SIGTERM/SIGUSR1 before SIGKILL (default %(default)s)"
    )

    def problems(self, nproc: int) -> list[str]:
        """What is wrong, given the resolved process count (--nproc or the visible GPUs)."""
        problems = []
        if nproc < 1:
            problems.append(f"--nproc {nproc}: need at least 1 process")
        if self.nnodes < 1 or not 0 <= self.node_rank < max(1, self.nnodes):
            problems.append(
                f"--nnodes {self.nnodes} --node-rank {self.node_rank}: need 0 <= node-rank < nnodes"
            )
        if self.nnodes > 1 and ":" not in self.rdzv_endpoint:
            problems.append(
                "--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node; HOST = node 0)"
            )
        return problems


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME,
        help="torchrun on this machine",
        description="torchrun --standalone on this machine with N processes (GPUs or CPU ranks).",
    )
    add_options(p, LocalOptions)
    add_options(p, JobArgs)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def run(args: argparse.Namespace) -> int:
    opts, job_args = from_args(LocalOptions, args), from_args(JobArgs, args)
    job = job_args.job
    nproc = opts.nproc if opts.nproc is not None else max(1, _visible_gpus())
    problems = opts.problems(nproc)
    if problems:
        raise UserError(problems)
    cfg = job_args.check_config(nproc * opts.nnodes)
    py = python()

    def command(logs: LaunchLogs) -> list[str]:
        ranks = str(logs.ranks)
        if opts.nnodes == 1:
            return commands.torchrun_local(job, py, nproc, opts.shutdown_timeout, log_dir=ranks)
        return commands.torchrun_node(
            job,
            py,
            opts.nnodes,
            nproc,
            opts.rdzv_endpoint,
            opts.rdzv_id,
            opts.shutdown_timeout,
            log_dir=ranks,
        )

    if job_args.dry_run:
        logs = cfg.run_dir.resolved().launch("local", stamp="<time>")
        print(f"cd {shell_join([str(Path.cwd())])}")
        print(f"{EXIT_DIR_ENV}={shell_join([str(logs.exit)])} {shell_join(command(logs))}")
        return OK
    logs = new_launch(cfg.run_dir, f"local-node{opts.node_rank}" if opts.nnodes > 1 else "local")
    return supervise(command(logs), logs)
