"""Fault-tolerant checkpoints (DESIGN.md 5).

config.py       the `checkpoint:` config section
manager.py      CheckpointManager: save / commit / prune / resume (the commit protocol)
collectives.py  the protocol's collectives, on the topology's world group
writer.py       DeepSpeed's checkpoint engine wrapped: each file fsynced and hashed as written
async_save.py   checkpoint.async_save: host copy at the step, background write, commit at a later step
manifest.py     MANIFEST.json: hashing, commit (MANIFEST, COMPLETE), verification
layout.py       checkpoint folder names and listing (paths come from training.run_dir.RunDir)
rng_state.py    every RNG state of a process, JSON-able
universal.py    DeepSpeed universal checkpoints: resuming at another DP size
exported_weights.py   loading weights exported by `python -m training.export`
"""

from training.checkpoint.config import CheckpointConfig
from training.checkpoint.layout import list_checkpoints
from training.checkpoint.manager import CheckpointManager, CheckpointSaveError

__all__ = ["CheckpointConfig", "CheckpointManager", "CheckpointSaveError", "list_checkpoints"]
