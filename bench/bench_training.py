"""Training benchmarks, all ratios measured in this one run (this machine is shared and noisy).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_training.py [--steps 6] [--keep DIR]

1. peak matmul FLOP/s of this machine in every precision (fp32, bf16, fp16), and the CPU model;
2. `small` preset training at `train.precision: auto` (or --precision; what the demo uses: bf16 where it is measured
   clearly faster, else fp32; full stack: DeepSpeed engine ZeRO-1, Megatron TP layers at TP=1, streaming
   loader, semi-causal batches; text stream, 4 x 512 tokens): MFU against the measured peak of the
   precision actually used (target >= 0.6);
3. full-stack tokens/s / a plain PyTorch loop (same MetaLM maths and batches, torch AdamW (fused, as the
   engine's), gradient clipping, tensors already in memory; in bf16 the plain model is cast to bf16)
   (target >= 0.9);
4. data pipeline samples/s with one loader worker / what the `metalm-1.3b` run consumes per GPU at
   40% MFU on an H100 (989 TFLOP/s bf16), per stream kind (target >= 3);
5. peak memory of the rank vs. the ZeRO model-state formula for the same run;
6. image-text training steps (64 px pairs, `small`): tokens/s with token-budget micro-batches
   (`data.micro_batch_tokens` = one text micro-batch's positions, --micro x 512) vs fixed 8-row micro-batches;
7. the DeepSpeed step at world size 1 before / after the CPU-efficiency changes (before: torch AdamW
   op by op, DeepSpeed's ZeRO defaults; after: fused AdamW, this repo's `train.zero` defaults): median
   forward / backward / optimizer / whole step, alternating, both wall and process CPU seconds.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

from common.process_setup import setup_process  # noqa: E402

setup_process()
H100_BF16_PEAK = 989e12
MFU_H100 = 0.40


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_peak(dtype: torch.dtype, n: int, seconds: float) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sh(*cmd: str) -> None:
    subprocess.run(
        [sys.executable, "-m", *cmd],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def build_data(d: Path) -> None:
    """Synthetic data: tokenizer, 64 px pairs + 513-token text (small), 224 px pairs + 2049-token text (1.3B)."""
    if (d / "done").is_file():
        return
    sh(
        "data_prep",
        "synth",
        "--output",
        str(d / "raw"),
        "--num-images",
        "600",
        "--num-val-images",
        "64",
        "--num-docs",
        "3000",
        "--num-val-docs",
        "100",
    )
    raw = d / "raw"
    tars = sorted(str(p) for p in (raw / "pairs").glob("train-*.tar"))
    sh(
        "data_prep",
        "tokenizer",
        "--input",
        str(raw / "text" / "train.jsonl"),
        str(raw / "pairs"),
        "--vocab-size",
        "1000",
        "--output",
        str(d / "tokenizer"),
    )
    tok = str(d / "tokenizer")
    for px in (64, 224):
        sh(
            "data_prep",
            "pairs",
            "--input",
            *tars,
            "--tokenizer",
            tok,
            "--image-size",
            str(px),
            "--output",
            str(d / f"pairs-{px}"),
            "--no-progress",
        )
    for n in (513, 2049):
        sh(
            "data_prep",
            "text",
            "--input",
            str(raw / "text" / "train.jsonl"),
            "--tokenizer",
            tok,
            "--seq-len",
            str(n),
            "--output",
            str(d / f"text-{n}"),
            "--no-progress",
        )
    (d / "done").write_text("ok\n")


def small_config(d: Path, run_dir: Path, micro: int, *extra: str):
    from training.config import load_config

    return load_config(
        ROOT / "configs" / "small.yaml",
        [
            f"data.tokenizer={d / 'tokenizer'}",
            f"data.train=[{{path: {d / 'text-513'}}}]",
            "data.val=[]",
            f"train.run_dir={run_dir}",
            "tracking.enabled=false",
            "checkpoint.interval_steps=0",
            "eval.batches=0",
            "eval.caption_samples=0",
            "optim.warmup_steps=0",
            "data.shuffle=false",
            f"train.micro_batch_size={micro}",
            f"train.global_batch_size={micro}",
            *extra,
        ],
    )


def best(steps: list[tuple[float, float, float]]) -> dict:
    """Figures of the fastest step (tokens, flops, seconds): on a shared machine the least disturbed one."""
    tokens, flops, dt = min(steps, key=lambda x: x[2] / max(x[0], 1))
    return {"tokens_per_s": tokens / dt, "flops_per_s": flops / dt, "step_time": dt}


def full_stack(trainer, steps: int) -> list[tuple[float, float, float]]:
    """Steps through the real train_step (engine + streaming loader): (tokens, flops, seconds) per step."""
    it = trainer.batches()
    trainer.train_step(it)  # warm-up
    out = []
    for _ in range(steps):
        m = trainer.train_step(it)
        out.append((m["tokens"], m["flops"], m["step_time"]))
    return out


def plain_loop(
    model, batches: list, steps: int, lr: float, clip: float, dtype: torch.dtype = torch.float32
) -> list[tuple[float, float, float]]:
    """The same model maths in a plain loop: forward, backward, clip, torch AdamW, tensors in memory
    (bf16/fp16: the model cast to that dtype; autocast does not reach Megatron's custom autograd linears)."""
    from common.special_tokens import PAD_ID
    from training import flops as F

    model.to(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), fused=True)  # the kernel the engine gets
    model.train()

    def step(b):
        loss = model(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])
    out = []
    for i in range(steps):
        b = batches[(i + 1) % len(batches)]
        t0 = time.perf_counter()
        step(b)
        dt = time.perf_counter() - t0
        out.append(
            (float((b.tokens != PAD_ID).sum()) + b.image_dest.numel(), F.batch_flops(model.cfg, b), dt)
        )
    return out


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def image_text_budget(d: Path, work: Path, topo, micro: int, steps: int, rounds: int, *extra: str) -> dict:
    """6. Image-text steps (one micro-batch each): fixed 8 rows vs the token budget of one text micro-batch."""
    from training.trainer import Trainer

    pairs = [f"data.train=[{{path: {d / 'pairs-64'}}}]", "data.batching=per_stream", *extra]
    budget = micro * 512
    fixed = Trainer(small_config(d, work / "run-fixed8", 8, *pairs), topo)
    tokened = Trainer(
        small_config(d, work / "run-budget", 8, *pairs, f"data.micro_batch_tokens={budget}"), topo
    )

    def timed(trainer) -> list[tuple[float, float, float]]:
        """(tokens, wall s, process CPU s) per step (the loader worker's CPU is not counted: it prefetches)."""
        it = trainer.batches()
        trainer.train_step(it)  # warm-up
        out = []
        for _ in range(steps):
            c0 = time.process_time()
            m = trainer.train_step(it)
            out.append((m["tokens"], m["step_time"], time.process_time() - c0))
        return out

    runs: dict[str, list] = {"fixed": [], "budget": []}
    for _ in range(rounds):  # alternate: the machine is shared
        runs["fixed"] += timed(fixed)
        runs["budget"] += timed(tokened)
    rows = {"fixed": 8, "budget": tokened.train_loader.rows[0]}
    out = {k: median([t / dt for t, dt, _ in v]) for k, v in runs.items()}
    out.update({f"cpu_{k}": median([t / c for t, _, c in v]) for k, v in runs.items()})
    out.update({f"rows_{k}": v for k, v in rows.items()})
    out["tokens_fixed"] = median([t for t, _, _ in runs["fixed"]])
    out["tokens_budget"] = median([t for t, _, _ in runs["budget"]])
    out["micro_batch_tokens"] = budget
    del fixed, tokened
    gc.collect()
    return out


