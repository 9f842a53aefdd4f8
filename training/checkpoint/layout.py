"""Checkpoint folders: their names (RUN_DIR/checkpoints/step_NNNNNNNN, from `RunDir`) and listing them."""

from __future__ import annotations

import re
from pathlib import Path

from training.run_dir import STEP_PREFIX

CKPT_RE = re.compile(rf"^{re.escape(STEP_PREFIX)}(\d{{8,}})$")
TRAINER_STATE = "trainer_state.json"  # inside each checkpoint folder


def step_of(path: Path) -> int | None:
    """The step of checkpoint folder `path`, None when its name is not a checkpoint's."""
    m = CKPT_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoint directories under `ckpt_root`, newest (highest step) first, committed or not."""
    if not ckpt_root.is_dir():
        return []
    dirs = [p for p in ckpt_root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(dirs, key=step_of, reverse=True)
