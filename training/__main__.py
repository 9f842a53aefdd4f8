"""`python -m training --config FILE [section.key=value ...] [--print-config]`

Run as one process, or under torchrun / the deepspeed launcher / SLURM (rank and world from the
environment). Every config problem is reported at once, before any process group starts (exit 2).
Exit codes: 0 done, 1 unexpected failure (traceback in RUN_DIR/logs/), 2 bad config or input,
75 preempted (checkpoint committed: requeue), 76 hang (watchdog), 77 too many non-finite steps.
"""

from __future__ import annotations

import argparse
import logging
import sys

from common import exit_codes
from common.errors import UserError
from common.process_setup import setup_process
from training.entrypoint import add_launcher_args, env_rank, run_with_trainer, setup_logging

log = logging.getLogger("training")


def _record(fn):
    """torch elastic's @record: a failing rank's traceback goes to the launcher's error file."""
    try:
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(fn)
    except ImportError:  # pragma: no cover
        return fn


@_record
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training", description="Train MetaLM (see README: Training).")
    p.add_argument(
        "--config", help="YAML config file (configs/debug.yaml, configs/small.yaml, configs/metalm-1.3b.yaml)"
    )
    p.add_argument(
        "overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100 parallel.tp=2"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_launcher_args(p)
    args = p.parse_args(argv)
    setup_process()
    if args.print_config:
        from training.config import load_config

        setup_logging(env_rank())
        try:
            cfg = load_config(args.config, args.overrides)
        except UserError as e:
            log.error("%s", e)
            return exit_codes.USER_ERROR
        print(cfg.to_yaml(), end="")
        return exit_codes.OK
    return run_with_trainer(
        args.config, args.overrides, lambda trainer: trainer.train(), name="train", trains=True
    )


if __name__ == "__main__":
    sys.exit(main())
