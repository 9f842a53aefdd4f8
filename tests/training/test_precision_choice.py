"""train.precision=auto and the precision checks, with the hardware capability injected (the answer must
not depend on which CPU runs the test), plus one real measurement and the rank-0 broadcast."""

from __future__ import annotations

import json

import pytest
import torch

from tests.distributed import run_ranks
from training.precision import (
    Capabilities,
    choose_precision,
    cpu_matmul_gflops,
    device_capabilities,
    measure_matmul_gflops,
    precision_problems,
)

AMX = Capabilities("cpu", bf16=True, fp16=True, name="Xeon with AMX")  # 2026-12-02: fp32 194, bf16 628
AVX2 = Capabilities("cpu", bf16=True, fp16=False, name="AVX2-only EPYC")  # 2026-11-21: fp32 ~150, bf16 ~1


def test_auto_on_cpus_follows_the_measurement():
    amx = choose_precision("auto", AMX, {"fp32": 194.0, "bf16": 628.0})
    assert amx.precision == "bf16" and "3.2x faster" in amx.reason and "628" in amx.reason
    avx2 = choose_precision("auto", AVX2, {"fp32": 150.0, "bf16": 1.0})
    assert avx2.precision == "fp32" and "not clearly faster" in avx2.reason
    # a little faster is not enough (bf16 also costs accuracy)
    assert choose_precision("auto", AMX, {"fp32": 150.0, "bf16": 200.0}).precision == "fp32"
    assert choose_precision("auto", AMX, {"fp32": 150.0, "bf16": 200.0}).gflops == {
        "fp32": 150.0,
        "bf16": 200.0,
    }
    # fp16 is never picked on a CPU, even where it is native and fast
    assert choose_precision("auto", AMX, {"fp32": 100.0, "bf16": 90.0, "fp16": 900.0}).precision == "fp32"


def test_auto_on_gpus_and_explicit_settings():
    assert (
        choose_precision("auto", Capabilities("cuda", bf16=True, fp16=True, name="H200")).precision == "bf16"
    )
    old = choose_precision("auto", Capabilities("cuda", bf16=False, fp16=True, name="V100"))
    assert old.precision == "fp16" and "loss scaling" in old.reason
    for p in ("fp32", "bf16", "fp16"):
        c = choose_precision(p, AVX2)  # no measurement for an explicit setting
        assert (c.precision, c.requested, c.gflops) == (p, p, {})
    params = choose_precision("auto", AMX, {"fp32": 194.0, "bf16": 628.0}).mlflow_params()
    assert params == {
        "precision.requested": "auto",
        "precision.chosen": "bf16",
        "precision.gflops_fp32": 194.0,
        "precision.gflops_bf16": 628.0,
    }


def test_refused_precisions_are_config_errors_naming_the_way_out():
    assert precision_problems("fp16", AMX) == []
    (msg,) = precision_problems("fp16", AVX2)
    assert "AVX2-only EPYC" in msg and "train.precision=auto" in msg
    assert precision_problems("auto", AVX2) == [] and precision_problems("fp32", AVX2) == []
    (gpu,) = precision_problems("bf16", Capabilities("cuda", bf16=False, fp16=True, name="V100"))
    assert "no bf16" in gpu and "fp16" in gpu
    # the real device: whatever it is, the check agrees with what DeepSpeed accepts
    caps = device_capabilities()
    if caps.device == "cpu":
        assert (precision_problems("fp16") == []) == bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def test_measurement_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("METALM_CACHE_DIR", str(tmp_path))
    first, cached = cpu_matmul_gflops(AMX)
    assert not cached and first["fp32"] > 0 and first["bf16"] > 0
    again, cached = cpu_matmul_gflops(AMX)
    assert cached and again == first
    (tmp_path / "precision.json").write_text("{not json")  # a damaged cache is measured again, not fatal
    _, cached = cpu_matmul_gflops(AMX)
    assert not cached and json.loads((tmp_path / "precision.json").read_text())


def test_real_matmul_measurement_is_positive():
    assert measure_matmul_gflops(torch.float32, n=128, min_seconds=0.01) > 0


def _resolve(rank, world):
    import torch.distributed as dist

    import training.precision as P

    dist.init_process_group("gloo")
    # each rank "measures" differently (a noisy machine): rank 0's answer must win everywhere
    figures = {"fp32": 100.0, "bf16": 400.0} if rank == 0 else {"fp32": 100.0, "bf16": 10.0}
    P.cpu_matmul_gflops = lambda caps, use_cache=True: (figures, False)
    P.device_capabilities = lambda: AMX
    choice = P.resolve_precision("auto")
    dist.destroy_process_group()
    return choice.precision, choice.reason


def test_rank0_decides_for_every_rank():
    r = run_ranks(2, _resolve)
    assert r[0] == r[1] and r[0][0] == "bf16"


@pytest.mark.parametrize("name", ["debug.yaml", "small.yaml"])
def test_cpu_configs_default_to_auto(name):
    from tests.paths import CONFIGS
    from training.config import load_config

    assert load_config(CONFIGS / name).train.precision == "auto"
