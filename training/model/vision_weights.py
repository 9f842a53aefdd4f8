"""Load local ViT weights into the vision encoder: our own names, or a Hugging Face CLIP vision tower.

Accepted files: `.safetensors`, or a torch file (`torch.load`, weights only) holding a state dict
(optionally under "state_dict" / "model"). Key formats:
- ours: the names under `vision_encoder.` (with or without that prefix), e.g. from
  `gather_full_state_dict`, full (TP-independent) tensors;
- HF CLIP (`CLIPVisionModel` / `CLIPModel`): `vision_model.embeddings.*`, `vision_model.encoder.layers.N.*`,
  `pre_layrnorm`, `post_layernorm` (-> our final LN); separate q/k/v projections are fused into our
  per-head QKV layout. CLIP uses quick_gelu: set `model.vision_encoder.activation=quick_gelu`.
Every missing tensor and every shape mismatch is reported by name as one UserError.
"""

from __future__ import annotations

import logging
import re

import torch

from common.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "vision_encoder."


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(
            f"cannot read vision weights {path}: {e}; give a safetensors or torch state-dict file"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"vision weights {path} do not hold a flat state dict of tensors")
    return sd


_HF_LAYER = {
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "self_attn.out_proj": "attn.out",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def from_hf_clip(sd: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """HF CLIP vision names -> our vision-encoder names (q/k/v fused per head)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if not key.startswith("vision_model."):
            continue  # text tower, projections, logit_scale of a full CLIPModel
        k = key[len("vision_model.") :]
        if k == "embeddings.class_embedding":
            out["cls"] = t
        elif k == "embeddings.patch_embedding.weight":
            out["patch_embed.weight"] = t.reshape(t.shape[0], -1)  # conv [H, 3, p, p] -> [H, 3*p*p]
        elif k == "embeddings.position_embedding.weight":
            out["positions"] = t
        elif k.startswith("pre_layrnorm."):
            out["ln_pre." + k.split(".", 1)[1]] = t
        elif k.startswith("post_layernorm."):
            out["stack.final_ln." + k.split(".", 1)[1]] = t
        elif k == "embeddings.position_ids":
            continue
        else:
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
            if not m:
                out["unmapped:" + key] = t
                continue
            i, mod, kind = int(m.group(1)), m.group(2), m.group(3)
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((i, kind), {})[mod[-6]] = t
            elif mod in _HF_LAYER:
                out[f"stack.layers.{i}.{_HF_LAYER[mod]}.{kind}"] = t
            else:
                out["unmapped:" + key] = t
    for (i, kind), parts in qkv.items():
        name = f"stack.layers.{i}.attn.qkv.{kind}"
        if set(parts) != {"q", "k", "v"}:
            out["unmapped:" + name] = next(iter(parts.values()))
            continue
        q, k, v = parts["q"], parts["k"], parts["v"]
        h = q.shape[0]
        d = h // num_heads
        tail = q.shape[1:]
        fused = torch.stack([x.reshape(num_heads, d, *tail) for x in (q, k, v)], dim=1)  # [heads, 3, d, ...]
        out[name] = fused.reshape(3 * h, *tail)
    return out


def load_vision_weights(model, path: str) -> None:
    """Copy the file's ViT weights into `model.vision_encoder` (this TP rank's shards)."""
    from training.model.tp_shards import load_full_state_dict

    sd = read_state_dict(path)
    if any(k.startswith("vision_model.") for k in sd):
        sd = from_hf_clip(sd, model.cfg.vision_encoder.num_heads)
        if model.cfg.vision_encoder.activation != "quick_gelu":
            log.warning(
                "%s looks like CLIP weights but model.vision_encoder.activation=%s (CLIP uses quick_gelu)",
                path,
                model.cfg.vision_encoder.activation,
            )
    else:
        sd = {k[len(PREFIX) :] if k.startswith(PREFIX) else k: v for k, v in sd.items()}
    params = {n[len(PREFIX) :]: p for n, p in model.named_parameters() if n.startswith(PREFIX)}
    problems = []
    missing = sorted(set(params) - set(sd))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    unexpected = sorted(k.removeprefix("unmapped:") for k in set(sd) - set(params))
    if unexpected:
        problems.append(
            f"tensors the vision encoder does not have: {', '.join(unexpected[:8])}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    for name, p in params.items():
        if name in sd and tuple(sd[name].shape) != model.full_shape(p):
            problems.append(
                f"tensor {name} has shape {tuple(sd[name].shape)}, the vision encoder needs "
                f"{model.full_shape(p)} (check model.vision_encoder sizes)"
            )
    if problems:
        raise UserError([f"vision weights {path}: {p}" for p in problems])
    load_full_state_dict(model, {PREFIX + k: v for k, v in sd.items()}, model.topology, strict=False)
    log.info("loaded %d vision encoder tensors from %s", len(params), path)
