"""`./launch.sh mlflow-server`: an MLflow tracking server in the foreground (see cluster/mlflow_server.py)."""

from __future__ import annotations

import argparse
import logging
import os

from common.exit_codes import OK

from ..commands import shell_join
from ..mlflow_server import MlflowServerOptions, mlflow_server_command, tracking_uri_hint
from ..options import add_options, from_args
from ..supervisor import run_forwarding_signals
from .job import python

logger = logging.getLogger(__name__)

NAME = "mlflow-server"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME,
        help="run an MLflow tracking server",
        description="Run an MLflow tracking server in the foreground (SQLite or database store, "
        "artifacts served by the server). Jobs log to it with tracking.uri=http://HOST:PORT.",
    )
    add_options(p, MlflowServerOptions)
    p.add_argument("--dry-run", action="store_true", help="print the command; run nothing")


def run(args: argparse.Namespace) -> int:
    opts = from_args(MlflowServerOptions, args)
    cmd = mlflow_server_command(opts, python())
    if args.dry_run:
        print(shell_join(cmd))
        return OK
    logger.info(
        "MLflow server on %s:%d; train with tracking.uri=%s", opts.host, opts.port, tracking_uri_hint(opts)
    )
    env = dict(os.environ)
    # MLflow 3 starts a job runner with several huey worker processes for its GenAI jobs;
    # training tracking does not use them (set the variable to true to keep them)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return run_forwarding_signals(cmd, env, group=True, stop_timeout=15)
