"""Observability overhead, measured in one run (this machine is shared and noisy):

loop   step time of the real training loop (debug MetaLM, 2 forked gloo ranks TP=1 x DP=2, ZeRO-1,
       fp32, tiny data, 2 micro-batches per step) with per-phase timing + the per-rank all-gather on
       (`train.straggler_interval` --interval, default 10 = 5x the default frequency) vs both off,
       in alternating rounds of --interval steps (ABBA groups, so each "on" round holds one gather):
       overhead = the median over the groups of (on rounds' time / off rounds' time) - 1, with its
       interquartile range (target <= 1%). The machine is shared: a group compares adjacent rounds,
       which see about the same load; the same ratio of the ranks' CPU time (process_time: what
       the code costs, without the waits for a CPU that other jobs cause) is the steadier figure
micro  the cost of each part alone: the phase timers of one step (8 `with` blocks) and one
       all-gather of the per-rank figures, in microseconds

  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_observability.py [--groups 32] [--interval 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from common.process_setup import setup_process  # noqa: E402

setup_process()


def _loop_bench(rank, world, data: Path, run_dir: Path, groups: int, interval: int, parts: str) -> dict:
    import torch.distributed as dist

    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from tests.training.shards import config_overrides
    from training.config import load_config
    from training.observability.phases import PhaseTimer
    from training.trainer import Trainer

    ov = config_overrides(
        data,
        run_dir,
        **{
            "tracking.enabled": "false",
            "eval.caption_samples": 0,
            "eval.batches": 0,
            "parallel.tp": 1,
            "train.precision": "fp32",
            "train.micro_batch_size": 2,
            "train.global_batch_size": 8,
            "checkpoint.interval_steps": 0,
            "train.log_interval": 1 << 30,
            "train.steps": 1 << 30,
            "train.straggler_interval": interval,
            "train.straggler_windows": 1 << 30,  # measure the gathers, not the warnings
        },
    )
    cfg = load_config(ROOT / "configs" / "debug.yaml", ov)
    cfg.validate(world)
    topo = init_distributed(cfg.parallel)
    tr = Trainer(cfg, topo, load_tokenizer(cfg.data.tokenizer).sha256)
    batches = tr.batches()
    timed, untimed = tr.timer, _NullTimer()

    cpu = {"on": 0.0, "off": 0.0}

    def run(n: int, mode: str = "") -> float:
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            m = tr.train_step(batches)
            tr.step += 1
            tr.after_step(m)
        c = time.process_time() - c0
        dist.barrier()
        if mode:
            cpu[mode] += c
        return (time.perf_counter() - t0) / n

    run(interval - 1)  # warm-up, and the rounds start at a step multiple of the interval
    times: dict[str, list[float]] = {"on": [], "off": []}
    ratios, cpu_ratios = [], []
    for i in range(groups):
        group: dict[str, float] = {"on": 0.0, "off": 0.0}
        for mode in ("on", "off", "off", "on") if i % 2 == 0 else ("off", "on", "on", "off"):
            tr.timer = timed if mode == "on" and parts in ("both", "timers") else untimed
            tr.stragglers.enabled = mode == "on" and parts in ("both", "gather")
            before = dict(cpu)
            t = run(interval, mode)
            times[mode].append(t)
            group[mode] += t
            group[f"cpu_{mode}"] = group.get(f"cpu_{mode}", 0.0) + cpu[mode] - before[mode]
        ratios.append(group["on"] / group["off"])
        cpu_ratios.append(group["cpu_on"] / group["cpu_off"])
    # the parts alone
    t = PhaseTimer()
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n // 2):
        t.reset()
        for _ in range(2):  # 2 micro-batches: 8 phase blocks
            with t.data_wait:
                pass
            with t.forward:
                pass
            with t.backward:
                pass
            with t.optimizer:
                pass
        t.seconds()
    timers_us = (time.perf_counter() - t0) / (n // 2) * 1e6
    gathers = []
    for _ in range(50):
        g0 = time.perf_counter()
        tr.coll.all_gather_floats([0.1, 0.2, 0.3])
        gathers.append(time.perf_counter() - g0)
    return {
        **times,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "timers_us": timers_us,
        "gather_us": statistics.median(gathers) * 1e6,
    }


class _NullTimer:
    """The loop without phase timing: `with` blocks that do nothing, zero phase times."""

    class _Null:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    def __init__(self):
        self.data_wait = self.forward = self.backward = self.optimizer = self._Null()
        self.record = False

    def reset(self) -> None:
        pass

    def seconds(self) -> dict[str, float]:
        return {"time/data_wait": 0.0, "time/forward": 0.0, "time/backward": 0.0, "time/optimizer": 0.0}


ON = {
    "both": "phase timing + per-rank gather every {} steps",
    "timers": "phase timing alone",
    "gather": "per-rank gather every {} steps alone",
    "none": "nothing (A/A: the noise of this design)",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=32, help="ABBA groups (each: 2 rounds on, 2 off)")
    ap.add_argument("--interval", type=int, default=10, help="train.straggler_interval = steps per round")
    ap.add_argument(
        "--parts", choices=["both", "timers", "gather", "none"], default="both", help="what 'on' turns on"
    )
    args = ap.parse_args()
    from tests.distributed import run_ranks
    from tests.training.shards import make_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_obs_"))
    try:
        data = make_dataset(work / "data")
        r = run_ranks(
            2, _loop_bench, data, work / "run", args.groups, args.interval, args.parts, timeout=3600
        )[0]
        on, off = statistics.median(r["on"]), statistics.median(r["off"])
        q = statistics.quantiles(r["ratios"], n=4)
        print(
            f"loop: debug MetaLM, 2 ranks DP=2, {args.groups} ABBA groups of {args.interval}-step rounds; "
            f"{ON[args.parts].format(args.interval)} vs off: overhead "
            f"{100 * (statistics.median(r['ratios']) - 1):+.2f}% (median of the groups; IQR "
            f"{100 * (q[0] - 1):+.2f}% .. {100 * (q[2] - 1):+.2f}%; target <= 1%); median step "
            f"{on * 1e3:.1f} ms on / {off * 1e3:.1f} ms off"
        )
        c = statistics.quantiles(r["cpu_ratios"], n=4)
        print(
            f"  CPU time of rank 0 (process_time), same groups: overhead "
            f"{100 * (statistics.median(r['cpu_ratios']) - 1):+.2f}% (IQR {100 * (c[0] - 1):+.2f}% .. "
            f"{100 * (c[2] - 1):+.2f}%)"
        )
        per_step_us = r["timers_us"] + r["gather_us"] / args.interval
        print(
            f"micro: phase timers {r['timers_us']:.1f} us per step (8 blocks), one per-rank all-gather "
            f"{r['gather_us']:.0f} us (gloo, 2 ranks) -> {per_step_us:.1f} us per step at interval "
            f"{args.interval} = {100 * per_step_us * 1e-6 / off:.3f}% of this step; at the default "
            f"interval 50: {r['timers_us'] + r['gather_us'] / 50:.1f} us per step"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
