"""Stages `train:*` and `resume:*` of the GPU validation kit: the real Trainer on the real model (MFU, memory,
kernels) and an exact resume through `python -m training`'s own path."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import statistics
import time
import warnings
from pathlib import Path

from gpukit_shared import (
    MODES,
    ROOT,
    Unit,
    attempt,
    data_paths,
    datasheet_tflops,
    first_line,
    gib,
    kit_overrides,
    load_kit_config,
    optimizer_name,
    peak_tflops,
    process_memory_gib,
    require_device,
    single_process_env,
    sync,
)

# ---- training -------------------------------------------------------------------------------------


def collect_batches(trainer, per_kind: int, max_batches: int = 64) -> dict[str, list]:
    """Batches of the trainer's own loader (mixed streams, per_stream batching), sorted by kind."""
    out: dict[str, list] = {"text": [], "image_text": []}
    it = trainer.batches()
    for _ in range(max_batches):
        b = next(it)
        kind = "image_text" if b.images.shape[0] > 0 else "text"
        if len(out[kind]) < per_kind:
            out[kind].append(b)
        if all(len(v) >= per_kind for v in out.values()):
            break
    return out


def measure(
    trainer, batches: list, warmup: int, steps: int, peak: float | None, datasheet: float | None
) -> dict:
    """Trainer.train_step over pre-loaded batches (cycled): the step's figures, MFU against both peaks."""
    it = itertools.cycle(batches)
    for _ in range(warmup):
        trainer.train_step(it)
    rows = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        m = trainer.train_step(it)
        sync()
        rows.append((time.perf_counter() - t0, m))
    dt = statistics.median(r[0] for r in rows)
    tokens = statistics.median(r[1]["tokens"] for r in rows)
    flops = statistics.median(r[1]["flops"] for r in rows)
    samples = batches[0].batch_size
    out = {
        "micro_batch": samples,
        "seq_len": batches[0].seq_len,
        "images_per_batch": int(batches[0].images.shape[0]),
        "spans_per_batch": int(batches[0].span_tokens.shape[0]),
        "timed_steps": steps,
        "warmup_steps": warmup,
        "step_time_s": round(dt, 4),
        "step_time_min_s": round(min(r[0] for r in rows), 4),
        "tokens_per_s": round(tokens / dt, 1),
        "samples_per_s": round(samples / dt, 3),
        "model_tflops_per_s": round(flops / dt / 1e12, 4),
        "flops_per_step": flops,
        "losses": [round(r[1]["loss"], 5) for r in rows],
        "losses_finite": all(math.isfinite(r[1]["loss"]) for r in rows),
        "mfu": round(flops / dt / (peak * 1e12), 4) if peak else None,
        "mfu_datasheet": round(flops / dt / (datasheet * 1e12), 4) if datasheet else None,
    }
    import torch

    if torch.cuda.is_available():
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def profile_step(trainer, batches: list) -> dict:
    """One more step under torch.profiler: which attention / norm / optimizer kernels actually ran."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    on_gpu = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    it = itertools.cycle(batches)
    with profile(activities=acts) as prof:
        trainer.train_step(it)
        sync()
    ka = prof.key_averages()

    def dev_time(e) -> float:
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            v = getattr(e, attr, None)
            if v:
                return float(v)
        return 0.0

    families = {
        "attention": ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention", "fmha")
    }
    families["layer_norm"] = ("layer_norm", "layernorm")
    families["optimizer"] = ("adam", "optimizer.step")
    found = {k: {} for k in families}
    for e in ka:
        low = e.key.lower()
        if low.startswith("autograd::"):
            continue
        for fam, keys in families.items():
            if any(k in low for k in keys):
                found[fam][e.key[:120]] = int(e.count)
    total_dev = sum(dev_time(e) for e in ka) or 1.0
    top = sorted(ka, key=lambda e: dev_time(e) if on_gpu else e.self_cpu_time_total, reverse=True)[:10]
    top_rows = [
        {
            "name": e.key[:120],
            "count": int(e.count),
            "share": round((dev_time(e) / total_dev) if on_gpu else 0.0, 4),
            "self_ms": round((dev_time(e) if on_gpu else e.self_cpu_time_total) / 1e3, 3),
        }
        for e in top
    ]
    return {"families": found, "top": top_rows, "timeline": "GPU kernels" if on_gpu else "CPU ops"}


def unit_train(ctx: dict, res: Unit, variant: str) -> None:
    import torch

    from parallel.groups import init_distributed
    from training.config.tokenizer import run_tokenizer
    from training.model.memory import rank_memory
    from training.trainer import Trainer

    require_device(ctx)
    m = MODES[ctx["mode"]]
    p = data_paths(ctx)
    env = ctx["results"].get("env") or {}
    on_gpu = torch.cuda.is_available()
    if on_gpu and not (env.get("fused_adam") or {}).get("ok", True):
        # the env stage saw FusedAdam fail: optim.fused=auto would spend the JIT build again before its
        # own fallback (torch AdamW fused); go straight to that fallback
        import deepspeed.ops.adam as ds_adam

        class _Unavailable:
            def __init__(self, *a, **k):
                raise RuntimeError("FusedAdam failed in the env stage (see there)")

        ds_adam.FusedAdam = _Unavailable
        res["note"] = "FusedAdam failed in the env stage: optim.fused=auto fell back to torch AdamW"
    run_dir = Path(ctx["work"]) / f"train-{variant}"
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = kit_overrides(ctx, run_dir, [(p["pairs"], 0.5), (p["text"], 0.5)], m["micro"])
    overrides += [f"model.activation_checkpointing={variant}", "train.steps=1000", "optim.warmup_steps=0"]
    res["config"] = {"file": m["config"], "overrides": overrides}
    cfg = load_kit_config(ctx, overrides)
    single_process_env()
    topo = init_distributed(cfg.parallel)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, topo, run_tokenizer(cfg.data.tokenizer).sha256)
    res["build_s"] = round(time.perf_counter() - t0, 2)
    precision = trainer.cfg.train.precision
    res["precision"] = precision
    res["precision_reason"] = trainer.precision.reason
    res["zero_stage"] = cfg.train.zero_stage
    res["optimizer"] = optimizer_name(trainer.engine)
    res["sdp_flags_in_step"] = {
        k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")()
        for k in ("flash", "mem_efficient", "math", "cudnn")
        if hasattr(torch.backends.cuda, f"{k}_sdp_enabled")
    }
    params = sum(q.numel() for q in trainer.engine.module.parameters())
    trainable = sum(q.numel() for q in trainer.engine.module.parameters() if q.requires_grad)
    res["params"] = {"total": params, "trainable": trainable}
    formula = rank_memory(cfg.model, tp=1, dp=1, zero=cfg.train.zero_stage, precision=precision)
    mem = {
        "formula_model_states_gib": gib(formula.total_gib),
        "formula_parts_gib": {
            "weights": gib(formula.weights_gib),
            "grads": gib(formula.grads_gib),
            "optimizer": gib(formula.optimizer_gib),
        },
    }
    if on_gpu:
        mem["after_build_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        mem["after_build_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        mem["process_peak_rss_gib"] = round(process_memory_gib(), 2)
    res["memory"] = mem

    peak = peak_tflops(ctx, precision)
    datasheet = datasheet_tflops(torch.cuda.get_device_name(0)) if on_gpu else None
    res["peak_tflops_used"] = {"measured": peak, "datasheet": datasheet, "precision": precision}
    t0 = time.perf_counter()
    batches = collect_batches(trainer, per_kind=3)
    res["batches"] = {
        "source": "the Trainer's own streaming loader over data_prep synth shards (pairs 0.5 + text 0.5, "
        "per_stream batching), pre-loaded and cycled: data wait excluded (the loader stage measures it)",
        "load_s": round(time.perf_counter() - t0, 2),
    }
    runs, steps = {}, ctx["steps"] or m["steps"]
    if m["image_micro_large"] and variant == "selective":
        # image-text rows are short (~K + caption tokens): also 4x the samples per micro-batch
        import dataclasses

        from training.config import StreamConfig
        from training.data.loader import build_loader

        data = dataclasses.replace(cfg.data, train=[StreamConfig(path=str(p["pairs"]))])
        loader = build_loader(data, cfg.model, topo, m["image_micro_large"], "train")
        batches["image_text_large_batch"] = [b for _, b in zip(range(2), loader)]
        del loader
    peaks = [mem.get("after_build_peak_gib", 0.0)]
    for kind in [k for k in ("text", "image_text", "image_text_large_batch") if k in batches]:
        if not batches[kind]:
            runs[kind] = {"error": f"the loader gave no {kind} batch in 64 tries"}
            continue
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        try:
            runs[kind] = measure(trainer, batches[kind], m["warmup"], steps, peak, datasheet)
            peaks.append(runs[kind].get("peak_memory_gib", 0.0))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at this shape: the next kind still runs
            runs[kind] = {"error": first_line(e)}
            if on_gpu:
                peaks.append(round(torch.cuda.max_memory_allocated() / 2**30, 2))
                trainer.engine.zero_grad()
                torch.cuda.empty_cache()
        res["runs"] = runs
    if on_gpu:
        mem["peak_gib"] = max(peaks)
        mem["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        mem["peak_over_formula"] = round(mem["peak_gib"] / max(formula.total_gib, 1e-9), 2)
        # DeepSpeed's ZeRO-1 also holds an fp32 gradient partition (4 B/trainable parameter) the formula omits
        mem["after_build_over_formula"] = round(mem["after_build_gib"] / max(formula.total_gib, 1e-9), 2)
    else:
        mem["process_peak_rss_gib"] = round(process_memory_gib(), 2)
    res["memory"] = mem
    if batches["text"]:
        res["kernels"] = attempt(profile_step, trainer, batches["text"])


# ---- resume ---------------------------------------------------------------------------------------

RESUME_STEPS, RESUME_SAVE_AT = 4, 2


def resume_overrides(ctx: dict, run_dir: Path) -> list[str]:
    m = MODES[ctx["mode"]]
    p = data_paths(ctx)
    ov = kit_overrides(ctx, run_dir, [(p["pairs"], 0.5), (p["text"], 0.5)], m["resume_micro"])
    ov = [o for o in ov if not o.startswith(("checkpoint.interval_steps", "model.vocab_size"))]
    return (
        ov
        + list(m["resume_model"])
        + [
            f"train.steps={RESUME_STEPS}",
            f"checkpoint.interval_steps={RESUME_SAVE_AT}",
            "checkpoint.keep_last=2",
            "optim.warmup_steps=0",
            "train.log_interval=1",
        ]
    )


def deterministic_settings() -> list[str]:
    """CUDA: deterministic kernels where torch has them (warn, not fail, where it has none)."""
    import torch

    if not torch.cuda.is_available():
        return []
    torch.use_deterministic_algorithms(True, warn_only=True)
    # not the NaN fill of new tensors deterministic mode adds: this check is about resume, not about buffers
    with contextlib.suppress(ImportError, AttributeError):
        import torch.utils.deterministic

        torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return [
        "torch.use_deterministic_algorithms(True, warn_only=True) (no NaN fill of new tensors)",
        "torch.backends.cudnn.deterministic=True, benchmark=False",
        f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}",
    ]


def run_training(ctx: dict, res: Unit, overrides: list[str]) -> list[tuple[int, float]]:
    """`python -m training`'s own path (training.entrypoint.run_with_trainer -> Trainer.train())."""
    from training.entrypoint import run_with_trainer

    require_device(ctx)
    res["config"] = {"file": MODES[ctx["mode"]]["config"], "overrides": overrides}
    res["determinism"] = deterministic_settings()
    single_process_env()
    box = {}

    def fn(trainer):
        box["trainer"] = trainer
        code = trainer.train()
        box["optimizer"] = optimizer_name(trainer.engine)
        return code

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        code = run_with_trainer(
            str(ROOT / MODES[ctx["mode"]]["config"]), overrides, fn, name="kit", trains=True
        )
        res["seconds"] = round(time.perf_counter() - t0, 1)
    nondeterministic = sorted(
        {str(w.message).splitlines()[0][:200] for w in caught if "deterministic" in str(w.message)}
    )
    res["nondeterministic_ops_warned"] = nondeterministic
    res["exit_code"] = code
    if code != 0:
        raise RuntimeError(f"training exited {code} (see run.log)")
    trainer = box["trainer"]
    res["optimizer"] = box.get("optimizer")
    res["precision"] = trainer.cfg.train.precision
    res["params"] = sum(q.numel() for q in trainer.engine.module.parameters())
    losses = [(int(s), float(v)) for s, v in trainer.losses]
    res["losses"] = losses
    return losses


