"""LayerSpec: the settings every tensor-parallel layer of one model component shares, in one object.

Built once per component from the ModelConfig and the Topology (`component_specs`) and handed to that
component's constructors, which otherwise take only their own shapes. Each component's dropouts come
from its own config section (`model.text_encoder.dropout`, ...), else from the model-wide ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from megatron.core import ModelParallelConfig

from parallel.groups import Topology
from training.model.config import Checkpointing, ModelConfig


def megatron_config(tp_size: int, params_dtype: torch.dtype = torch.float32) -> ModelParallelConfig:
    """ModelParallelConfig for our layers: CPU allocation (works on meta/CPU/GPU), our own init."""
    return ModelParallelConfig(
        tensor_model_parallel_size=tp_size,
        use_cpu_initialization=True,
        perform_initialization=False,
        params_dtype=params_dtype,
        sequence_parallel=False,
        gradient_accumulation_fusion=False,
    )


@dataclass(frozen=True)
class LayerSpec:
    """What the layers of one component share besides their shapes."""

    mp: ModelParallelConfig  # megatron-core config of the TP linears/embeddings (TP size, params dtype)
    tp_group: Any  # the TP process group (None: megatron's global TP group; the Topology passes it in)
    tp_size: int  # ranks in tp_group: each holds heads / tp_size heads and ffn / tp_size MLP columns
    hidden_dropout: float = 0.0  # embedding and residual-branch dropout (same mask on every TP rank)
    attention_dropout: float = 0.0  # attention-probability dropout (a different stream per TP rank)
    init_std: float = 0.02  # std of the normal weight init (DeepNorm's beta scales it per layer)
    checkpointing: Checkpointing = "none"  # activation checkpointing: none | full (per layer) | selective

    @property
    def full_checkpoint(self) -> bool:
        return self.checkpointing == "full"

    @property
    def selective_checkpoint(self) -> bool:
        return self.checkpointing == "selective"


def component_specs(
    cfg: ModelConfig, topology: Topology, params_dtype: torch.dtype = torch.float32
) -> dict[str, LayerSpec]:
    """A LayerSpec per component: decoder, text_encoder, vision_encoder, connectors (one megatron config
    and TP group shared by all). Dropouts: each component's own `dropout` / `attention_dropout`, or the
    model-wide ones where those are null (the paper docks its encoder with 0.1 and trains the decoder with 0)."""
    shared = LayerSpec(
        mp=megatron_config(topology.tp_size, params_dtype),
        tp_group=topology.tp_group,
        tp_size=topology.tp_size,
        hidden_dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        init_std=cfg.init_std,
        checkpointing=cfg.activation_checkpointing,
    )

    def own(section, **changes) -> LayerSpec:
        if section.dropout is not None:
            changes["hidden_dropout"] = section.dropout
        if section.attention_dropout is not None:
            changes["attention_dropout"] = section.attention_dropout
        return dataclasses.replace(shared, **changes)

    return {
        "decoder": own(cfg.decoder),
        "text_encoder": own(cfg.text_encoder),
        "vision_encoder": own(cfg.vision_encoder),
        # checkpointing applies to the Transformer stacks; the connectors (resampler) are never checkpointed
        "connectors": own(cfg.connector, checkpointing="none"),
    }
