"""Per-rank parameter counts and model-state memory for a TP x DP layout with ZeRO (no allocation).

Model states only (weights, gradients, optimizer): activations depend on batch, sequence length and
activation checkpointing and are not included. Mixed precision keeps fp32 master weights and Adam
moments (12 bytes per trainable parameter) plus 16-bit weights and gradients, as DeepSpeed does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from parallel.groups import Topology
from training.model.config import ModelConfig

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class RankMemory:
    params: int  # parameters held by one rank (its TP shards + replicated ones)
    trainable: int  # of which trainable (frozen parameters excluded: model.freeze, trainable_layers)
    weights_gib: float  # model weights on one rank
    grads_gib: float  # gradients on one rank
    optimizer_gib: float  # optimizer states (+ fp32 master weights in mixed precision) on one rank

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib


def rank_memory(
    cfg: ModelConfig, tp: int = 1, dp: int = 1, zero: int = 1, precision: str = "bf16"
) -> RankMemory:
    """Model-state memory of one rank for `cfg` at TP=tp, DP=dp, ZeRO stage `zero` (built on meta)."""
    from training.model.metalm import MetaLM

    if precision not in BYTES or zero not in (0, 1, 2, 3) or tp < 1 or dp < 1:
        raise ValueError(f"precision {precision!r} (fp32|bf16|fp16), zero {zero} (0-3), tp {tp}, dp {dp}")
    with torch.device("meta"):
        model = MetaLM(cfg, Topology.single_process("meta"))
    params = trainable = 0
    for p in model.parameters():
        n = math.prod(p.shape)
        n = -(-n // tp) if getattr(p, "tensor_model_parallel", False) else n
        params += n
        trainable += n if p.requires_grad else 0
    w = BYTES[precision]
    opt_bytes = 8 if precision == "fp32" else 12  # Adam m, v (+ fp32 master weights)
    gib = 1024**3
    return RankMemory(
        params=params,
        trainable=trainable,
        weights_gib=params * w / (dp if zero == 3 else 1) / gib,
        grads_gib=trainable * w / (dp if zero >= 2 else 1) / gib,
        optimizer_gib=trainable * opt_bytes / (dp if zero >= 1 else 1) / gib,
    )
