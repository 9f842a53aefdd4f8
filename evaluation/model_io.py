"""Loading a trained MetaLM for evaluation: from an exported `.safetensors` or a checkpoint folder.

    model, model_cfg, tokenizer = load_model("export/metalm.safetensors")          # TP of this process
    model, model_cfg, tokenizer = load_model("runs/x/checkpoints/step_00001200", tp=2)  # under torchrun

Sources (`training.checkpoint.exported_weights`, the same code a finetuning run starts from):
- an exported file (`python -m training.export`): full tensors; `config.yaml` and `tokenizer/` beside it;
- a committed checkpoint folder `RUN_DIR/checkpoints/step_N` (or `RUN_DIR/checkpoints`, read through its
  `latest`): loaded directly at any TP, each rank concatenating the saved TP shards and keeping its own
  slice (ZeRO-3 checkpoints through DeepSpeed's fp32 consolidation); no temporary export. The config is
  the one saved with the checkpoint (or its run folder's); the tokenizer is the config's `data.tokenizer`.
`--tokenizer DIR` overrides the tokenizer; it must fit the model's vocabulary (and be the tokenizer the
source was trained with, when the source records its sha256).

The model is built in the current process group's TP layout (`parallel.init_distributed`, which a
plain `python` process runs as a world of one), in eval mode, on the rank's device. Pretrained-encoder
weight files named in the config are not read: every weight comes from the source.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from common.errors import UserError

log = logging.getLogger(__name__)


def resolve_source(path: str | Path) -> Path:
    """The file or checkpoint folder to load: a `checkpoints` folder resolves through its `latest` file."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"--model {p}: no such file or folder (give an exported .safetensors or a checkpoint folder)"
        )
    latest = p / "latest"
    if p.is_dir() and latest.is_file() and not (p / "trainer_state.json").is_file():
        name = latest.read_text().strip()
        if not (p / name).is_dir():
            raise UserError(f"--model {p}: `latest` names {name!r}, which is not a folder there")
        p = p / name
    return p


def source_config(path: str | Path):
    """The TrainingConfig a source was trained with (config.yaml beside the export / in the checkpoint)."""
    from training.checkpoint.exported_weights import describe_source
    from training.config import load_config

    p = resolve_source(path)
    info = describe_source(p)
    cfg_path = info.get("config")
    if cfg_path is None and info["kind"] == "checkpoint":
        from training.export import checkpoint_config_path

        cfg_path = checkpoint_config_path(p)
    if cfg_path is None:
        raise UserError(
            f"--model {p}: no config.yaml beside it; the model cannot be rebuilt (training.export writes one)"
        )
    return load_config(cfg_path)


def source_tokenizer(path: str | Path, tokenizer: str | Path | None = None, cfg=None):
    """The tokenizer for a source: `tokenizer` if given, else `tokenizer/` beside an exported file, else the
    config's data.tokenizer. UserError when none is found or it does not fit the model."""
    from training.checkpoint.exported_weights import describe_source
    from training.config.tokenizer import run_tokenizer

    p = resolve_source(path)
    cfg = cfg or source_config(p)
    info = describe_source(p)
    if tokenizer is not None:
        candidates = [Path(tokenizer)]
    else:
        candidates = [p.parent / "tokenizer"] if p.is_file() else []
        candidates.append(Path(cfg.data.tokenizer))
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise UserError(
            f"--model {p}: no tokenizer folder found (looked in {', '.join(map(str, candidates))}): pass --tokenizer DIR"
        )
    tok = run_tokenizer(found)
    problems = []
    if tok.vocab_size > cfg.model.vocab_size:  # as training allows: the model's vocabulary may be larger
        problems.append(
            f"tokenizer {found} has {tok.vocab_size} pieces, more than the model's vocabulary ({cfg.model.vocab_size})"
        )
    want = info.get("tokenizer_sha256")
    if want and tok.sha256 != want:
        problems.append(f"tokenizer {found} is not the one the model was trained with (sha256 differs)")
    if problems:
        raise UserError(problems + ["pass the model's own tokenizer with --tokenizer DIR"])
    return tok


# config fields that only say how to initialize weights from pretrained files (the source has them all)
INIT_ONLY_FIELDS = ("weights_path", "vocab_map_from")


def _without_weight_files(cfg):
    """The model config with every INIT_ONLY_FIELDS field emptied (nested sections included)."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = _without_weight_files(value)
        elif f.name in INIT_ONLY_FIELDS and value:
            changes[f.name] = type(value)()
    return dataclasses.replace(cfg, **changes) if changes else cfg


def current_topology(tp: int | None = None):
    """The Topology of this process: the existing process groups (their TP; `tp` must agree), else a new
    layout with TP = `tp` (default: every process of WORLD_SIZE in one TP group)."""
    from megatron.core import parallel_state

    from parallel import ParallelConfig, init_distributed

    if parallel_state.model_parallel_is_initialized():
        current = parallel_state.get_tensor_model_parallel_world_size()
        if tp is not None and tp != current:
            raise UserError(f"tp={tp} but this process already runs at TP={current}")
        tp = current
    if tp is None:
        tp = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return init_distributed(ParallelConfig(tp=tp))


def load_model(
    path: str | Path,
    tp: int | None = None,
    *,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype | None = None,
):
    """(model, model_config, tokenizer): MetaLM with the source's weights in this process's TP layout.

    dtype: parameter dtype (default: bfloat16 on GPU, float32 on CPU). Every rank of the TP group must
    call this (the model's layers are built against the TP group)."""
    from training.checkpoint.exported_weights import load_exported_weights
    from training.model import MetaLM

    src = resolve_source(path)
    cfg = source_config(src)
    tok = source_tokenizer(src, tokenizer, cfg)
    model_cfg = _without_weight_files(cfg.model)
    topo = current_topology(tp)
    if dtype is None:
        dtype = torch.bfloat16 if topo.device.type == "cuda" else torch.float32
    model = MetaLM(model_cfg, topo, params_dtype=dtype)
    load_exported_weights(model, src, topo)
    model.eval()
    log.info("loaded %s at TP=%d (%s, %s)", src, topo.tp_size, dtype, topo.device)
    return model, model_cfg, tok
