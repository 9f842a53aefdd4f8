"""Full (TP-independent) state dicts from tensor-parallel shards, and back.

Names are the model's parameter names (identical for every TP size). A parameter split across TP
ranks carries megatron's `partition_dim`; its full tensor is the concatenation of the ranks' shards
along that dimension. Vocab padding rows of the embeddings are removed on gather and re-added (zero)
on load, so a full state dict depends on neither the TP size nor the padding multiple.
Loading also adapts the ViT position table to the model's resolution (`load_full_state_dict`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from common.errors import UserError
from parallel.groups import Topology

VOCAB_PARAMS = ("embedding.weight", "text_encoder.embedding.weight")


def _gather(t: torch.Tensor, p: torch.Tensor, model, topology: Topology) -> torch.Tensor:
    t = t.detach()
    if getattr(p, "tensor_model_parallel", False) and model.tp_size > 1:
        parts = [torch.empty_like(t) for _ in range(model.tp_size)]
        dist.all_gather(parts, t.contiguous(), group=model.tp_group)
        t = torch.cat(parts, dim=p.partition_dim)
    return t


def _unpad(name: str, t: torch.Tensor, model) -> torch.Tensor:
    if name in VOCAB_PARAMS:
        return t[: model.cfg.vocab_size]
    return t


def gather_full_state_dict(model, topology: Topology) -> dict[str, torch.Tensor]:
    """Every parameter as its full tensor (CPU, on every rank of the TP group). Collective over TP."""
    return {
        name: _unpad(name, _gather(p, p, model, topology), model).cpu().clone()
        for name, p in model.named_parameters()
    }


def gather_full_grads(model, topology: Topology) -> dict[str, torch.Tensor]:
    """Every parameter's full gradient (None-grad parameters are skipped). Collective over TP."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        full = _unpad(name, _gather(g, p, model, topology), model).cpu().clone()
        if p.grad is not None:
            out[name] = full
    return out


def load_full_state_dict(
    model, full_sd: dict[str, torch.Tensor], topology: Topology, strict: bool = True
) -> None:
    """Copy this TP rank's slice of each full tensor into the model (names as gather_full_state_dict).

    A ViT position table of another resolution (an export trained at 224 px loaded into a 336 px model) is
    interpolated over the patch grid (vision_weights.resize_positions). Raises UserError naming missing /
    unexpected tensors and every shape mismatch."""
    params = dict(model.named_parameters())
    name = "vision_encoder.positions"
    if name in full_sd and name in params and full_sd[name].shape != params[name].shape:
        from training.model.vision_weights import resize_positions

        full_sd = {**full_sd, name: resize_positions(full_sd[name], model.vision_encoder.grid)}
    problems = []
    if strict:
        missing = sorted(set(params) - set(full_sd))
        unexpected = sorted(set(full_sd) - set(params))
        if missing:
            problems.append(
                f"missing tensors: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )
        if unexpected:
            problems.append(
                f"unexpected tensors: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}"
            )
    for name, p in params.items():
        if name not in full_sd:
            continue
        want = list(model.full_shape(p))
        if name in VOCAB_PARAMS:
            want[0] = model.cfg.vocab_size
        if list(full_sd[name].shape) != want:
            problems.append(
                f"tensor {name} has shape {tuple(full_sd[name].shape)}, the model needs {tuple(want)}"
            )
    if problems:
        raise UserError(problems)
    with torch.no_grad():
        for name, p in params.items():
            if name not in full_sd:
                continue
            full = full_sd[name].to(torch.float32)
            if name in VOCAB_PARAMS and full.shape[0] < model.padded_vocab:
                full = torch.cat([full, full.new_zeros(model.padded_vocab - full.shape[0], *full.shape[1:])])
            p.copy_(model.shard(full, p).to(device=p.device, dtype=p.dtype))
