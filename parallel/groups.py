"""Process groups: torch.distributed + megatron-core parallel_state, with the TP/DP layout made explicit.

    topo = init_distributed(ParallelConfig(tp=2))   # reads RANK/WORLD_SIZE/... as torchrun sets them
    model = MetaLM(cfg, topo)                       # the TP group is passed in, not fished from globals
    ...
    destroy_distributed()

Rank layout (megatron-core's default order): consecutive global ranks form one TP group, so
tp_rank = rank % tp and dp_rank = rank // tp.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from common.errors import UserError
from parallel import cpu_compat
from parallel.config import ParallelConfig
from parallel.seeding import seed_rng_streams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topology:
    """Where this process sits: global rank and its tensor-parallel / data-parallel coordinates."""

    rank: int  # global rank
    world_size: int  # number of processes
    local_rank: int  # rank on this node (selects the GPU)
    tp_size: int  # tensor-parallel group size
    tp_rank: int  # rank inside the tensor-parallel group
    dp_size: int  # data-parallel size (= world_size // tp_size)
    dp_rank: int  # rank inside the data-parallel group (which data shard this rank reads)
    tp_group: Any  # torch.distributed ProcessGroup of this rank's TP group (None only when not initialized)
    dp_group: Any  # torch.distributed ProcessGroup of this rank's DP group (None only when not initialized)
    device: torch.device  # device of this rank's model (cuda:local_rank or cpu)
    world_group: Any = None  # process group of all ranks (checkpoint collectives); None = dist.group.WORLD

    @property
    def is_main(self) -> bool:
        """Global rank 0 (logs, MLflow, manifests)."""
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size} tp {self.tp_rank}/{self.tp_size} dp {self.dp_rank}/{self.dp_size}"

    @classmethod
    def single_process(cls, device: str | torch.device = "cpu") -> Topology:
        """A TP=1 layout without process groups (meta-device parameter counting only: no forward)."""
        return cls(0, 1, 0, 1, 0, 1, 0, None, None, torch.device(device))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"environment variable {name}={value!r} is not an integer: unset it or fix the launcher"
        ) from None


def init_distributed(cfg: ParallelConfig) -> Topology:
    """Initialize torch.distributed and megatron-core parallel_state (TP = cfg.tp); return the Topology.

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT as torchrun / the deepspeed launcher /
    our SLURM script set them. Without them (plain `python ...`) it runs as a world of one. Applies the
    CPU compatibility paths when no GPU is present and seeds the default and model-parallel RNGs.
    """
    from megatron.core import parallel_state

    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    problems = cfg.problems(world)
    if problems:
        raise UserError(problems)
    backend = cfg.resolved_backend()
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError(
            "parallel.backend=nccl needs GPUs but none is visible: use parallel.backend=auto or gloo"
        )
    cpu_compat.apply_cpu_compat()

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")

    timeout = timedelta(minutes=cfg.timeout_minutes)
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            dist.init_process_group(
                backend,
                rank=rank,
                world_size=world,
                timeout=timeout,
                **({"device_id": device} if backend == "nccl" else {}),
            )
        elif world == 1:
            # a world of one started by plain `python` (no launcher): what a launcher would have said,
            # as DeepSpeed asserts LOCAL_RANK; an in-memory store instead of a rendezvous
            os.environ.setdefault("LOCAL_RANK", "0")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            raise UserError(
                f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set: launch with "
                "torchrun, the deepspeed launcher or ./launch.sh (they set them)"
            )
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        world, rank = dist.get_world_size(), dist.get_rank()

    if parallel_state.model_parallel_is_initialized():
        if parallel_state.get_tensor_model_parallel_world_size() != cfg.tp:
            raise RuntimeError(
                "megatron parallel_state is already initialized with a different TP size; "
                "call destroy_distributed() first"
            )
    else:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=cfg.tp,
            distributed_timeout_minutes=max(1, int(round(cfg.timeout_minutes))),
            create_gloo_process_groups=backend != "gloo",
        )
    if not torch.cuda.is_available():
        cpu_compat.install_cpu_global_memory_buffer()

    topo = Topology(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        dp_group=parallel_state.get_data_parallel_group(),
        device=device,
        world_group=dist.group.WORLD,
    )
    seed_rng_streams(cfg.seed, tp_rank=topo.tp_rank, dp_rank=topo.dp_rank)
    log.info("distributed initialized: %s backend=%s device=%s", topo.describe(), backend, device)
    return topo


def destroy_distributed() -> None:
    """Tear down megatron parallel_state and the default process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