def step_phases(engine, batches: list, steps: int) -> list[tuple[float, ...]]:
    """(forward, backward, optimizer) wall seconds and the same in process CPU seconds, per step."""
    out = []
    for i in range(steps):
        b = batches[i % len(batches)]
        w0, c0 = time.perf_counter(), time.process_time()
        loss = engine(b)
        w1, c1 = time.perf_counter(), time.process_time()
        engine.backward(loss)
        w2, c2 = time.perf_counter(), time.process_time()
        engine.step()
        w3, c3 = time.perf_counter(), time.process_time()
        out.append((w1 - w0, w2 - w1, w3 - w2, c1 - c0, c2 - c1, c3 - c2))
    return out


def optimizer_before_after(cfg, topo, batches: list, steps: int, rounds: int) -> dict:
    """7. The same engine step before (torch AdamW op by op, DeepSpeed's ZeRO defaults) and after."""
    from training.config import load_config
    from training.engine import build_engine

    def engine(*extra: str):
        import dataclasses

        over = load_config(None, list(extra))
        c = dataclasses.replace(
            cfg,
            optim=dataclasses.replace(cfg.optim, fused=over.optim.fused),
            train=dataclasses.replace(cfg.train, zero=over.train.zero),
        )
        return build_engine(c, topo)[0]

    # before: what deepspeed_config gave (only the stage: DeepSpeed's defaults, overlap_comm off) + AdamW
    engines = {"before": engine("optim.fused=never", "train.zero.overlap_comm=false"), "after": engine()}
    for e in engines.values():  # warm-up (optimizer states allocated)
        step_phases(e, batches, 1)
    runs: dict[str, list] = {k: [] for k in engines}
    for _ in range(rounds):
        for k, e in engines.items():
            runs[k] += step_phases(e, batches, steps)
    kinds = {
        k: type(e.basic_optimizer).__name__ + (" fused" if e.basic_optimizer.defaults.get("fused") else "")
        for k, e in engines.items()
    }
    out = {
        k: [median([r[j] for r in v]) for j in range(6)]
        + [median([sum(r[:3]) for r in v]), median([sum(r[3:]) for r in v])]
        for k, v in runs.items()
    }
    del engines
    gc.collect()
    return {"phases": out, "optimizers": kinds, "steps": len(runs["before"])}


