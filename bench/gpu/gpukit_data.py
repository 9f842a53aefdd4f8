"""Stages `data` and `loader` of the GPU validation kit: synthetic shards through the data_prep CLI, and the
training loader's samples/s against what the training stage consumed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gpukit_shared import (
    MODES,
    Unit,
    data_paths,
    datasheet_tflops,
    kit_overrides,
    load_kit_config,
)

# ---- data -----------------------------------------------------------------------------------------


def unit_data(ctx: dict, res: Unit) -> None:
    """Synthetic shards through the real CLI (`python -m data_prep synth|tokenizer|pairs|text`), in-process."""
    from data_prep.cli import main as data_prep

    m = MODES[ctx["mode"]]
    p = data_paths(ctx)
    raw = p["root"] / "raw"
    workers = str(max(1, min(8, (os.cpu_count() or 2) - 1)))
    steps = [
        (
            "synth",
            ["synth", "--output", str(raw), "--num-images", str(m["num_images"]), "--num-val-images", "0"]
            + ["--num-docs", str(m["num_docs"]), "--num-val-docs", "0", "--num-eval-images", "0"]
            + ["--num-task-images", "0"],
        ),
        (
            "tokenizer",
            ["tokenizer", "--input", str(raw / "text" / "train.jsonl"), str(raw / "pairs")]
            + ["--vocab-size", "1000", "--output", str(p["tokenizer"])],
        ),
        (
            "pairs",
            ["pairs", "--input", str(raw / "pairs"), "--tokenizer", str(p["tokenizer"])]
            + ["--image-size", str(m["image_size"]), "--output", str(p["pairs"]), "--workers", workers]
            + ["--no-progress"],
        ),
        (
            "text",
            ["text", "--input", str(raw / "text" / "train.jsonl"), "--tokenizer", str(p["tokenizer"])]
            + ["--seq-len", str(m["text_seq_len"]), "--output", str(p["text"]), "--workers", workers]
            + ["--no-progress"],
        ),
    ]
    seconds = {}
    for name, argv in steps:
        t0 = time.perf_counter()
        code = data_prep(argv)
        seconds[name] = round(time.perf_counter() - t0, 2)
        if code != 0:
            raise RuntimeError(f"python -m data_prep {' '.join(argv)} exited {code}")
        res["seconds"] = seconds
    stats = {k: json.loads((p[k] / "stats.json").read_text()) for k in ("pairs", "text")}
    res["pairs_samples"] = stats["pairs"]["samples"]
    res["text_samples"] = stats["text"]["samples"]
    res["image_size"] = m["image_size"]
    res["text_seq_len"] = m["text_seq_len"]
    res["vocab_size"] = json.loads((p["tokenizer"] / "tokenizer.json").read_text())["vocab_size"]
    res["paths"] = {k: str(v) for k, v in p.items()}


# ---- data loader ----------------------------------------------------------------------------------


def loader_rate(cfg, stream: Path, micro: int, workers: int, seconds: float) -> dict:
    """Samples/s of the training loader on one stream (JPEG decode + normalize or span sampling, collation)."""
    import dataclasses

    from parallel.groups import Topology
    from training.config import StreamConfig
    from training.data.loader import build_loader

    data = dataclasses.replace(
        cfg.data, train=[StreamConfig(path=str(stream))], num_workers=workers, shuffle=True
    )
    loader = build_loader(data, cfg.model, Topology.single_process("cpu"), micro, "train")

    def forever():
        while True:
            yield from loader

    it = forever()
    t_first = time.perf_counter()
    next(it)  # worker start-up and the first batch
    first = time.perf_counter() - t_first
    n, batches, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or batches < 3:
        n += next(it).batch_size
        batches += 1
    rate = n / (time.perf_counter() - t0)
    return {
        "workers": workers,
        "micro_batch": micro,
        "samples_per_s": round(rate, 1),
        "first_batch_s": round(first, 2),
    }


def unit_loader(ctx: dict, res: Unit) -> None:
    import torch

    from training import flops as F

    m = MODES[ctx["mode"]]
    p = data_paths(ctx)
    cfg = load_kit_config(
        ctx, kit_overrides(ctx, Path(ctx["work"]) / "loader", [(p["text"], None)], m["micro"])
    )
    res["cpu_count"] = os.cpu_count()
    res["config_num_workers"] = cfg.data.num_workers
    train = (ctx["results"].get("train") or {}).get("selective") or {}
    runs = train.get("runs") or {}
    consumed = {}
    for kind in ("text", "image_text"):
        sps = (runs.get(kind) or {}).get("samples_per_s")
        if sps:
            consumed[kind] = {
                "samples_per_s": sps,
                "source": "train stage (selective, micro batch as config)",
            }
    if len(consumed) < 2 and torch.cuda.is_available():
        # no training figure: what one GPU would consume at 40% of the datasheet peak (planning estimate)
        peak = (datasheet_tflops(torch.cuda.get_device_name(0)) or 989.0) * 1e12 * 0.4
        est = {
            "text": peak / F.sample_flops_estimate(cfg.model, 2048, 0, 512),
            "image_text": peak / F.sample_flops_estimate(cfg.model, cfg.model.image_slots + 23, 1),
        }
        for kind, v in est.items():
            consumed.setdefault(kind, {"samples_per_s": round(v, 2), "source": "estimate at 40% MFU"})
    res["consumed"] = consumed
    rates = {}
    for kind, stream in (("text", p["text"]), ("image_text", p["pairs"])):
        rows = []
        for w in m["loader_workers"]:
            rows.append(loader_rate(cfg, stream, m["micro"], w, m["loader_seconds"]))
            rates[kind] = rows
            res["loader"] = rates
    ratios = {}
    for kind, rows in rates.items():
        need = (consumed.get(kind) or {}).get("samples_per_s")
        if need:
            ratios[kind] = {f"{r['workers']} workers": round(r["samples_per_s"] / need, 2) for r in rows}
    res["ratio_loader_over_consumed"] = ratios
