"""`./launch.sh deepspeed`: the deepspeed multi-node launcher over a hostfile."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from common.exit_codes import OK

from .. import commands, hostfile
from ..commands import shell_join
from ..options import add_options, from_args, option
from ..supervisor import new_launch, supervise
from ..worker import EXIT_DIR_ENV
from .job import JobArgs, python

NAME = "deepspeed"


@dataclass
class DeepspeedOptions:
    """How the deepspeed launcher reaches the hosts; each field is also a `./launch.sh deepspeed` option."""

    hostfile: str = option(help="deepspeed hostfile (write one with `./launch.sh hostfile`)")
    launcher: str = option(
        "pdsh", "how deepspeed reaches the hosts (default %(default)s)", choices=commands.DEEPSPEED_LAUNCHERS
    )
    master_addr: str = option(
        "", "address of the first host as the others reach it (default: deepspeed's choice)"
    )
    master_port: int | None = option(None, "rendezvous port (default 29500)")
    ssh_port: int | None = option(None, "ssh port of the hosts (default 22)")
    no_ssh_check: bool = option(
        False,
        "skip deepspeed's passwordless-ssh check (e.g. when ssh options come from PDSH_SSH_ARGS_APPEND)",
    )
    launcher_args: str = option("", "extra arguments for pdsh/srun/mpirun, one string")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME,
        help="deepspeed multi-node launcher",
        description="The deepspeed launcher over a hostfile (one `host slots=N` line per node). "
        "pdsh needs passwordless ssh to every host; put host/port/key settings in "
        "~/.ssh/config or PDSH_SSH_ARGS_APPEND.",
    )
    add_options(p, DeepspeedOptions)
    add_options(p, JobArgs)


def run(args: argparse.Namespace) -> int:
    opts, job_args = from_args(DeepspeedOptions, args), from_args(JobArgs, args)
    hosts = hostfile.read_hostfile(opts.hostfile)
    world = sum(h.slots for h in hosts)
    cfg = job_args.check_config(world)
    cmd = commands.deepspeed_command(
        job_args.job,
        python(),
        str(Path(opts.hostfile).resolve()),
        launcher=opts.launcher,
        master_addr=opts.master_addr,
        master_port=opts.master_port,
        ssh_port=opts.ssh_port,
        no_ssh_check=opts.no_ssh_check,
        launcher_args=opts.launcher_args,
    )
    if job_args.dry_run:
        print(f"# {len(hosts)} host(s), {world} rank(s): " + ", ".join(f"{h.host}x{h.slots}" for h in hosts))
        print(f"cd {shell_join([str(Path.cwd())])}")
        print(shell_join(cmd))
        return OK
    logs = new_launch(cfg.run_dir, "deepspeed")
    # the remote ranks get variables through DeepSpeed's env file (pdsh does not pass our environment)
    lines = [f"{EXIT_DIR_ENV}={logs.exit}"]
    lines += [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "METALM_PYTHON") if k in os.environ]
    logs.deepspeed_env.write_text("\n".join(lines) + "\n")
    return supervise(cmd, logs, env=dict(os.environ, DS_ENV_FILE=str(logs.deepspeed_env)))
