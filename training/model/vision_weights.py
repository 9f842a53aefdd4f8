"""Load local ViT weights into the vision encoder: our own names, or a Hugging Face CLIP vision tower.

`model.vision_encoder.weights_path` is a Hugging Face folder as downloaded (e.g. `openai/clip-vit-large-patch14`:
config.json + model.safetensors; nothing to convert) or one file: `.safetensors`, or a torch file
(`torch.load`, weights only) holding a state dict (optionally under "state_dict" / "model"). Key formats:
- ours: the names under `vision_encoder.` (with or without that prefix), e.g. from
  `gather_full_state_dict`, full (TP-independent) tensors;
- HF CLIP (`CLIPVisionModel` / `CLIPModel`): `vision_model.embeddings.*`, `vision_model.encoder.layers.N.*`,
  `pre_layrnorm`, `post_layernorm` (-> our final LN); separate q/k/v projections are fused into our
  per-head QKV layout. CLIP uses quick_gelu: set `model.vision_encoder.activation=quick_gelu`.
A folder's config.json is checked against `model.vision_encoder` (each mismatch names the key to set).
Another resolution than the weights' (e.g. 224 -> 336 px) interpolates the position embeddings
(`resize_positions`: bicubic over the patch grid, CLS row kept), as CLIP / ViT finetuning does.
Every missing tensor and every shape mismatch is reported by name as one UserError.
"""

from __future__ import annotations

import logging
import math
import re

import torch
import torch.nn.functional as F

from common.errors import UserError
from training.model import hf_checkpoint

log = logging.getLogger(__name__)

PREFIX = "vision_encoder."


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    return hf_checkpoint.read_state_dict(path, "vision")


def resize_positions(positions: torch.Tensor, grid: int) -> torch.Tensor:
    """ViT position embeddings [1 + g0^2, H] -> [1 + grid^2, H]: the CLS row kept, the patch rows
    interpolated bicubically over the g0 x g0 grid (unchanged when g0 == grid or not a CLS + square grid)."""
    g0 = math.isqrt(positions.shape[0] - 1)
    if positions.dim() != 2 or g0 * g0 + 1 != positions.shape[0] or g0 == grid:
        return positions
    cls, patches = positions[:1], positions[1:].float()
    h = patches.shape[1]
    img = patches.reshape(1, g0, g0, h).permute(0, 3, 1, 2)  # [1, H, g0, g0]
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = img.permute(0, 2, 3, 1).reshape(grid * grid, h).to(positions.dtype)
    log.info("interpolated ViT position embeddings from a %dx%d to a %dx%d patch grid", g0, g0, grid, grid)
    return torch.cat([cls, patches])


def clip_settings(hf: dict) -> tuple[dict, list[str]]:
    """(model.vision_encoder settings a HF CLIP config.json needs, problems we cannot fix by a setting)."""
    v = hf.get("vision_config", hf) if hf.get("model_type") == "clip" else hf
    want = {
        "num_layers": v.get("num_hidden_layers", 12),
        "hidden_size": v.get("hidden_size", 768),
        "num_heads": v.get("num_attention_heads", 12),
        "ffn_hidden_size": v.get("intermediate_size", 3072),
        "patch_size": v.get("patch_size", 32),
    }
    act = v.get("hidden_act", "quick_gelu")
    other = []
    if act in ("quick_gelu", "gelu"):
        want["activation"] = act
    else:
        other.append(f"its hidden_act={act!r} is not one we have (gelu, quick_gelu)")
    eps = v.get("layer_norm_eps", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        other.append(f"its layer_norm_eps={eps} differs from our ViT's 1e-5")
    return want, other


def vision_weights_problems(cfg) -> list[str]:
    """`model.vision_encoder.weights_path` exists and its config.json (if any) matches the settings."""
    v = cfg.vision_encoder
    if not v.weights_path:
        return []
    key = "model.vision_encoder.weights_path"
    missing = hf_checkpoint.missing_problem(key, v.weights_path, "CLIP")
    if missing:
        return [missing]
    try:
        hf = hf_checkpoint.read_config_json(v.weights_path)
    except UserError as e:
        return [f"{key}: {e}"]
    if hf is None:
        return []
    if hf.get("model_type") not in ("clip", "clip_vision_model"):
        return [
            f"{key}={v.weights_path!r}: config.json has model_type={hf.get('model_type')!r}, not a CLIP "
            "model (clip / clip_vision_model)"
        ]
    want, other = clip_settings(hf)
    source = f"{v.weights_path}/config.json"
    have = {k: getattr(v, k) for k in want}
    out = hf_checkpoint.setting_problems("vision_encoder", want, have, source)
    return out + [f"{key}={v.weights_path!r}: {o}" for o in other]


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
        out[name] = hf_checkpoint.fuse_qkv(parts["q"], parts["k"], parts["v"], num_heads)
    return out


def load_vision_weights(model, path: str) -> None:
    """Copy the file's ViT weights into `model.vision_encoder` (this TP rank's shards)."""

    hf = hf_checkpoint.read_config_json(path)
    if hf is not None:
        problems = vision_weights_problems(model.cfg)
        if problems:
            raise UserError(problems)
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
    if "positions" in sd:  # another resolution than the weights': interpolate over the patch grid
        sd["positions"] = resize_positions(sd["positions"], model.vision_encoder.grid)
    n_tensors = hf_checkpoint.load_component(
        model,
        PREFIX,
        sd,
        source=f"vision weights {path}",
        what="vision encoder",
        section="model.vision_encoder",
    )
    log.info("loaded %d vision encoder tensors from %s", n_tensors, path)
