"""Start a run from an exported model (`checkpoint.load_weights_from`): full tensors from the
safetensors file written by `python -m training.export`, sliced for this rank's TP shard."""

from __future__ import annotations

import logging
from pathlib import Path

from common.errors import UserError

logger = logging.getLogger(__name__)


def load_exported_weights(model, path: str | Path, topology) -> None:
    """Load an exported file into `model` (any TP size): call before deepspeed.initialize.

    Shapes are checked against the model (UserError naming every mismatch)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from training.model.tp_shards import load_full_state_dict

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "metalm-full":
        raise UserError(
            f"checkpoint.load_weights_from={str(path)!r} was not written by `python -m training.export`"
        )
    load_full_state_dict(model, load_file(str(path)), topology)
    logger.info(
        "initialized weights from %s (exported at step %s, TP %s)",
        path,
        meta.get("step"),
        meta.get("saved_tp"),
    )
