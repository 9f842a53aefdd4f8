"""`python -m training --config FILE [section.key=value ...] [--print-config]`

Run as one process, or under torchrun / the deepspeed launcher / SLURM (rank and world from the
environment). Every config problem is reported at once, before any process group starts (exit 2).
Exit codes: 0 done, 1 unexpected failure (traceback in RUN_DIR/logs/), 2 bad config or input,
75 preempted (checkpoint committed: requeue), 76 hang (watchdog), 77 too many non-finite steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from common import exit_codes
from common.errors import UserError

log = logging.getLogger("training")
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
warnings.filterwarnings(
    "ignore", message="When using async grad allreduce"
)  # a CUDA-stream hint, not for CPU

FORMAT = "%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def setup_logging(rank: int) -> None:
    """Console: INFO on global rank 0, WARNING elsewhere (rank-0 filtering done once, here)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(FORMAT.format(rank=rank), "%H:%M:%S"))
    root.addHandler(console)
    root.setLevel(logging.INFO)
    for noisy in ("DeepSpeed", "deepspeed", "megatron", "streaming", "alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_rank_log_file(run_dir: Path, rank: int, name: str) -> Path:
    """Every rank logs INFO and tracebacks to RUN_DIR/logs/<name>_rank<r>.log."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{name}_rank{rank}.log"
    fh = logging.FileHandler(path)
    fh.setLevel(logging.INFO)
    fh.setFormatter(logging.Formatter(FORMAT.format(rank=rank)))
    logging.getLogger().addHandler(fh)
    return path


def prepare(config: str | None, overrides: list[str]):
    """Load + validate the config (all problems at once) and read the tokenizer hash: no process group yet."""
    from training.config import load_config

    cfg = load_config(config, overrides)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    cfg.validate(world)
    from data_prep.tokenizer import load_tokenizer

    return cfg, load_tokenizer(cfg.data.tokenizer).sha256


def write_run_files(trainer) -> None:
    """Rank 0: the resolved config (+ hash) and the DeepSpeed config in the run folder."""
    run_dir = trainer.run_dir
    (run_dir / "config.yaml").write_text(
        f"# resolved config, hash {trainer.cfg.hash()}\n" + trainer.cfg.to_yaml()
    )
    (run_dir / "ds_config.json").write_text(json.dumps(trainer.ds_config, indent=1))


def run_with_trainer(config: str | None, overrides: list[str], fn: Callable, name: str = "train") -> int:
    """Shared entry: validate, init process groups, build the Trainer, call fn(trainer) -> exit code."""
    import torch.distributed as dist

    rank = env_rank()
    setup_logging(rank)
    preemption = None
    if name == "train":  # first thing: a SIGUSR1/SIGTERM during the minutes of set-up is kept, not fatal
        from training.preemption import PreemptionHandler

        preemption = PreemptionHandler()
        preemption.install()
    try:
        cfg, tok_sha = prepare(config, overrides)
    except UserError as e:
        log.error("%s", e)
        return exit_codes.USER_ERROR
    from parallel.groups import destroy_distributed, init_distributed
    from training.trainer import Trainer

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    log_file = add_rank_log_file(cfg.run_dir, rank, name)
    try:
        topo = init_distributed(cfg.parallel)
        trainer = Trainer(cfg, topo, tokenizer_sha256=tok_sha, preemption=preemption)
        if topo.rank == 0 and name == "train":
            write_run_files(trainer)
        if name != "train":
            trainer.resume()
        code = fn(trainer)
        log.info("%s finished with exit code %d", name, code)
        if dist.is_initialized():
            dist.barrier()
        return code
    except UserError as e:
        log.error("%s", e)
        return exit_codes.USER_ERROR
    except Exception:
        log.exception("training failed (rank %d); this rank's log: %s", rank, log_file)
        raise
    finally:
        destroy_distributed()
        log.debug("process groups destroyed")


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    """The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment is what we read."""
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


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
    return run_with_trainer(args.config, args.overrides, lambda trainer: trainer.train(), "train")


if __name__ == "__main__":
    sys.exit(main())
