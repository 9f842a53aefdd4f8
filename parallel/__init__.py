"""Process groups, Megatron-core TP glue, DeepSpeed mpu adapter, activation checkpointing, CPU compatibility."""

from parallel.activation_checkpoint import checkpoint
from parallel.config import ParallelConfig
from parallel.groups import Topology, destroy_distributed, init_distributed
from parallel.mpu import TopologyMPU

__all__ = [
    "ParallelConfig",
    "Topology",
    "init_distributed",
    "destroy_distributed",
    "TopologyMPU",
    "checkpoint",
]
