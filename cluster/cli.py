"""`./launch.sh MODE ...`: local torchrun, deepspeed multi-node, SLURM sbatch, MLflow server.

Every mode validates the training config (same checks as `python -m training`) before it starts
or submits anything, and `--dry-run` prints what would run instead of running it. The modes live
in cluster/modes/ (one module each); child supervision in cluster/supervisor.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from common.errors import UserError
from common.exit_codes import FAILURE, USER_ERROR

from . import hostfile
from .modes import deepspeed, local, mlflow_server, slurm

logger = logging.getLogger("cluster")

MODES = {m.NAME: m for m in (local, deepspeed, slurm, mlflow_server)}

EPILOG = """\
modes:
  local       torchrun on this machine (CPU or GPUs)
                ./launch.sh local --nproc 2 configs/debug.yaml train.steps=20
  deepspeed   the deepspeed multi-node launcher over a hostfile ("host slots=N" lines)
                ./launch.sh deepspeed --hostfile hosts.txt --launcher pdsh configs/metalm-1.3b.yaml
  slurm       render cluster/slurm/metalm.sbatch.in into RUN_DIR/logs/ and sbatch it
                ./launch.sh slurm --nodes 4 --gpus-per-node 8 --partition gpu --time 24:00:00 configs/metalm-1.3b.yaml
  mlflow-server  an MLflow tracking server for the cluster (train with tracking.uri=http://HOST:PORT)
                ./launch.sh mlflow-server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:////shared/mlflow.db \\
                    --artifacts-destination /shared/mlartifacts
  hostfile    SLURM node list -> deepspeed hostfile (python -m cluster.hostfile --help)

`./launch.sh MODE --help` lists each mode's options. Exit codes: 0 done, 1 failure, 2 bad
input/config (nothing started), 75 preempted (checkpoint committed; run the same command again to resume).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./launch.sh",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="mode", metavar="MODE")
    sub.required = True
    for mode in MODES.values():
        mode.add_parser(sub)
    # parsed by cluster/hostfile.py itself (main hands it the arguments before this parser sees them)
    sub.add_parser("hostfile", help="SLURM node list -> deepspeed hostfile", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "hostfile":
        return hostfile.main(argv[1:])
    logging.basicConfig(level=logging.WARNING, format="[launch] %(message)s")
    logger.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    args = build_parser().parse_args(argv)
    try:
        return MODES[args.mode].run(args)
    except UserError as e:
        logger.error("%s", e)
        return USER_ERROR
    except RuntimeError as e:
        logger.error("%s", e)
        return FAILURE
