"""init_distributed: topology from torchrun-style env, megatron parallel_state, RNG streams, mpu, teardown."""

from __future__ import annotations

import os

import torch

from common.errors import UserError
from tests.distributed import run_ranks


def _topo(rank, world, tp):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from parallel import ParallelConfig, TopologyMPU, destroy_distributed, init_distributed

    topo = init_distributed(ParallelConfig(tp=tp, seed=7))
    mpu = TopologyMPU(topo)
    # the groups are real: a sum over the TP group sees tp ranks, over the DP group dp ranks
    x = torch.ones(1)
    dist.all_reduce(x, group=topo.tp_group)
    y = torch.ones(1)
    dist.all_reduce(y, group=topo.dp_group)
    default = torch.rand(4)
    with get_cuda_rng_tracker().fork():
        tp_stream = torch.rand(4)
    out = dict(
        rank=topo.rank,
        world=topo.world_size,
        tp_rank=topo.tp_rank,
        tp_size=topo.tp_size,
        dp_rank=topo.dp_rank,
        dp_size=topo.dp_size,
        device=str(topo.device),
        tp_sum=x.item(),
        dp_sum=y.item(),
        megatron_tp=parallel_state.get_tensor_model_parallel_world_size(),
        mpu=(
            mpu.get_model_parallel_world_size(),
            mpu.get_model_parallel_rank(),
            mpu.get_data_parallel_world_size(),
            mpu.get_data_parallel_rank(),
            mpu.get_tensor_model_parallel_src_rank(),
        ),
        default=default.tolist(),
        tp_stream=tp_stream.tolist(),
    )
    destroy_distributed()
    destroy_distributed()  # idempotent
    out["torn_down"] = not dist.is_initialized() and not parallel_state.model_parallel_is_initialized()
    return out


def test_tp2_dp2_topology_groups_and_rng():
    r = run_ranks(4, _topo, 2)
    for i, o in enumerate(r):
        assert (o["rank"], o["world"], o["tp_size"], o["dp_size"], o["megatron_tp"]) == (i, 4, 2, 2, 2)
        assert (o["tp_rank"], o["dp_rank"]) == (i % 2, i // 2)
        assert (o["tp_sum"], o["dp_sum"]) == (2.0, 2.0)
        assert o["mpu"] == (2, i % 2, 2, i // 2, i - i % 2)
        assert o["device"] == "cpu" and o["torn_down"]
    # default generator: same inside a TP group (replicated activations), different across DP ranks
    assert r[0]["default"] == r[1]["default"] and r[2]["default"] == r[3]["default"]
    assert r[0]["default"] != r[2]["default"]
    # TP tracker stream: different per TP rank, the same for the same TP rank of other DP replicas
    assert r[0]["tp_stream"] != r[1]["tp_stream"]
    assert r[0]["tp_stream"] == r[2]["tp_stream"]


def _world1_without_env(rank, world):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    return _topo(0, 1, 1)


def test_world_of_one_without_env():
    (o,) = run_ranks(1, _world1_without_env)
    assert (o["world"], o["tp_size"], o["dp_size"], o["tp_sum"]) == (1, 1, 1, 1.0)


def _bad(rank, world, tp, backend):
    import torch.distributed as dist

    from parallel import ParallelConfig, init_distributed

    try:
        init_distributed(ParallelConfig(tp=tp, backend=backend))
    except UserError as e:
        return str(e), dist.is_initialized()
    return None


def test_bad_layout_is_a_user_error_before_any_group():
    for msg, initialized in run_ranks(2, _bad, 4, "auto"):
        assert "parallel.tp=4 is larger than the world size 2" in msg and not initialized
    for msg, initialized in run_ranks(1, _bad, 1, "nccl"):
        assert "parallel.backend=nccl needs GPUs" in msg and not initialized


def _megatron_checkpoint_cpu(rank, world):
    from parallel import ParallelConfig, checkpoint, destroy_distributed, init_distributed

    init_distributed(ParallelConfig(tp=1))
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)

    def f(h):
        return torch.nn.functional.dropout(h @ w, 0.5, True).sum(-1)

    state = torch.get_rng_state()
    f(x).sum().backward()
    g_plain = (w.grad.clone(), x.grad.clone())
    w.grad = None
    x.grad = None
    torch.set_rng_state(state)
    checkpoint(f, x).sum().backward()
    destroy_distributed()
    return torch.equal(g_plain[0], w.grad) and torch.equal(g_plain[1], x.grad)


def test_checkpoint_replays_rng_on_cpu():
    assert run_ranks(1, _megatron_checkpoint_cpu) == [True]


def _cpu_patches(rank, world):
    import sys

    from deepspeed.accelerator import get_accelerator

    from parallel import cpu_compat

    before = get_accelerator().is_fp16_supported()
    cpu_compat.allow_fp16_on_cpu()
    cpu_compat.skip_deepspeed_shm_build()
    return (
        before,
        get_accelerator().is_fp16_supported(),
        torch.float16 in get_accelerator().supported_dtypes(),
        sys.modules["deepspeed.comm.torch"].build_shm_op(),
    )


def test_cpu_compat_patches():
    # in a forked child: the fp16 override must not leak into other tests of this session
    before, after, listed, shm = run_ranks(1, _cpu_patches)[0]
    assert after and listed and shm is None
    # DeepSpeed's own answer before the override follows the CPU (oneDNN fp16: AMX/AVX512-FP16 yes,
    # AVX2-only no); the override makes it accept fp16 on any CPU
    assert before == bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
