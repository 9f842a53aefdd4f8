"""Stages `prebuild`, `env` and `peak` of the GPU validation kit: versions, fused kernels (SDPA backends, apex,
DeepSpeed FusedAdam), and the matmul peak MFU is measured against."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from gpukit_shared import (
    Unit,
    attempt,
    datasheet_tflops,
    first_line,
)

# ---- environment ----------------------------------------------------------------------------------


def sdpa_probe(device: str, dtype) -> dict:
    """Which SDPA backends run the model's attention calls, and which one torch picks by default.

    Cases as in training/model/layers.py: the decoder (causal, no mask) and the encoders (bool key mask),
    each with attention dropout (training) and without (eval); head_dim 64 as in metalm-1.3b."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device=device).manual_seed(0)
    b, h, t, d = 2, 16, 256, 64

    def qkv():
        return [
            torch.randn(b, h, t, d, device=device, dtype=dtype, generator=g).requires_grad_() for _ in "qkv"
        ]

    mask = torch.ones(b, 1, 1, t, dtype=torch.bool, device=device)
    mask[1, ..., t // 2 :] = False
    cases = {
        "decoder_causal_dropout": dict(is_causal=True, dropout_p=0.1),
        "decoder_causal": dict(is_causal=True),
        "encoder_mask_dropout": dict(attn_mask=mask, dropout_p=0.1),
        "encoder_mask": dict(attn_mask=mask),
    }

    def run(kw):
        q, k, v = qkv()
        out = F.scaled_dot_product_attention(q, k, v, **kw)
        out.float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    out: dict = {}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH,
        }
        if hasattr(SDPBackend, "CUDNN_ATTENTION"):
            backends["cudnn"] = SDPBackend.CUDNN_ATTENTION
    except ImportError as e:
        return {"error": first_line(e)}
    per_backend = {}
    for name, backend in backends.items():
        row = {}
        for case, kw in cases.items():

            def one(backend=backend, kw=kw):
                with sdpa_kernel([backend]), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run(kw)
                return True

            r = attempt(one)
            row[case] = "ok" if r["ok"] else r["error"][:160]
        per_backend[name] = row
    out["runs_under_backend"] = per_backend
    chosen = {}
    for case, kw in cases.items():
        try:
            acts = [ProfilerActivity.CPU]
            with profile(activities=acts) as prof:
                run(kw)
            # the implementation ops (aten::_...attention...), forward and backward
            chosen[case] = sorted(
                {e.key for e in prof.key_averages() if e.key.startswith("aten::_") and "attention" in e.key}
            )
        except Exception as e:  # noqa: BLE001
            chosen[case] = [first_line(e)]
    out["default_picks"] = chosen
    return out


def nvidia_smi() -> dict:
    try:
        q = "name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,temperature.gpu"
        text = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        return dict(zip(q.split(","), [x.strip() for x in text.splitlines()[0].split(",")])) if text else {}
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}


def package_versions() -> dict:
    import importlib.metadata as md

    names = [
        "torch",
        "deepspeed",
        "megatron-core",
        "mosaicml-streaming",
        "numpy",
        "transformers",
        "torchvision",
        "sentencepiece",
        "pydantic",
        "triton",
        "mlflow",
        "apex",
        "transformer-engine",
        "flash-attn",
    ]
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def fused_adam_probe() -> dict:
    """Load (JIT-build on first use) DeepSpeed's FusedAdam and take one step: what optim.fused=auto needs."""
    import torch
    from deepspeed.ops.adam import FusedAdam

    t0 = time.perf_counter()
    p = torch.nn.Parameter(torch.randn(4096, device="cuda"))
    opt = FusedAdam([p], lr=1e-3, adam_w_mode=True)
    p.grad = torch.randn_like(p)
    before = p.detach().clone()
    opt.step()
    torch.cuda.synchronize()
    changed = bool((p.detach() != before).any())
    return {"seconds": round(time.perf_counter() - t0, 1), "step_changed_weights": changed}


