"""The engine's settings: `train.zero` in DeepSpeed's config, validation of the new fields (each bad value
named), `parallel.sequence_parallel` refused with its reason, the fused-kernel report, the optimizer built."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from tests.paths import DEBUG_CONFIG
from training.config import load_config
from training.config.checks import sequence_parallel_problems
from training.engine import deepspeed_config, kernel_report, sdpa_kernels
from training.optim import build_optimizer


def _problems(*overrides: str) -> list[str]:
    return load_config(DEBUG_CONFIG, list(overrides)).problems(2, check_data=False)


def test_zero_settings_reach_deepspeed_config_with_gpu_defaults():
    z = deepspeed_config(load_config(DEBUG_CONFIG), 2)["zero_optimization"]
    assert z == {
        "stage": 1,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 500_000_000,
        "allgather_bucket_size": 500_000_000,
        "reduce_scatter": True,
    }
    cfg = load_config(
        DEBUG_CONFIG,
        [
            "parallel.tp=1",
            "train.zero_stage=3",
            "train.zero.overlap_comm=false",
            "train.zero.reduce_bucket_size=5e7",  # YAML-style floats of whole numbers are fine
            "train.zero.stage3_prefetch_bucket_size=1000",
            "train.zero.stage3_param_persistence_threshold=0",
        ],
    )
    z3 = deepspeed_config(cfg, 2)["zero_optimization"]
    assert z3["overlap_comm"] is False and z3["reduce_bucket_size"] == 50_000_000
    assert z3["stage3_prefetch_bucket_size"] == 1000 and z3["stage3_param_persistence_threshold"] == 0
    assert z3["stage3_max_live_parameters"] == 10**9 and z3["stage3_max_reuse_distance"] == 10**9
    assert z3["stage3_gather_16bit_weights_on_model_save"] is False
    assert not any(k.startswith("stage3") for k in z)  # only stage 3 gets the stage-3 knobs


def test_new_fields_validated_with_the_bad_value_named():
    assert _problems() == []
    probs = _problems(
        "train.zero.reduce_bucket_size=0",
        "train.zero.allgather_bucket_size=-5",
        "train.zero.stage3_max_reuse_distance=-1",
        "data.micro_batch_tokens=-8",
    )
    assert any("train.zero.reduce_bucket_size=0" in p for p in probs)
    assert any("train.zero.allgather_bucket_size=-5" in p for p in probs)
    assert any("train.zero.stage3_max_reuse_distance=-1" in p for p in probs)
    assert any("data.micro_batch_tokens=-8" in p for p in probs)
    # a token budget needs one stream per micro-batch
    assert any(
        "data.batching=per_stream" in p
        for p in _problems("data.micro_batch_tokens=4096", "data.batching=random")
    )
    assert _problems("data.micro_batch_tokens=4096", "data.batching=per_stream") == []
    with pytest.raises(UserError) as e:  # type errors: one UserError naming every bad value
        load_config(DEBUG_CONFIG, ["train.loss_weighting=tokens", "train.zero.overlap_comm=maybe"])
    assert "train.loss_weighting: 'tokens' is not one of 'micro_batch', 'token'" in str(e.value)
    assert "train.zero.overlap_comm" in str(e.value) and "maybe" in str(e.value)
    with pytest.raises(UserError, match="train.zero.reduce_buckets"):
        load_config(DEBUG_CONFIG, ["train.zero.reduce_buckets=1"])  # unknown key named


def test_sequence_parallel_is_refused_with_the_reason():
    cfg = load_config(DEBUG_CONFIG, ["parallel.sequence_parallel=true"])
    [cpu] = sequence_parallel_problems(cfg.parallel, on_gpu=False)
    assert "cannot run on a CPU" in cpu and "torch.cuda.current_device()" in cpu
    [gpu] = sequence_parallel_problems(cfg.parallel, on_gpu=True)
    assert "not implemented in MetaLM's layers" in gpu
    [tp1] = sequence_parallel_problems(
        load_config(DEBUG_CONFIG, ["parallel.sequence_parallel=true", "parallel.tp=1"]).parallel
    )
    assert "parallel.tp >= 2" in tp1
    if not torch.cuda.is_available():
        assert cpu in cfg.problems(2, check_data=False)
    assert sequence_parallel_problems(load_config(DEBUG_CONFIG).parallel) == []


def test_kernel_report_and_optimizer():
    cfg = load_config(DEBUG_CONFIG)
    model = torch.nn.Module()
    model.decoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, cfg.optim)
    line = kernel_report(opt, 0.0)
    for part in ("attention (SDPA):", "optimizer:", "apex:", "Transformer Engine:"):
        assert part in line
    if not torch.cuda.is_available():
        assert opt.defaults["fused"] is True and "fused CPU kernel" in opt.metalm_kernel
        assert sdpa_kernels(0.0).startswith("CPU: flash-CPU kernel")
        assert sdpa_kernels(0.1).startswith("CPU: math kernel")
    plain = build_optimizer(model, load_config(DEBUG_CONFIG, ["optim.fused=never"]).optim)
    assert not plain.defaults["fused"] and "not fused" in plain.metalm_kernel
