"""Local pretrained checkpoints as users have them: a Hugging Face model folder or one weights file.

Read without `transformers` (tests use it to build tiny random checkpoints; nothing here imports it):
- a folder (what `huggingface-cli download` / `save_pretrained` write): `config.json` plus
  `model.safetensors`, `pytorch_model.bin`, or a sharded `*.index.json` with its shards;
- one file: `.safetensors`, or a torch file (`torch.load`, weights only) holding a state dict, optionally
  under "state_dict" / "model".
Nothing is converted on disk: the loaders (vision_weights, text_weights) map names while loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.errors import UserError

# in order of preference: safetensors first (no pickle), the sharded index after a single file
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def weights_file(path: str | Path) -> Path | None:
    """The file to read for `path` (a file, or the first of WEIGHT_FILES in a folder); None if there is none."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
    return None


def missing_problem(key: str, path: str, what: str) -> str | None:
    """The validation message when `path` (config key `key`) holds no readable weights, else None."""
    p = Path(path)
    if weights_file(p) is not None:
        return None
    if p.is_dir():
        return (
            f"{key}={path!r} is a folder without {' / '.join(WEIGHT_FILES)}: point at the downloaded "
            f"Hugging Face {what} folder (config.json + weights) or at one weights file"
        )
    return (
        f"{key}={path!r} does not exist: give a local Hugging Face {what} folder (config.json + "
        "model.safetensors or pytorch_model.bin), a safetensors/torch file, or leave it empty for random init"
    )


def read_config_json(path: str | Path) -> dict | None:
    """The folder's `config.json` (None for a single file or a folder without one); UserError if unreadable."""
    p = Path(path)
    cfg = p / "config.json" if p.is_dir() else None
    if cfg is None or not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg} is not readable JSON ({e}): re-download the checkpoint folder") from e
    if not isinstance(data, dict):
        raise UserError(f"{cfg} does not hold a JSON object: re-download the checkpoint folder")
    return data


def _load_one(f: Path) -> dict:
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(f))
    return torch.load(str(f), map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at `path` (CPU). `what` names it in errors ("vision", "text")."""
    f = weights_file(path)
    if f is None:
        raise UserError(f"{what} weights {path}: no such file, and no folder with {' / '.join(WEIGHT_FILES)}")
    try:
        if f.name.endswith(".index.json"):
            shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
            sd: dict = {}
            for shard in shards:
                sd.update(_load_one(f.parent / shard))
        else:
            sd = _load_one(f)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(
            f"cannot read {what} weights {path}: {e}; give a safetensors or torch state-dict file "
            "(or a Hugging Face folder holding one)"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{what} weights {path} do not hold a flat state dict of tensors")
    return sd


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Separate q/k/v projection weights (or biases) -> our fused per-head layout [head][q|k|v][head_dim]."""
    h = q.shape[0]
    tail = q.shape[1:]
    fused = torch.stack([x.reshape(num_heads, h // num_heads, *tail) for x in (q, k, v)], dim=1)
    return fused.reshape(3 * h, *tail)


def setting_problems(section: str, want: dict, have: dict, source: str) -> list[str]:
    """`model.<section>.<key>` settings that differ from what the checkpoint needs, each naming its fix."""
    out = []
    for key, value in want.items():
        got = have[key]
        same = abs(got - value) <= 1e-6 * abs(value) if isinstance(value, float) else got == value
        if not same:
            shown = str(value).lower() if isinstance(value, bool) else value
            out.append(
                f"model.{section}.{key}={got!r} does not match {source} (needs {value!r}): "
                f"set model.{section}.{key}={shown}"
            )
    return out


def load_component(
    model,
    prefix: str,
    sd: dict,
    *,
    source: str,
    what: str,
    section: str,
    unexpected_hint: str = "",
    shape_of=None,
) -> int:
    """Check a component's full state dict `sd` (names without `prefix`) against the model: missing and
    unexpected tensors and shapes, all in one UserError naming `source` and the config section to check;
    then load this rank's TP slices. `shape_of(name, p)` gives a tensor's expected full shape (default:
    the model's full shape). Returns the number of the component's tensors."""
    from training.model.tp_shards import load_full_state_dict

    params = {n[len(prefix) :]: p for n, p in model.named_parameters() if n.startswith(prefix)}
    problems = []
    missing = sorted(set(params) - set(sd))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    unexpected = sorted(k.removeprefix("unmapped:") for k in set(sd) - set(params))
    if unexpected:
        problems.append(
            f"tensors the {what} does not have: {', '.join(unexpected[:8])}"
            f"{' ...' if len(unexpected) > 8 else ''}{unexpected_hint}"
        )
    for name, p in params.items():
        want = shape_of(name, p) if shape_of else model.full_shape(p)
        if name in sd and tuple(sd[name].shape) != tuple(want):
            problems.append(
                f"tensor {name} has shape {tuple(sd[name].shape)}, the {what} needs {tuple(want)} "
                f"(check {section} sizes)"
            )
    if problems:
        raise UserError([f"{source}: {p}" for p in problems])
    load_full_state_dict(model, {prefix + k: v for k, v in sd.items()}, model.topology, strict=False)
    return len(params)