def unit_prebuild(ctx: dict, res: Unit) -> None:
    """GPU: JIT-build DeepSpeed's FusedAdam in the background while the peak and data stages run (kit.py
    starts it first); the env stage's load then waits on torch's build lock and finds it built."""
    import torch

    if not torch.cuda.is_available():
        res["skipped"] = "no GPU"
        return
    from deepspeed.ops.op_builder import FusedAdamBuilder

    t0 = time.perf_counter()
    FusedAdamBuilder().load()
    res["seconds"] = round(time.perf_counter() - t0, 1)


def unit_env(ctx: dict, res: Unit) -> None:
    import torch

    res["python"] = sys.version.split()[0]
    res["platform"] = platform.platform()
    res["cpu_count"] = os.cpu_count()
    from training.precision import cpu_model_name

    res["cpu"] = cpu_model_name()
    res["torch"] = torch.__version__
    res["torch_cuda"] = torch.version.cuda
    res["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    res["packages"] = package_versions()
    res["pythonpath"] = os.environ.get("PYTHONPATH", "")
    install_log = os.environ.get("KIT_INSTALL_LOG")
    if install_log and Path(install_log).is_file():  # run.sh's install of the carried wheels
        res["wheel_install"] = Path(install_log).read_text().splitlines()[-40:]
    on_gpu = torch.cuda.is_available()
    res["cuda_available"] = on_gpu
    if on_gpu:
        props = torch.cuda.get_device_properties(0)
        res["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "bf16": torch.cuda.is_bf16_supported(),
            "datasheet_bf16_tflops": datasheet_tflops(props.name),
        }
        res["nvidia_smi"] = nvidia_smi()
        res["nccl"] = attempt(lambda: ".".join(map(str, torch.cuda.nccl.version())))
    b = torch.backends.cuda
    res["sdp_enabled"] = {
        name: attempt(getattr(b, f"{name}_sdp_enabled"))
        for name in ("flash", "mem_efficient", "math", "cudnn")
        if hasattr(b, f"{name}_sdp_enabled")
    }
    res["matmul_flags"] = {
        "allow_tf32": b.matmul.allow_tf32,
        "allow_bf16_reduced_precision_reduction": b.matmul.allow_bf16_reduced_precision_reduction,
    }
    res["sdpa"] = attempt(
        sdpa_probe, "cuda" if on_gpu else "cpu", torch.bfloat16 if on_gpu else torch.float32
    )

    def apex_parts():
        out = {}
        for mod in ("apex", "apex.normalization", "apex.optimizers", "fused_layer_norm_cuda", "amp_C"):
            r = attempt(__import__, mod)
            out[mod] = "importable" if r["ok"] else r["error"]
        return out

    res["apex"] = apex_parts()
    res["transformer_engine"] = attempt(lambda: __import__("transformer_engine").__version__)

    def megatron_fusions():
        from megatron.core.fusions import fused_layer_norm as fln

        return {
            k: bool(getattr(fln, k))
            for k in ("HAVE_PERSIST_LAYER_NORM", "HAVE_FUSED_LAYER_NORM")
            if hasattr(fln, k)
        }

    res["megatron_fused_layer_norm"] = attempt(megatron_fusions)
    res["model_layer_norm"] = (
        "torch.nn.LayerNorm (training/model/layers.py): apex/TE layer norms are not used"
    )

    def deepspeed_info():
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        return {
            "version": deepspeed.__version__,
            "file": deepspeed.__file__,
            "accelerator": get_accelerator()._name,
        }

    res["deepspeed"] = attempt(deepspeed_info)

    def megatron_info():
        import megatron.core

        return {"version": getattr(megatron.core, "__version__", None), "file": megatron.core.__file__}

    res["megatron"] = attempt(megatron_info)

    def streaming_info():
        from common.streaming_compat import ensure_streaming_importable

        ensure_streaming_importable()
        import streaming

        return {"version": streaming.__version__, "file": streaming.__file__}

    res["streaming"] = attempt(streaming_info)
    if on_gpu:
        from torch.utils import cpp_extension

        res["cuda_home"] = cpp_extension.CUDA_HOME
        res["nvcc"] = attempt(
            lambda: (
                subprocess.run(
                    [os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc"), "--version"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
        )
        res["fused_adam"] = attempt(fused_adam_probe)
        prebuild = Path(ctx["work"]) / "result-prebuild.json"
        if prebuild.is_file():  # the background build kit.py started (its own time and error, if any)
            res["fused_adam_prebuild"] = json.loads(prebuild.read_text())
    else:
        res["fused_adam"] = {
            "ok": False,
            "error": "not applicable on CPU: optim.fused=auto uses torch AdamW without a GPU",
        }


# ---- matmul peak ----------------------------------------------------------------------------------


def gpu_matmul_tflops(m: int, k: int, n: int, dtype, reps: int = 20, warmup: int = 3) -> float:
    """Median TFLOP/s of (m x k) @ (k x n) on random data (CUDA events around each product)."""
    import torch

    g = torch.Generator(device="cuda").manual_seed(m + k + n)
    a = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
    b = torch.randn(k, n, device="cuda", dtype=dtype, generator=g)
    c = torch.empty(m, n, device="cuda", dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=c)
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)
    ]
    for s, e in events:
        s.record()
        torch.mm(a, b, out=c)
        e.record()
    torch.cuda.synchronize()
    ms = statistics.median(s.elapsed_time(e) for s, e in events)
    return 2.0 * m * k * n / (ms / 1e3) / 1e12


def unit_peak(ctx: dict, res: Unit) -> None:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        res["device"] = name
        # clocks rise from idle only under load: ~1 s of products before anything is timed
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            gpu_matmul_tflops(8192, 8192, 8192, torch.bfloat16, reps=5, warmup=0)
        sizes = {}
        for n in (4096, 8192, 16384):
            sizes[f"bf16 {n}^3"] = round(gpu_matmul_tflops(n, n, n, torch.bfloat16), 1)
            res["bf16_tflops"] = sizes
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            res["fp32_tflops"] = {
                "fp32 8192^3 (no TF32)": round(gpu_matmul_tflops(8192, 8192, 8192, torch.float32), 1)
            }
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        # the decoder's own GEMMs at micro batch 8 x 2048 tokens (hidden 2048, FFN 8192, fused QKV 6144)
        t = 8 * 2048
        res["model_gemms_tflops"] = {
            f"qkv {t}x2048x6144": round(gpu_matmul_tflops(t, 2048, 6144, torch.bfloat16), 1),
            f"ffn up {t}x2048x8192": round(gpu_matmul_tflops(t, 2048, 8192, torch.bfloat16), 1),
            f"ffn down {t}x8192x2048": round(gpu_matmul_tflops(t, 8192, 2048, torch.bfloat16), 1),
            f"logits {t}x2048x64000": round(gpu_matmul_tflops(t, 2048, 64000, torch.bfloat16), 1),
        }
        best = max(sizes.values())
        res["peak_tflops"] = {"bf16": best, "fp32": max(res["fp32_tflops"].values())}
        res["datasheet_bf16_tflops"] = datasheet_tflops(name)
        res["method"] = (
            "torch.mm on random data, median of 20 timed products after 3 warm-ups (CUDA events), after ~1 s "
            "of products to raise the clocks"
        )
        return
    from training.precision import cpu_model_name, measure_matmul_gflops

    res["device"] = cpu_model_name()
    res["threads"] = torch.get_num_threads()
    figures = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        small = measure_matmul_gflops(dtype, 256, 0.2)
        sizes = {f"{label} 256^3": round(small / 1e3, 4)}
        if small >= 20.0:  # bf16 on AVX2-only CPUs runs at ~1 GFLOP/s: one small size tells enough
            sizes[f"{label} 512^3"] = round(measure_matmul_gflops(dtype, 512, 0.3) / 1e3, 4)
        figures[label] = sizes
        res[f"{label}_tflops"] = sizes
    res["peak_tflops"] = {k: max(v.values()) for k, v in figures.items()}
    res["datasheet_bf16_tflops"] = None
    res["method"] = "torch.mm on random data, best timed round (training.precision.measure_matmul_gflops)"
