"""The training job's typed configuration: schema (`schema`), the one YAML + dotted-override engine
(`loader`), and the validation pass (`checks`)."""

from training.config.schema import (
    DataConfig,
    EvalConfig,
    OptimConfig,
    StreamConfig,
    TrackingConfig,
    TrainConfig,
    TrainingConfig,
    config_from_dict,
    load_config,
)

__all__ = [
    "DataConfig",
    "EvalConfig",
    "OptimConfig",
    "StreamConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainingConfig",
    "config_from_dict",
    "load_config",
]
