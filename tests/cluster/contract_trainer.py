"""A stand-in for `python -m training` that follows the launcher contract and nothing else.

Same command line (`--config FILE [overrides]`, the real config loader), gloo process group from
torchrun's variables, one "step" = an all-reduce + a short sleep, and the fault-tolerance contract:
on SIGUSR1/SIGTERM the ranks agree at the next step boundary, rank 0 commits `RUN_DIR/contract/latest`
(the step), all exit 75; a restart resumes from it. Rank 0 appends `step N world W restart R` lines
to `RUN_DIR/contract/steps.log`. It lets the launcher tests check signal forwarding, exit codes and
requeue in seconds, independent of the model; the real-training tests use `training` itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from common.exit_codes import PREEMPTED

_flag = {"stop": False}


def _on_signal(signum, _frame):
    _flag["stop"] = True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from training.config.loader import deep_merge, load_yaml, parse_overrides

    raw = deep_merge(load_yaml(args.config), parse_overrides(args.overrides))
    run_dir = Path(raw.get("train", {}).get("run_dir", "runs/default"))
    steps = int(raw.get("train", {}).get("steps", 10))
    step_s = float(os.environ.get("CONTRACT_STEP_S", "0.5"))
    signal.signal(signal.SIGUSR1, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    state = run_dir / "contract"
    state.mkdir(parents=True, exist_ok=True)
    latest = state / "latest"
    step = int(latest.read_text()) if latest.exists() else 0
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    while step < steps:
        stop = torch.tensor([1.0 if _flag["stop"] else 0.0])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)  # all ranks agree at the step boundary
        if stop.item() > 0:
            dist.barrier()
            if rank == 0:
                tmp = state / "latest.tmp"
                tmp.write_text(str(step))
                os.replace(tmp, latest)
            dist.barrier()
            dist.destroy_process_group()
            print(f"rank {rank}: preempted at step {step}, checkpoint committed", flush=True)
            return PREEMPTED
        time.sleep(step_s)
        step += 1
        if rank == 0:
            with open(state / "steps.log", "a") as f:
                f.write(f"step {step} world {world} restart {restart}\n")
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: done at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
