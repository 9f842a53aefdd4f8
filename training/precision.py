"""Which precision a job trains in: `train.precision: auto` measured on the machine, or what the config says.

    caps = device_capabilities()                       # what the device accepts (DeepSpeed's view)
    choice = choose_precision("auto", caps)            # -> PrecisionChoice(precision, reason, gflops)

- On CUDA, `auto` is bf16 where the GPU has it, else fp16 (with dynamic loss scaling).
- On a CPU, `auto` runs a short matmul measurement (fp32 vs bf16, ~0.5 s, cached per machine in
  `~/.cache/metalm/precision.json` or `$METALM_CACHE_DIR`) and picks bf16 only when it is clearly faster
  (>= `BF16_MIN_SPEEDUP` x fp32), since bf16 also costs accuracy. Measured: Intel Xeons with AMX run
  bf16 ~3x faster than fp32; AVX2-only AMD EPYCs run bf16 >100x slower. fp16 is never chosen on a CPU.
- An explicit `fp32|bf16|fp16` wins; one the device refuses is a config error (`precision_problems`).

In a distributed job rank 0 decides and broadcasts (`resolve_precision`), so every rank agrees even
when the measurement is noisy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BF16_MIN_SPEEDUP = 1.5  # bf16 must beat fp32 by this factor on a CPU to be chosen
MATMUL_SIZE = 512  # n of the n x n x n product measured (the debug/small models' GEMMs are this size or less)
CACHE_VERSION = 1


@dataclass(frozen=True)
class Capabilities:
    """What the training device accepts, as DeepSpeed / torch report it."""

    device: str  # "cuda" or "cpu"
    bf16: bool
    fp16: bool
    name: str = ""  # GPU or CPU model


@dataclass
class PrecisionChoice:
    precision: str  # fp32 | bf16 | fp16
    requested: str  # what the config said (auto or the same)
    reason: str  # one line: why
    gflops: dict[str, float] = field(default_factory=dict)  # measured matmul GFLOP/s per precision (CPU auto)

    def mlflow_params(self) -> dict[str, object]:
        out: dict[str, object] = {"precision.requested": self.requested, "precision.chosen": self.precision}
        out.update({f"precision.gflops_{k}": round(v, 1) for k, v in self.gflops.items()})
        return out


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_capabilities() -> Capabilities:
    if torch.cuda.is_available():
        return Capabilities(
            "cuda",
            torch.cuda.is_bf16_supported(),
            True,
            torch.cuda.get_device_name(torch.cuda.current_device()),
        )
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return Capabilities("cpu", bool(acc.is_bf16_supported()), bool(acc.is_fp16_supported()), cpu_model_name())


def precision_problems(precision: str, caps: Capabilities | None = None) -> list[str]:
    """An explicit precision the device refuses, with what to use instead (empty when fine)."""
    if precision in ("auto", "fp32"):
        return []
    caps = caps or device_capabilities()
    if caps.device == "cuda":
        if precision == "bf16" and not caps.bf16:
            return [
                "train.precision=bf16: this GPU has no bf16; use train.precision=fp16 (loss scaling), fp32 or auto"
            ]
        return []
    if precision == "fp16" and not caps.fp16:
        return [
            f"train.precision=fp16: this CPU ({caps.name}) has no native fp16 and DeepSpeed refuses it; use "
            "train.precision=auto (measures fp32 vs bf16 here) or fp32"
        ]
    if precision == "bf16" and not caps.bf16:
        return [
            f"train.precision=bf16: this device ({caps.name}) refuses bf16; use train.precision=auto or fp32"
        ]
    return []


def measure_matmul_gflops(dtype: torch.dtype, n: int = MATMUL_SIZE, min_seconds: float = 0.15) -> float:
    """GFLOP/s of an n^3 matmul in `dtype` on the CPU, best of repeated timed rounds (one warm-up)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    reps, spent = 1, 0.0
    while spent < min_seconds:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        dt = (time.perf_counter() - t0) / reps
        best = min(best, dt)
        spent += dt * reps
        if dt * reps > 1.0:  # a very slow dtype (bf16 on AVX2-only CPUs): one round tells enough
            break
        reps = min(reps * 2, 64)
    return 2 * n**3 / best / 1e9


