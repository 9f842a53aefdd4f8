"""Checkpoint benchmarks (ratios measured in one run, interleaved, best of --repeats):

  save   CheckpointManager.save bytes/s (DeepSpeed shards + hashes + fsync + manifest + COMPLETE + latest)
         / a raw sequential write (+ fsync) of the same files' bytes to the same disk     target >= 0.7
  resume time from process start to the first resumed step vs. to the first step of a fresh start,
         and the verify+load part of it (a real 2-rank `python -m training` job, debug model)
  preempt steps redone after SIGUSR1 + resume (target 0) and seconds from the signal to exit 75
  async  training stall per save, `checkpoint.async_save` vs blocking, alternating in one run: the wall
         time of the steps from the save until it is committed, minus the same number of steps' time
         without a save (so the host copy, the commit and the slowdown of the steps by the background
         writer all count), and the async / blocking ratio

The save part runs a ZeRO-1 fp32 DeepSpeed engine around an MLP of --params parameters in one
process (model states + fp32 master + two Adam moments: ~16 bytes per parameter on disk).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_checkpoint.py [--params 50e6] [--skip-jobs] [--only-async]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.process_setup import setup_process  # noqa: E402

setup_process()


def _raw_write(files: list[tuple[str, int]], out: Path, chunk: bytes) -> float:
    """Write the same file sizes with plain os.write from memory, then fsync them all; return seconds."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fds = []
    try:
        for name, size in files:
            fd = os.open(out / name.replace("/", "_"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds.append(fd)
            left = size
            view = memoryview(chunk)
            while left > 0:
                left -= os.write(fd, view[: min(left, len(chunk))])
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return time.perf_counter() - t0


def _save_bench(rank, world, params: float, repeats: int, workdir: str) -> dict:
    import torch
    import torch.distributed as dist

    from tests.training.checkpoint.toy_engine import init_gloo
    from training.checkpoint import CheckpointConfig, CheckpointManager

    init_gloo(rank, world)
    import deepspeed

    width = 2048
    layers = max(1, int(params // (width * width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1}, "steps_per_print": 1 << 30}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    loss = engine(torch.randn(1, width)).square().mean()
    engine.backward(loss)
    engine.step()  # Adam moments exist

    run_dir = Path(workdir) / "run"
    mgr = CheckpointManager(CheckpointConfig(keep_last=2), run_dir)
    chunk = os.urandom(16 << 20)
    save_t, raw_t, total = [], [], 0
    files: list[tuple[str, int]] = []
    plain_t: list[float] = []
    phases: list[dict] = []
    order = ["save", "raw", "plain"]
    for i in range(repeats):
        for kind in order[i % 3 :] + order[: i % 3]:  # rotate: the disk is shared and noisy
            os.sync()
            if kind == "save":
                t0 = time.perf_counter()
                path = mgr.save(engine, i + 1, {"step": i + 1})
                save_t.append(time.perf_counter() - t0)
                phases.append(dict(mgr.last_save_phases))
                mf = json.loads((path / "MANIFEST.json").read_text())["files"]
                files = [(k, v["size"]) for k, v in mf.items()]
                total = sum(s for _, s in files)
            elif kind == "plain":  # DeepSpeed's own save_checkpoint: no hashes, no fsync, no manifest
                t0 = time.perf_counter()
                inner = getattr(engine.checkpoint_engine, "inner", engine.checkpoint_engine)
                wrapped, engine.checkpoint_engine = engine.checkpoint_engine, inner
                try:
                    engine.save_checkpoint(str(Path(workdir) / "plain"), tag=f"t{i}", save_latest=False)
                finally:
                    engine.checkpoint_engine = wrapped
                plain_t.append(time.perf_counter() - t0)
                shutil.rmtree(Path(workdir) / "plain")
            elif files:
                raw_dir = Path(workdir) / f"raw{i}"
                raw_t.append(_raw_write(files, raw_dir, chunk))
                shutil.rmtree(raw_dir)
    # resume-side verification (sizes + hashes of every file)
    t0 = time.perf_counter()
    problems = mgr.verify(path)
    verify_t = time.perf_counter() - t0
    dist.barrier()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": total,
        "save_s": min(save_t),
        "raw_s": min(raw_t),
        "verify_s": verify_t,
        "verify_ok": not problems,
        "all_save_s": save_t,
        "all_raw_s": raw_t,
        "plain_s": min(plain_t),
        "phases": phases[save_t.index(min(save_t))],
    }


def _async_bench(rank, world, params: float, repeats: int, workdir: str) -> dict:
    """Training stall of a blocking vs an async save of the same engine, alternating (ABBA order)."""
    import statistics

    import torch

    from tests.training.checkpoint.toy_engine import init_gloo
    from training.checkpoint import CheckpointConfig, CheckpointManager

    init_gloo(rank, world)
    import deepspeed

    width = 2048
    layers = max(1, int(params // (width * width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 1}, "steps_per_print": 1 << 30}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    x = torch.randn(8, width)

    def step() -> float:
        t0 = time.perf_counter()
        loss = engine(x).square().mean()
        engine.backward(loss)
        engine.step()
        return time.perf_counter() - t0

    mgr = CheckpointManager(CheckpointConfig(keep_last=2, async_save=True), Path(workdir) / "run")
    for _ in range(3):
        step()
    n = 0
    out: dict[str, list] = {"blocking": [], "async": [], "async_capture": [], "async_steps": [], "step": []}
    modes = ["blocking", "async", "async", "blocking"]
    for i in range(repeats):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            os.sync()
            base = statistics.median(step() for _ in range(5))  # steps without a save, just before
            out["step"].append(base)
            n += 1
            t0 = time.perf_counter()
            mgr.save(engine, n, {"step": n}, blocking=mode == "blocking")
            capture = time.perf_counter() - t0
            steps = 0
            while mgr.in_flight_step is not None:  # the steps that run while the files are written
                step()
                mgr.poll()
                steps += 1
            window = time.perf_counter() - t0
            out[mode].append(window - steps * base)
            if mode == "async":
                out["async_capture"].append(capture)
                out["async_steps"].append(steps)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": sum(f.stat().st_size for f in mgr.run_dir.checkpoint(n).iterdir()),
        **out,
    }


def _job_bench(workdir: Path) -> dict:
    from tests.training.checkpoint.jobs import Job, logged_losses, make_data, overrides, run_id

    data = make_data(workdir / "data")
    out: dict = {}

    def first_step_time(job: Job, step: int) -> float:
        job.wait_for(rf"step {step}/", timeout=300)
        return time.monotonic() - job.t0

    # fresh start: time to the first step
    fresh_dir = workdir / "fresh" / "run"
    job = Job(
        overrides(data, fresh_dir, **{"train.steps": 40, "checkpoint.interval_steps": 10}),
        log_dir=workdir / "logs",
    )
    out["fresh_first_step_s"] = first_step_time(job, 1)
    # preemption: SIGUSR1 at step >= 15, count redone steps after the resume
    job.wait_for(r"step 15/", timeout=300)
    t_sig = time.monotonic()
    job.signal(1, signal.SIGUSR1)
    codes = job.wait()
    out["signal_to_exit_s"] = time.monotonic() - t_sig
    out["preempt_exit_codes"] = codes
    stopped = int((fresh_dir / "checkpoints" / "latest").read_text().split("_")[1])
    # resume: time to the first resumed step, and the verify+load time the manager logs
    job = Job(
        overrides(data, fresh_dir, **{"train.steps": 40, "checkpoint.interval_steps": 10}),
        log_dir=workdir / "logs",
    )
    out["resume_first_step_s"] = first_step_time(job, stopped + 1)
    job.wait()
    m = re.search(r"resumed from \S+ \(step \d+\) in ([0-9.]+)s", job.output(0))
    out["resume_load_s"] = float(m.group(1)) if m else None
    losses = logged_losses(fresh_dir.parent / "mlflow.db", run_id(fresh_dir))
    out["preempted_at_step"] = stopped
    out["steps_redone"] = sum(len(v) - 1 for v in losses.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=50e6, help="parameters of the save benchmark's model")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument(
        "--dir", default="", help="work folder on the disk to measure (default: a temp dir in /tmp)"
    )
    ap.add_argument("--skip-jobs", action="store_true", help="no training jobs (resume, preempt)")
    ap.add_argument("--only-async", action="store_true", help="only the async-vs-blocking stall benchmark")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tests.distributed import run_ranks

    work = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir or None))
    try:
        if args.only_async:
            _print_async(
                run_ranks(1, _async_bench, args.params, args.repeats, str(work / "a"), timeout=1800)[0]
            )
            return
        (r,) = run_ranks(1, _save_bench, args.params, args.repeats, str(work / "save"), timeout=1800)
        ratio = r["raw_s"] / r["save_s"]
        gb = r["bytes"] / 1e9
        print(
            f"save: {r['params'] / 1e6:.1f}M params, {gb:.2f} GB per checkpoint; "
            f"save {gb / r['save_s']:.2f} GB/s ({r['save_s']:.2f} s) vs raw write {gb / r['raw_s']:.2f} GB/s "
            f"({r['raw_s']:.2f} s): ratio {ratio:.2f} (target >= 0.7)"
        )
        print(
            f"  DeepSpeed's own save_checkpoint of the same state (no hash, fsync, manifest): {r['plain_s']:.2f} s"
        )
        print("  phases of the fastest save: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
        print(
            "  every repeat: save "
            + " ".join(f"{t:.2f}" for t in r["all_save_s"])
            + " s; raw "
            + " ".join(f"{t:.2f}" for t in r["all_raw_s"])
            + " s"
        )
        print(
            f"verify on resume (sizes + xxh3-128 of every file): {r['verify_s']:.2f} s "
            f"({gb / r['verify_s']:.2f} GB/s), ok={r['verify_ok']}"
        )
        _print_async(run_ranks(1, _async_bench, args.params, args.repeats, str(work / "a"), timeout=1800)[0])
        if not args.skip_jobs:
            j = _job_bench(work / "jobs")
            print(
                f"time to first step: fresh start {j['fresh_first_step_s']:.1f} s, resumed "
                f"{j['resume_first_step_s']:.1f} s (verify + load {j['resume_load_s']} s); debug model, 2 ranks"
            )
            print(
                f"preemption: SIGUSR1 at step 15 -> checkpoint at step {j['preempted_at_step']}, exit codes "
                f"{j['preempt_exit_codes']} {j['signal_to_exit_s']:.1f} s after the signal; steps redone after "
                f"resume: {j['steps_redone']}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _print_async(a: dict) -> None:
    import statistics

    b, s = statistics.median(a["blocking"]), statistics.median(a["async"])
    print(
        f"async save: {a['params'] / 1e6:.1f}M params, {a['bytes'] / 1e9:.2f} GB per checkpoint; training stall "
        f"per save (median of {len(a['async'])}): blocking {b:.2f} s, async {s:.2f} s "
        f"(host copy {statistics.median(a['async_capture']):.2f} s, the write overlapped "
        f"{statistics.median(a['async_steps']):.0f} steps of {statistics.median(a['step']):.2f} s): "
        f"ratio async/blocking {s / b:.2f}"
    )
    print(
        "  every save: blocking "
        + " ".join(f"{t:.2f}" for t in a["blocking"])
        + " s; async "
        + " ".join(f"{t:.2f}" for t in a["async"])
        + " s"
    )


if __name__ == "__main__":
    main()
