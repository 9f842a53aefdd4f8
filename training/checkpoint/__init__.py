"""Fault-tolerant checkpoints (DESIGN.md 5): the manager and its commit protocol, the manifest."""

from training.checkpoint.manager import (
    CheckpointConfig,
    CheckpointManager,
    CheckpointSaveError,
    list_checkpoints,
)

__all__ = ["CheckpointConfig", "CheckpointManager", "CheckpointSaveError", "list_checkpoints"]
