"""Start a run from a trained model (`checkpoint.load_weights_from`): weights only, any TP/DP.

The source is either
- an exported `.safetensors` file (`python -m training.export`): full tensors, or
- a checkpoint folder of another run (`RUN_DIR/checkpoints/step_N`, committed): ZeRO-1/2 module files
  `mp_rank_XX_model_states.pt` of every saved TP rank, concatenated along each parameter's Megatron
  `partition_dim` into full tensors; ZeRO-3 through DeepSpeed's fp32 consolidation.
Either way this rank keeps its TP slice (`tp_shards.load_full_state_dict`). The optimizer and the LR
schedule start fresh: this is how a finetuning stage starts from pretraining.

`describe_source` reads what a source says about itself (step, vocabulary, tokenizer, MLflow run) so
config validation can refuse a mismatched start before any process group exists, and the MLflow run
can record its parent model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from common.errors import UserError

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "metalm-full"


def resolve_source(path: str | Path) -> Path:
    """A run folder stands for its newest committed checkpoint (RUN_DIR/checkpoints/latest)."""
    from training.run_dir import RunDir

    p = Path(path)
    run = RunDir(p)
    if p.is_dir() and run.latest.is_file():
        name = run.latest.read_text().strip()
        if name and (run.checkpoints / name).is_dir():
            return run.checkpoints / name
    return p


def describe_source(path: str | Path) -> dict:
    """{kind: export|checkpoint, path, step, vocab_size, tokenizer_sha256, mlflow_run_id, saved_tp, config}
    of a `load_weights_from` source (a run folder means its newest checkpoint); UserError naming the path
    when it is none of these."""
    key = f"checkpoint.load_weights_from={str(path)!r}"
    p = resolve_source(path)
    if p.is_dir():
        state_file = p / "trainer_state.json"
        if not (p / "COMPLETE").is_file() or not state_file.is_file():
            raise UserError(
                f"{key} is a folder but not a committed checkpoint (no COMPLETE / trainer_state.json) nor a run "
                "folder with one: give RUN_DIR, RUN_DIR/checkpoints/step_N of a finished save, or an exported "
                ".safetensors"
            )
        state = json.loads(state_file.read_text())
        config = p / "config.yaml"
        return {
            "kind": "checkpoint",
            "path": str(p),
            "step": state.get("step"),
            "vocab_size": state.get("vocab_size"),
            "tokenizer_sha256": state.get("tokenizer_sha256"),
            "mlflow_run_id": state.get("mlflow_run_id"),
            "saved_tp": (state.get("parallel") or {}).get("tp", 1),
            "config": str(config) if config.is_file() else None,
        }
    if not p.is_file():
        raise UserError(f"{key}: no such file or folder")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a non-safetensors file
        raise UserError(
            f"{key} is not a safetensors file ({e}); export one with `python -m training.export`"
        ) from None
    if meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{key} was not written by `python -m training.export`")
    config = p.parent / "config.yaml"
    return {
        "kind": "export",
        "path": str(p),
        "step": meta.get("step"),
        "vocab_size": int(meta["vocab_size"]) if meta.get("vocab_size") else None,
        "tokenizer_sha256": meta.get("tokenizer_sha256"),
        "mlflow_run_id": meta.get("mlflow_run_id") or None,
        "saved_tp": meta.get("saved_tp"),
        "config": str(config) if config.is_file() else None,
    }


def full_state_dict_from_checkpoint(model, ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Full tensors (names as the model's, vocab padding removed) from a checkpoint of any TP size."""
    from training.model.tp_shards import VOCAB_PARAMS

    zero3 = sorted(ckpt_dir.glob("zero_pp_rank_*_mp_rank_*_model_states.pt"))
    if zero3:  # ZeRO-3 trains at TP=1 only: DeepSpeed consolidates its partitions into full fp32 tensors
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)
        full = {k: v for k, v in full.items() if k in dict(model.named_parameters())}
    else:
        files = sorted(ckpt_dir.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise UserError(
                f"checkpoint {ckpt_dir} holds no DeepSpeed module files (mp_rank_*_model_states.pt)"
            )
        shards = [torch.load(f, map_location="cpu", weights_only=False)["module"] for f in files]
        params = dict(model.named_parameters())
        full = {}
        for name, first in shards[0].items():
            if name not in params:  # Megatron's `_extra_state` entries etc.: not weights
                continue
            p = params.get(name)
            if p is not None and getattr(p, "tensor_model_parallel", False) and len(shards) > 1:
                full[name] = torch.cat([s[name] for s in shards], dim=p.partition_dim)
            else:
                full[name] = first
    full = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in full.items()}
    for name in VOCAB_PARAMS:
        if name in full:
            full[name] = full[name][: model.cfg.vocab_size]
    return full


def load_exported_weights(model, path: str | Path, topology) -> dict:
    """Load a `load_weights_from` source into `model` (any TP size): call before deepspeed.initialize.

    Shapes are checked against the model (UserError naming every mismatch). Returns `describe_source`."""
    from training.model.tp_shards import load_full_state_dict

    info = describe_source(path)
    path = Path(info["path"])
    if info["kind"] == "checkpoint":
        full = full_state_dict_from_checkpoint(model, path)
    else:
        from safetensors.torch import load_file

        full = load_file(str(path))
    load_full_state_dict(model, full, topology)
    logger.info(
        "initialized weights from %s %s (step %s, saved at TP %s); optimizer and schedule start fresh",
        info["kind"],
        path,
        info["step"],
        info["saved_tp"],
    )
    return info
