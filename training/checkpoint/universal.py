"""Resuming at another DP size: DeepSpeed universal checkpoints re-partition the ZeRO optimizer state.

The TP size stays the same; the Megatron parameter attributes tell DeepSpeed's converter how the
TP slices merge (saved with every checkpoint as its `universal_checkpoint_info` client state).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from training.checkpoint.collectives import Collectives

logger = logging.getLogger(__name__)

UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"  # deepspeed.checkpoint.constants key


def saved_zero_dp_size(ckpt_dir: Path) -> int | None:
    """DP size a ZeRO-1/2 checkpoint was saved with (its optimizer shards of TP rank 0), None without ZeRO shards."""
    n = len(list(ckpt_dir.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt")))
    return n or None


def universal_checkpoint_info(module: torch.nn.Module) -> dict[str, Any]:
    """How DeepSpeed's universal-checkpoint converter merges TP slices, from the Megatron parameter attributes.

    Replicated parameters (no `tensor_model_parallel`) are taken from TP rank 0, row-parallel ones
    (`partition_dim` 1) are concatenated along dim 1, the rest along dim 0 (column / vocab parallel).
    Used to re-partition ZeRO optimizer state across DP sizes (the TP size stays the same).
    """
    from deepspeed.checkpoint import constants as C

    replicated, row = [], []
    for name, p in module.named_parameters():
        if not getattr(p, "tensor_model_parallel", False):
            replicated.append(f"^{re.escape(name)}$")
        elif getattr(p, "partition_dim", 0) == 1:
            row.append(f"^{re.escape(name)}$")
    return {
        C.UNIVERSAL_CHECKPOINT_VERSION_KEY: C.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        C.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
        C.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: row,
    }


def convert_to_universal(ckpt_dir: Path, out_dir: Path) -> None:
    """Run DeepSpeed's ds_to_universal on one checkpoint folder (in this process, no worker pool)."""
    import argparse

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The converter copies every entry of the module state dict as a tensor (`tensor.float()`);
    # Megatron layers add `*._extra_state` entries that are None. Mark them as done beforehand
    # (the converter skips names whose fp32.pt exists; the loader only reads real parameters).
    for f in sorted(ckpt_dir.glob("mp_rank_*_model_states.pt")):
        module = torch.load(f, map_location="cpu", weights_only=False).get("module") or {}
        for name, value in module.items():
            if not torch.is_tensor(value):
                (out_dir / "zero" / name).mkdir(parents=True, exist_ok=True)
                torch.save({"param": torch.zeros(0)}, out_dir / "zero" / name / "fp32.pt")
    args = argparse.Namespace(
        input_folder=str(ckpt_dir),
        output_folder=str(out_dir),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    ds_to_universal(args)


def load_universal(
    engine, path: Path, universal_root: Path, saved_dp: int, now_dp: int, coll: Collectives
) -> None:
    """COLLECTIVE. Resume at another DP size with the optimizer state: DeepSpeed universal checkpoint.

    Rank 0 converts the checkpoint (ds_to_universal) into `universal_root`/<name>
    (RUN_DIR/checkpoints/.universal/<name>); every rank loads its new ZeRO partition from there; the
    converted copy is then deleted.
    """
    out = universal_root / path.name
    error = None
    if coll.rank == 0:
        logger.warning(
            "checkpoint %s was saved at DP=%d, this job has DP=%d: converting it to a DeepSpeed "
            "universal checkpoint to re-partition the optimizer state",
            path.name,
            saved_dp,
            now_dp,
        )
        try:
            convert_to_universal(path, out)
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            error = f"converting {path} to a universal checkpoint failed: {e}"
    error = coll.broadcast(error)
    if error:
        raise RuntimeError(error)
    cfg = engine._config
    before = cfg.load_universal_checkpoint
    cfg.load_universal_checkpoint = True
    try:
        load_path, _ = engine.load_checkpoint(
            str(out.parent), tag=out.name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    finally:
        cfg.load_universal_checkpoint = before
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {out}")
    coll.barrier()
    if coll.rank == 0:
        shutil.rmtree(universal_root, ignore_errors=True)
