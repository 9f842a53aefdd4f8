"""What every stage of the GPU validation kit shares: the per-mode settings (MODES), the result file a stage
writes as it goes (Unit), and the config the stages start from (the mode's config file + the kit's
overrides). Imported by the gpukit_*.py stage modules; see stages.py for how they run."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense bf16 TFLOP/s of one GPU by the vendor's datasheet (no sparsity), matched on the device name.
DATASHEET_BF16_TFLOPS = [
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
]

# Per mode: the config file the kit starts from and the shapes it measures.
MODES = {
    "gpu": {
        "config": "configs/metalm-1.3b.yaml",
        "image_size": 224,
        "text_seq_len": 2049,  # 2048 decoder inputs + the shifted target
        "num_images": 1024,
        "num_docs": 12000,
        "micro": 8,  # configs/metalm-1.3b.yaml: micro_batch_size 8, per_stream batching
        "image_micro_large": 32,  # image-text rows are ~267 tokens: also measured with 4x the samples
        "warmup": 2,
        "steps": 5,
        "model": ["model.vocab_size=64000"],  # the real embedding (the synthetic tokenizer is small)
        "resume_model": [  # metalm-1.3b widths, 2 layers per stack: checkpoints of ~2 GB, not ~30
            "model.decoder.num_layers=2",
            "model.text_encoder.num_layers=2",
            "model.vision_encoder.num_layers=2",
        ],
        "resume_micro": 4,
        "loader_workers": [1, 4],
        "loader_seconds": 4.0,
    },
    "cpu": {
        "config": "configs/debug.yaml",
        "image_size": 32,
        "text_seq_len": 129,
        "num_images": 96,
        "num_docs": 300,
        "micro": 8,
        "image_micro_large": 0,
        "warmup": 1,
        "steps": 2,
        "model": [],
        # debug.yaml trains without dropout: switch it on so the resume check covers the RNG states
        "resume_model": ["model.dropout=0.1", "model.attention_dropout=0.1"],
        "resume_micro": 4,
        "loader_workers": [1],
        "loader_seconds": 1.0,
    },
}


class Unit:
    """The result of one unit: a dict written to disk after every update (`save`)."""

    def __init__(self, path: Path, name: str):
        self.path, self.data = path, {"unit": name, "status": "running"}
        self.save()

    def __setitem__(self, key, value):
        self.data[key] = value
        self.save()

    def __getitem__(self, key):
        return self.data[key]

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# ---- helpers --------------------------------------------------------------------------------------


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def datasheet_tflops(name: str) -> float | None:
    for key, value in DATASHEET_BF16_TFLOPS:
        if key in name:
            return value
    return None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def attempt(fn, *args, **kwargs) -> dict:
    """{"ok": True, "value": fn()} or {"ok": False, "error": ...} (probes never stop a unit)."""
    try:
        return {"ok": True, "value": fn(*args, **kwargs)}
    except Exception as e:  # noqa: BLE001 - a probe reports whatever fails
        return {"ok": False, "error": first_line(e)}


def single_process_env() -> None:
    """What torchrun gives a world of one (the NCCL/gloo rendezvous on loopback)."""
    from parallel.local_ranks import free_port, local_rank_env

    os.environ.update(local_rank_env(0, 1, free_port()))


def data_paths(ctx: dict) -> dict:
    d = Path(ctx["work"]) / "data"
    return {
        "root": d,
        "tokenizer": d / "tokenizer",
        "pairs": d / "pairs",
        "text": d / "text",
    }


def kit_overrides(
    ctx: dict, run_dir: Path, streams: list[tuple[Path, float | None]], micro: int
) -> list[str]:
    """Overrides of the mode's config file: synthetic shards, one process, no tracking/eval/checkpoints."""
    m = MODES[ctx["mode"]]
    p = data_paths(ctx)
    train = ", ".join(
        f"{{path: '{path}'}}" if prop is None else f"{{path: '{path}', proportion: {prop}}}"
        for path, prop in streams
    )
    ov = [
        f"data.tokenizer={p['tokenizer']}",
        f"data.train=[{train}]",
        "data.val=[]",
        "parallel.tp=1",
        f"train.run_dir={run_dir}",
        f"train.micro_batch_size={micro}",
        f"train.global_batch_size={micro}",
        "train.watchdog_timeout_s=0",
        "tracking.enabled=false",
        "checkpoint.interval_steps=0",
        "checkpoint.interval_minutes=0",
        "eval.interval_steps=0",
        "eval.batches=0",
        "eval.caption_interval_steps=0",
        "eval.caption_samples=0",
    ]
    return ov + list(m["model"]) + docking_overrides()


def docking_overrides() -> list[str]:
    """The kit measures speed, memory and resume, not quality: the encoders start from random weights. So the
    docked Hugging Face folders a config may name (absent on a bench machine) are dropped and frozen random
    weights allowed, for the fields this version of the model config has."""
    from training.model.config import ModelConfig

    m, out = ModelConfig(), []
    for enc in ("text_encoder", "vision_encoder"):
        for key in ("weights_path", "vocab_map_from"):
            if hasattr(getattr(m, enc), key):
                out.append(f"model.{enc}.{key}=")
    if hasattr(getattr(m, "freeze", None), "allow_random"):
        out.append("model.freeze.allow_random=true")
    return out


def require_device(ctx: dict) -> None:
    """The GPU mode trains the 2B-parameter model: never on a CPU by mistake."""
    import torch

    if ctx["mode"] == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible: the GPU mode needs one (the CPU dry run is --cpu)")


def load_kit_config(ctx: dict, overrides: list[str]):
    from training.config import load_config

    cfg = load_config(ROOT / MODES[ctx["mode"]]["config"], overrides)
    cfg.validate(1)
    return cfg


def gib(x: float) -> float:
    """GiB with 3 significant digits (the debug model's states are a few MiB)."""
    return float(f"{x:.3g}")


def process_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def optimizer_name(engine) -> str:
    """The innermost optimizer DeepSpeed wraps (FusedAdam, torch AdamW fused or not)."""
    import torch

    opt, chain = engine.optimizer, []
    for _ in range(5):
        if opt is None:
            break
        chain.append(type(opt).__name__)
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner is opt:
            break
        opt = inner
    name = f"{type(opt).__module__}.{type(opt).__name__}"
    if isinstance(opt, torch.optim.Optimizer) and "fused" in opt.defaults:
        name += f" (fused={opt.defaults.get('fused')})"
    if getattr(opt, "metalm_kernel", None):  # what training/optim.py says it chose, where it says so
        name += f" [{opt.metalm_kernel}]"
    return f"{name} inside {' > '.join(chain[:-1]) or 'the engine'}"


def peak_tflops(ctx: dict, precision: str) -> float | None:
    """The measured matmul peak of this run's peak stage for `precision` (TFLOP/s)."""
    peak = ctx["results"].get("peak") or {}
    value = (peak.get("peak_tflops") or {}).get(precision)
    return float(value) if value else None
