"""Shared by every entry point that runs a Trainer (`python -m training`, the learning check):
logging set-up, config validation before any process group, process groups, the Trainer, clean-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from common import exit_codes
from common.errors import UserError
from common.process_setup import setup_process
from training.run_dir import RunDir

log = logging.getLogger("training")

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


def add_rank_log_file(run_dir: RunDir, rank: int, name: str) -> Path:
    """Every rank logs INFO and tracebacks to RUN_DIR/logs/<name>_rank<r>.log."""
    path = run_dir.rank_log(name, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    from training.config.tokenizer import run_tokenizer

    return cfg, run_tokenizer(cfg.data.tokenizer).sha256


def write_run_files(trainer) -> None:
    """Rank 0: the resolved config (+ hash) and the DeepSpeed config in the run folder."""
    run_dir = trainer.run_dir
    run_dir.config_yaml.write_text(f"# resolved config, hash {trainer.cfg.hash()}\n" + trainer.cfg.to_yaml())
    run_dir.ds_config.write_text(json.dumps(trainer.ds_config, indent=1))


def run_with_trainer(
    config: str | None, overrides: list[str], fn: Callable, *, name: str, trains: bool
) -> int:
    """Shared entry: validate, init process groups, build the Trainer, call fn(trainer) -> exit code.

    `trains=True` (`python -m training`): the preemption handler goes in first (a SIGUSR1/SIGTERM during
    the minutes of set-up is kept, not fatal) and rank 0 writes the run files; the loop resumes itself.
    `trains=False` (checks on a trained run): the newest checkpoint is loaded before `fn` runs.
    Logs go to RUN_DIR/logs/<name>_rank<r>.log.
    """
    import torch.distributed as dist

    setup_process()
    rank = env_rank()
    setup_logging(rank)
    preemption = None
    if trains:
        from training.resilience.preemption import PreemptionHandler

        preemption = PreemptionHandler()
        preemption.install()
    try:
        cfg, tok_sha = prepare(config, overrides)
    except UserError as e:
        log.error("%s", e)
        return exit_codes.USER_ERROR
    from parallel.groups import destroy_distributed, init_distributed
    from training.trainer import Trainer

    cfg.run_dir.root.mkdir(parents=True, exist_ok=True)
    log_file = add_rank_log_file(cfg.run_dir, rank, name)
    try:
        topo = init_distributed(cfg.parallel)
        trainer = Trainer(cfg, topo, tokenizer_sha256=tok_sha, preemption=preemption)
        if topo.rank == 0 and trains:
            write_run_files(trainer)
        if not trains:
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
