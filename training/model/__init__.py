"""MetaLM: config + presets, TP layers, encoders, connectors, the semi-causal model, generation."""

from training.model.config import PRESETS, ModelConfig, model_config_from_preset
from training.model.metalm import MetaLM, count_parameters

__all__ = ["ModelConfig", "PRESETS", "model_config_from_preset", "MetaLM", "count_parameters"]