def loader_rate(cfg, topo, path: Path, micro: int, batches: int) -> float:
    """Samples/s of one loader worker (JPEG decode + normalize, spans, collation) on one stream."""
    import dataclasses

    from training.config import StreamConfig
    from training.data.loader import build_loader

    data = dataclasses.replace(cfg.data, train=[StreamConfig(path=str(path))], num_workers=1, shuffle=True)
    loader = build_loader(data, cfg.model, topo, micro, "train")

    def forever(ld):
        while True:
            yield from ld

    it = forever(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(it).batch_size
    rate = n / (time.perf_counter() - t0)
    del it, loader
    gc.collect()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating full-stack / plain rounds")
    ap.add_argument("--micro", type=int, default=4, help="sequences of 512 tokens per step (small preset)")
    ap.add_argument("--keep", default="", help="data/run folder to keep (default: a temporary one)")
    ap.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="train.precision of the runs"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_training_"))
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    print(f"machine: {os.cpu_count()} CPUs, torch threads {threads}, torch {torch.__version__}")

    from training.precision import cpu_model_name

    print(f"cpu: {cpu_model_name()}")

    # the machine is shared: the fp32 peak is sampled before, between and after the training runs; the best
    # sample is the peak (so MFU is conservative). A precision slower than ~20 GFLOP/s at 256^3 (bf16/fp16 on
    # AVX2-only CPUs) is not measured at 2048^3 (one product would take seconds).
    def peak(dtype: torch.dtype) -> float:
        small = matmul_peak(dtype, 256, 1.0)
        return (
            small
            if small < 20e9
            else max(small, matmul_peak(dtype, 1024, 2.0), matmul_peak(dtype, 2048, 2.0))
        )

    samples = {"fp32": [peak(torch.float32)], "bf16": [peak(torch.bfloat16)], "fp16": [peak(torch.float16)]}

    t0 = time.perf_counter()
    build_data(work / "data")
    print(f"   (data built in {time.perf_counter() - t0:.0f} s)")
    d = work / "data"

    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from training.model.metalm import MetaLM, count_parameters
    from training.trainer import Trainer

    cfg = small_config(d, work / "run", args.micro, f"train.precision={args.precision}")
    cfg.validate(1)
    topo = init_distributed(cfg.parallel)
    gc.collect()
    rss_before = rss_gib()
    trainer = Trainer(cfg, topo, load_tokenizer(cfg.data.tokenizer).sha256)
    used = trainer.cfg.train.precision  # train.precision=auto, resolved by the trainer
    print(f"   train.precision={args.precision} -> {used}: {trainer.precision.reason}")
    n_params = sum(p.numel() for p in trainer.engine.module.parameters())
    runs_full = full_stack(trainer, args.steps)
    rss_peak = rss_gib()
    batches = [trainer.to_device(b) for _, b in zip(range(3), trainer.batches())]
    plain_model = MetaLM(cfg.model, topo)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[used]
    runs_plain = plain_loop(plain_model, batches, args.steps, cfg.optim.lr, cfg.optim.grad_clip, dtype)
    for _ in range(args.rounds - 1):  # alternate; each side keeps its fastest step (the least disturbed)
        samples[used].append(peak(dtype))
        runs_full += full_stack(trainer, args.steps)
        runs_plain += plain_loop(plain_model, batches, args.steps, cfg.optim.lr, cfg.optim.grad_clip, dtype)
    samples[used].append(peak(dtype))
    peaks = {k: max(v) for k, v in samples.items()}
    used_peak = peaks[used]
    print(
        "1. peak matmul: "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
        + f" (bf16/fp32 = {peaks['bf16'] / peaks['fp32']:.3f}; {used} samples "
        + ", ".join(f"{p / 1e9:.0f}" for p in samples[used])
        + ")"
    )
    full, plain = best(runs_full), best(runs_plain)
    med = (
        sorted(x[0] / x[2] for x in runs_full)[len(runs_full) // 2]
        / sorted(x[0] / x[2] for x in runs_plain)[len(runs_plain) // 2]
    )
    b = batches[0]
    print(
        f"2. small preset, fastest of {len(runs_full)} steps ({n_params / 1e6:.1f}M params, text batches {b.tokens.shape[0]} x {b.tokens.shape[1]} tokens, "
        f"{b.span_tokens.shape[0]} spans), world size 1, {used}, ZeRO-{cfg.train.zero_stage}: "
        f"{full['flops_per_s'] / 1e9:.1f} model GFLOP/s, {full['step_time']:.2f} s/step -> "
        f"MFU {full['flops_per_s'] / used_peak:.2f} of the measured {used} peak (target >= 0.6)"
    )
    print(
        f"3. full stack {full['tokens_per_s']:,.0f} tokens/s vs plain PyTorch loop {plain['tokens_per_s']:,.0f} "
        f"tokens/s (plain MFU {plain['flops_per_s'] / used_peak:.2f}): ratio {full['tokens_per_s'] / plain['tokens_per_s']:.2f} "
        f"(target >= 0.9; fastest step of {len(runs_full)} each; ratio of the medians {med:.2f})"
    )

    # 4. data pipeline vs. what a 1.3B GPU consumes at 40% MFU
    from training import flops as F
    from training.model.config import model_config_from_preset

    big = model_config_from_preset("metalm-1.3b")  # its 64k vocabulary for the FLOP counts
    per_gpu = MFU_H100 * H100_BF16_PEAK
    need_text = per_gpu / F.sample_flops_estimate(big, 2048, images_per_sample=0, span_tokens=512)
    need_pairs = per_gpu / F.sample_flops_estimate(big, big.image_slots + 3 + 20, images_per_sample=1)
    import dataclasses

    cfg_big = dataclasses.replace(
        cfg, model=big, data=dataclasses.replace(cfg.data, span_min_len=64, span_max_len=128)
    )
    have_pairs = loader_rate(cfg_big, topo, d / "pairs-224", 8, 40)
    have_text = loader_rate(cfg_big, topo, d / "text-2049", 8, 40)
    print(
        f"4. data pipeline, 1 loader worker, metalm-1.3b shapes: image-text (224 px JPEG) {have_pairs:,.0f} samples/s "
        f"vs {need_pairs:,.1f} consumed per H100 at 40% MFU -> ratio {have_pairs / need_pairs:.1f}; text (2048 "
        f"tokens) {have_text:,.0f} samples/s vs {need_text:,.2f} -> ratio {have_text / need_text:.0f} (target >= 3). "
        f"At TP=2 each rank's loader feeds its TP group (both ranks load the same samples): the need per loader "
        f"doubles -> ratios {have_pairs / need_pairs / 2:.1f} / {have_text / need_text / 2:.0f}"
    )

    # 5. memory: ZeRO model states at DP=1 fp32 = weights 4P + grads 4P + Adam (m, v) 8P = 16P bytes
    # fp32: weights 4 + grads 4 + Adam 8 = 16 bytes/param; bf16/fp16 (DeepSpeed): + 16-bit weights and grads
    # 2 + 2 beside the fp32 master 4 + Adam 8 = 16 (+ the fp32 grad buffer of ZeRO-1 at DP=1: 4) -> 20
    states_bytes = 16 if used == "fp32" else 20
    states = states_bytes * n_params / 2**30
    print(
        f"5. memory (rank 0 of the run in 2.): peak RSS {rss_peak:.2f} GiB, of which {rss_peak - rss_before:.2f} GiB "
        f"allocated by building + training the model; ZeRO formula for its model states ({used}, DP=1: "
        f"{states_bytes} bytes x {n_params / 1e6:.1f}M params) = {states:.2f} GiB; the rest is activations, loader "
        "and allocator slack"
    )
    counts = count_parameters(big)
    p_total, tp, dp = counts["total"], 2, 32
    gib = 2**30
    per_gpu_states = (2 * p_total + 2 * p_total) / tp / gib + 12 * p_total / tp / dp / gib
    print(
        f"   metalm-1.3b at TP=2 x DP=32, ZeRO-1, bf16: {p_total / 1e9:.2f}B params -> per GPU bf16 weights + grads "
        f"{4 * p_total / tp / gib:.2f} GiB + fp32 master/Adam shard {12 * p_total / tp / dp / gib:.2f} GiB = "
        f"{per_gpu_states:.2f} GiB model states (upper bound: frozen ViT layers have no grads/optimizer state); "
        f"one sample: {F.sample_flops_estimate(big, 2048, 0, 512) / 1e12:.1f} TFLOP (text) / "
        f"{F.sample_flops_estimate(big, big.image_slots + 23, 1) / 1e12:.1f} TFLOP (image-text)"
    )

    # 6. image-text steps: token-budget micro-batches vs fixed 8 rows
    r = image_text_budget(d, work, topo, args.micro, args.steps, args.rounds, f"train.precision={used}")
    print(
        f"6. image-text steps (small, 64 px pairs, {used}, world size 1, one micro-batch per step; median of "
        f"{args.steps * args.rounds} steps each, alternating): fixed {r['rows_fixed']} rows "
        f"({r['tokens_fixed']:,.0f} positions incl. image slots) {r['fixed']:,.0f} tokens/s vs "
        f"data.micro_batch_tokens={r['micro_batch_tokens']} -> {r['rows_budget']} rows ({r['tokens_budget']:,.0f} positions) "
        f"{r['budget']:,.0f} tokens/s: ratio {r['budget'] / r['fixed']:.2f} (per process CPU second: "
        f"{r['cpu_fixed']:,.0f} vs {r['cpu_budget']:,.0f}, ratio {r['cpu_budget'] / r['cpu_fixed']:.2f})"
    )

    # 7. the engine step before / after the CPU-efficiency changes (same model, batches, precision)
    o = optimizer_before_after(trainer.cfg, topo, batches, args.steps, args.rounds)
    b7, a7 = o["phases"]["before"], o["phases"]["after"]
    print(
        f"7. engine step at world size 1 ({used}, ZeRO-{cfg.train.zero_stage}, small, text {b.tokens.shape[0]} x "
        f"{b.tokens.shape[1]}; median of {o['steps']} alternating steps), wall s forward/backward/optimizer/step: "
        f"before ({o['optimizers']['before']}, DeepSpeed ZeRO defaults) {b7[0]:.3f}/{b7[1]:.3f}/{b7[2]:.3f}/{b7[6]:.3f}, "
        f"after ({o['optimizers']['after']}, train.zero defaults) {a7[0]:.3f}/{a7[1]:.3f}/{a7[2]:.3f}/{a7[6]:.3f}: "
        f"optimizer x{b7[2] / a7[2]:.2f}, step x{b7[6] / a7[6]:.2f}; process CPU s optimizer {b7[5]:.3f} -> "
        f"{a7[5]:.3f}, step {b7[7]:.3f} -> {a7[7]:.3f}"
    )


if __name__ == "__main__":
    main()