def unit_resume_first(ctx: dict, res: Unit) -> None:
    run_dir = Path(ctx["work"]) / "resume-a"
    losses = run_training(ctx, res, resume_overrides(ctx, run_dir))
    ckpt = run_dir / "checkpoints" / f"step_{RESUME_SAVE_AT:08d}"
    if not (ckpt / "COMPLETE").is_file():
        raise RuntimeError(f"no complete checkpoint at {ckpt}")
    res["checkpoint"] = str(ckpt)
    res["checkpoint_bytes"] = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    if [s for s, _ in losses] != list(range(1, RESUME_STEPS + 1)):
        raise RuntimeError(f"expected steps 1..{RESUME_STEPS}, got {[s for s, _ in losses]}")


def unit_resume_second(ctx: dict, res: Unit) -> None:
    """A requeued job: the same run folder and config, `checkpoint.resume=auto`, the newest checkpoint
    being step 2 (the first run's step-4 checkpoint is moved aside, as if the job had died before it)."""
    import torch

    first = (ctx["results"].get("resume") or {}).get("first") or {}
    if first.get("status") != "ok":
        raise RuntimeError("the first resume run did not finish: nothing to resume from")
    run_dir = Path(ctx["work"]) / "resume-a"
    last = run_dir / "checkpoints" / f"step_{RESUME_STEPS:08d}"
    if last.is_dir():
        os.replace(last, run_dir / f"moved-aside-step_{RESUME_STEPS:08d}")
    losses = dict(run_training(ctx, res, resume_overrides(ctx, run_dir)))
    straight = {int(s): float(v) for s, v in first["losses"]}
    steps = list(range(RESUME_SAVE_AT + 1, RESUME_STEPS + 1))
    if sorted(losses) != steps:
        raise RuntimeError(f"the resumed run ran steps {sorted(losses)}, expected {steps}")
    pairs = [(s, straight[s], losses[s]) for s in steps]
    diffs = [abs(a - b) for _, a, b in pairs]
    rel = [abs(a - b) / max(abs(a), 1e-12) for _, a, b in pairs]
    bit_exact = all(a == b for _, a, b in pairs)
    res["compared"] = [{"step": s, "straight": a, "resumed": b} for s, a, b in pairs]
    res["bit_exact"] = bit_exact
    res["max_abs_diff"] = max(diffs)
    res["max_rel_diff"] = max(rel)
    # CUDA: kernels without a deterministic implementation (the warned list) may reorder float additions;
    # with lr <= 1e-4 over <= 2 updates that moves the loss far less than 1e-4 relative, while a real resume
    # bug (dropout RNG, data position, optimizer state) moves it by ~1e-2. CPU must be bit-exact.
    tolerance = 1e-4 if torch.cuda.is_available() else 0.0
    res["tolerance_rel"] = tolerance
    res["passed"] = bit_exact or max(rel) <= tolerance
    if not res["passed"]:
        raise RuntimeError(f"resumed losses differ: {res['compared']}")