def _cache_path() -> Path:
    root = os.environ.get("METALM_CACHE_DIR") or str(Path.home() / ".cache" / "metalm")
    return Path(root) / "precision.json"


def _machine_key(caps: Capabilities) -> str:
    """Same CPU model, flags, thread count and torch build -> same measurement."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    raw = f"v{CACHE_VERSION}|{caps.name}|{flags}|{torch.get_num_threads()}|{torch.__version__}|{MATMUL_SIZE}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _read_cache(key: str) -> dict[str, float] | None:
    try:
        entry = json.loads(_cache_path().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(entry, dict) and all(isinstance(v, (int, float)) for v in entry.values()):
        return {k: float(v) for k, v in entry.items()}
    return None


def _write_cache(key: str, gflops: dict[str, float]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[key] = gflops
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home is no reason to fail a job
        log.debug("precision cache not written (%s)", e)


def cpu_matmul_gflops(caps: Capabilities, use_cache: bool = True) -> tuple[dict[str, float], bool]:
    """{fp32, bf16: GFLOP/s} for this CPU (measured, or from the cache); second value: from the cache."""
    key = _machine_key(caps)
    if use_cache and (hit := _read_cache(key)) is not None and {"fp32", "bf16"} <= hit.keys():
        return hit, True
    figures = {"fp32": measure_matmul_gflops(torch.float32)}
    if caps.bf16:
        figures["bf16"] = measure_matmul_gflops(torch.bfloat16)
    if use_cache:
        _write_cache(key, figures)
    return figures, False


def choose_precision(
    requested: str, caps: Capabilities | None = None, gflops: dict[str, float] | None = None
) -> PrecisionChoice:
    """The precision to train in. `gflops` injects CPU measurements (tests); else measured/cached."""
    if requested != "auto":
        return PrecisionChoice(requested, requested, "set in the config (train.precision)")
    caps = caps or device_capabilities()
    if caps.device == "cuda":
        if caps.bf16:
            return PrecisionChoice("bf16", "auto", f"GPU {caps.name} has bf16")
        return PrecisionChoice("fp16", "auto", f"GPU {caps.name} has no bf16: fp16 with dynamic loss scaling")
    cached = False
    if gflops is None:
        gflops, cached = cpu_matmul_gflops(caps)
    fp32, bf16 = gflops.get("fp32", 0.0), gflops.get("bf16", 0.0)
    source = "cached measurement" if cached else "measured"
    figures = f"{MATMUL_SIZE}^3 matmul {source}: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s"
    if caps.bf16 and fp32 > 0 and bf16 >= BF16_MIN_SPEEDUP * fp32:
        why = f"bf16 is {bf16 / fp32:.1f}x faster than fp32 on this CPU ({caps.name}; {figures})"
        return PrecisionChoice("bf16", "auto", why, gflops)
    ratio = f"{bf16 / fp32:.2g}x" if fp32 > 0 and bf16 > 0 else "n/a"
    why = (
        f"bf16 is not clearly faster on this CPU ({caps.name}; {figures}; bf16/fp32 {ratio} < "
        f"{BF16_MIN_SPEEDUP})"
    )
    return PrecisionChoice("fp32", "auto", why, gflops)


def resolve_precision(requested: str, topology=None) -> PrecisionChoice:
    """`choose_precision` on global rank 0, broadcast to every rank (they must all agree)."""
    import torch.distributed as dist

    if requested != "auto" or not dist.is_initialized() or dist.get_world_size() == 1:
        return choose_precision(requested)
    box = [asdict(choose_precision(requested))] if dist.get_rank() == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    return PrecisionChoice(**box[0])
