"""Caption generation: `<s> <image> [K image slots] </image> [prompt]` then greedy or beam decoding.

Works under TP: every rank of a TP group computes the same full logits (gathered vocab shards) and so
picks the same tokens. The KV cache keeps each layer's keys/values (this rank's heads only).
"""

from __future__ import annotations

import torch

from common.errors import UserError
from common.special_tokens import BOS_ID, END_IMAGE_ID, IMAGE_ID, PAD_ID
from training.model.layers import KVCache


def _prompts(prompt_ids, n: int) -> list[list[int]]:
    if prompt_ids is None:
        return [[] for _ in range(n)]
    if len(prompt_ids) == 0 or isinstance(prompt_ids[0], int):
        return [list(prompt_ids) for _ in range(n)]
    if len(prompt_ids) != n:
        raise UserError(f"{len(prompt_ids)} prompts for {n} images: give one prompt per image or one for all")
    prompts = [list(p) for p in prompt_ids]
    if len({len(p) for p in prompts}) > 1:
        raise UserError("per-image prompts must have the same length (pad them or generate per image)")
    return prompts


def build_prefix(model, images: torch.Tensor, prompts: list[list[int]]) -> torch.Tensor:
    """Decoder input embeddings [N, P, H] of `<s> <image> [K slots] </image> prompt` (no positions)."""
    k = model.cfg.image_slots
    n = images.shape[0]
    ids = torch.tensor(
        [[BOS_ID, IMAGE_ID] + [PAD_ID] * k + [END_IMAGE_ID] + p for p in prompts],
        dtype=torch.long,
        device=images.device,
    )
    emb = model.embedding(ids) * model.embed_scale
    slots = model.encode_images(images).to(emb.dtype)
    return torch.cat([emb[:, :2], slots, emb[:, 2 + k :]], dim=1) if n else emb


def _embed_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    return model.embedding(tokens[:, None]) * model.embed_scale


@torch.no_grad()
def generate(
    model,
    images: torch.Tensor,
    prompt_ids=None,
    max_new_tokens: int = 32,
    eos_id: int = 2,
    use_cache: bool = True,
    num_beams: int = 1,
) -> list[list[int]]:
    """Generated token ids per image (no prompt, no eos). Greedy for num_beams=1, else beam search."""
    if num_beams < 1:
        raise UserError(f"num_beams={num_beams} must be >= 1")
    was_training = model.training
    model.eval()
    try:
        if images.dim() == 3:  # one image [3, H, W]
            images = images[None]
        images = images.to(device=model.embedding.weight.device, dtype=model.embedding.weight.dtype)
        prompts = _prompts(prompt_ids, images.shape[0])
        prefix = build_prefix(model, images, prompts)
        room = model.cfg.max_seq_len - prefix.shape[1]
        if room < 1:
            raise UserError(
                f"the prefix ({prefix.shape[1]} positions) leaves no room in max_seq_len="
                f"{model.cfg.max_seq_len}: shorten the prompt"
            )
        max_new = min(max_new_tokens, room)
        if num_beams == 1:
            return _greedy(model, prefix, max_new, eos_id, use_cache)
        return _beam(model, prefix, max_new, eos_id, use_cache, num_beams)
    finally:
        model.train(was_training)


def _greedy(model, prefix: torch.Tensor, max_new: int, eos_id: int, use_cache: bool) -> list[list[int]]:
    n, p = prefix.shape[:2]
    cache = KVCache(len(model.decoder.layers)) if use_cache else None
    seq = prefix
    logits = model.decode_step(prefix, 0, cache)[:, -1]
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(max_new):
        nxt = logits.argmax(dim=-1)
        for i, tok in enumerate(nxt.tolist()):
            if not done[i]:
                if tok == eos_id:
                    done[i] = True
                else:
                    out[i].append(tok)
        if all(done) or step == max_new - 1:
            break
        e = _embed_tokens(model, nxt)
        if cache is not None:
            logits = model.decode_step(e, p + step, cache)[:, -1]
        else:
            seq = torch.cat([seq, e], dim=1)
            logits = model.decode_step(seq, 0, None)[:, -1]
    return out


def _beam(
    model, prefix: torch.Tensor, max_new: int, eos_id: int, use_cache: bool, nb: int
) -> list[list[int]]:
    """Beam search; hypotheses ranked by mean token log-probability (length-normalized)."""
    n, p = prefix.shape[:2]
    seq = prefix.repeat_interleave(nb, dim=0)
    cache = KVCache(len(model.decoder.layers)) if use_cache else None
    logp = torch.log_softmax(model.decode_step(seq, 0, cache)[:, -1].float(), dim=-1)
    v = logp.shape[-1]
    scores = torch.full((n, nb), float("-inf"), device=logp.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    alive: list[list[int]] = [[] for _ in range(n * nb)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    for step in range(max_new):
        cand = (scores[:, :, None] + logp.view(n, nb, v)).view(n, nb * v)
        top_s, top_i = cand.topk(min(2 * nb, nb * v), dim=-1)
        new_src, new_tok, new_scores, new_alive = [], [], [], []
        for i in range(n):
            picked = 0
            for s, idx in zip(top_s[i].tolist(), top_i[i].tolist()):
                beam, tok = divmod(idx, v)
                hyp = alive[i * nb + beam]
                if tok == eos_id:
                    if len(finished[i]) < nb:
                        finished[i].append((s / (len(hyp) + 1), hyp))
                    continue
                new_src.append(i * nb + beam)
                new_tok.append(tok)
                new_scores.append(s)
                new_alive.append(hyp + [tok])
                picked += 1
                if picked == nb:
                    break
            while picked < nb:  # fewer live candidates than beams: pad with a dead beam
                new_src.append(i * nb)
                new_tok.append(eos_id)
                new_scores.append(float("-inf"))
                new_alive.append(alive[i * nb])
                picked += 1
        alive = new_alive
        scores = torch.tensor(new_scores, device=logp.device).view(n, nb)
        if all(len(f) >= nb for f in finished) or step == max_new - 1:
            break
        src = torch.tensor(new_src, device=prefix.device)
        e = _embed_tokens(model, torch.tensor(new_tok, device=prefix.device))
        if cache is not None:
            cache.reorder(src)
            logits = model.decode_step(e, p + step, cache)[:, -1]
        else:
            seq = torch.cat([seq[src], e], dim=1)
            logits = model.decode_step(seq, 0, None)[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for i in range(n):
        hyps = list(finished[i])
        for b in range(nb):
            s = float(scores[i, b])
            if s != float("-inf"):
                hyps.append((s / max(1, len(alive[i * nb + b])), alive[i * nb + b]))
        out.append(max(hyps, key=lambda h: h[0])[1] if hyps else [])
    return out
