"""The `checkpoint:` section of the training config: when to save, how many to keep, what to resume."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from training.checkpoint import manifest


@dataclass
class CheckpointConfig:
    interval_steps: int = 100  # save every N optimizer steps (0 = off)
    interval_minutes: float = 0.0  # also save after this much wall-clock time since the last save (0 = off)
    keep_last: int = 2  # complete checkpoints kept (>= 2); older ones are deleted after a new commit
    verify_hashes: bool = True  # hash-check files against the manifest on resume (sizes always checked)
    resume: str = "auto"  # "auto" (newest valid under RUN_DIR/checkpoints), "none", or a checkpoint directory
    load_weights_from: str = ""  # start from these weights (any TP/DP, fresh optimizer): an exported .safetensors or a checkpoint folder
    async_save: bool = False  # copy the state to host memory at the step; write + commit in the background

    def problems(self) -> list[str]:
        out = []
        if self.interval_steps < 0:
            out.append(f"checkpoint.interval_steps={self.interval_steps}: must be >= 0 (0 = off)")
        if self.interval_minutes < 0 or not math.isfinite(self.interval_minutes):
            out.append(
                f"checkpoint.interval_minutes={self.interval_minutes}: must be a number >= 0 (0 = off)"
            )
        if self.keep_last < 2:
            out.append(
                f"checkpoint.keep_last={self.keep_last}: must be >= 2 so a damaged newest checkpoint "
                "still leaves one to resume from"
            )
        if self.resume not in ("auto", "none"):
            p = Path(self.resume)
            if not (p / manifest.COMPLETE).is_file() and not p.is_dir():
                out.append(
                    f"checkpoint.resume={self.resume!r}: not 'auto', 'none' or an existing checkpoint "
                    "directory (e.g. RUN_DIR/checkpoints/step_00001200)"
                )
        # load_weights_from is checked with the data (training/config/checks.py: it must exist and
        # match the run's model shapes and tokenizer), so a shipped config validates on any machine
        return out
