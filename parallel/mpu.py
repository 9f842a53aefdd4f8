"""The model-parallel-unit object DeepSpeed accepts as `deepspeed.initialize(..., mpu=...)`.

Passing `megatron.core.parallel_state` itself fails (`no attribute get_model_parallel_world_size`);
this adapter answers DeepSpeed's questions from our Topology (TP only; no pipeline parallelism).
"""

from __future__ import annotations

from parallel.groups import Topology


class TopologyMPU:
    """DeepSpeed's `mpu` interface in terms of a Topology: model parallel == tensor parallel."""

    def __init__(self, topology: Topology):
        self.topology = topology

    # model parallel (= tensor parallel here)
    def get_model_parallel_rank(self) -> int:
        return self.topology.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.topology.tp_size

    def get_model_parallel_group(self):
        return self.topology.tp_group

    def get_tensor_model_parallel_rank(self) -> int:
        return self.topology.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.topology.tp_size

    def get_tensor_model_parallel_group(self):
        return self.topology.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of TP rank 0 in this rank's TP group."""
        return self.topology.rank - self.topology.tp_rank

    # data parallel
    def get_data_parallel_rank(self) -> int:
        return self.topology.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.topology.dp_size

    def get_data_parallel_group(self):
        return self.topology.dp_group

    # pipeline parallel (none)
    def get_pipeline_model_parallel_rank(self) -> int:
        return 0

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_group(self):
        return None
