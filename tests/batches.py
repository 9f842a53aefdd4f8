"""Synthetic semi-causal batches for the model tests (layouts as DESIGN.md 2 and training/data/batch.py)."""

from __future__ import annotations

import torch

from common.special_tokens import BOS_ID, END_IMAGE_ID, EOS_ID, IMAGE_ID, PAD_ID
from training.data.batch import Batch


def text_row(tokens: list[int], spans: list[tuple[int, int]], b: int, seq_len: int):
    """One text row: decoder tokens, targets, loss mask; spans [start, end) become encoder spans."""
    t = len(tokens)
    ids = tokens + [PAD_ID] * (seq_len - t)
    targets = ids[1:] + [PAD_ID]
    in_span = [False] * seq_len
    span_rows, dest_rows = [], []
    for s, e in spans:
        for i in range(s, e):
            in_span[i] = True
        span_rows.append([BOS_ID] + tokens[s:e])
        dest_rows.append([b * seq_len + i for i in range(s, e)])
    mask = [1.0 if (i + 1 < t and not in_span[i + 1]) else 0.0 for i in range(seq_len)]
    return ids, targets, mask, span_rows, dest_rows


def image_row(caption: list[int], k: int, b: int, seq_len: int):
    ids = [BOS_ID, IMAGE_ID] + [PAD_ID] * k + [END_IMAGE_ID] + caption + [EOS_ID]
    t = len(ids)
    assert t <= seq_len
    ids = ids + [PAD_ID] * (seq_len - t)
    targets = ids[1:] + [PAD_ID]
    first = 2 + k  # </image> position predicts the first caption token
    mask = [1.0 if first <= i < t - 1 else 0.0 for i in range(seq_len)]
    return ids, targets, mask, [b * seq_len + 2 + j for j in range(k)]


def make_batch(cfg, kind: str = "mixed", seq_len: int = 48, seed: int = 0, batch_size: int = 2) -> Batch:
    """kind: "text" (spans only), "image" (image-text only), "mixed" (one of each), "plain" (no spans/images)."""
    g = torch.Generator().manual_seed(seed)
    vocab = cfg.vocab_size
    k = cfg.image_slots

    def rand(n: int) -> list[int]:
        return torch.randint(7, vocab, (n,), generator=g).tolist()

    tokens, targets, masks, spans, span_dest, images, image_dest = [], [], [], [], [], [], []
    for b in range(batch_size):
        row_kind = kind if kind != "mixed" else ("image" if b % 2 == 0 else "text")
        if row_kind == "image":
            ids, tg, m, dest = image_row(rand(6 + b), k, b, seq_len)
            images.append(torch.randn(3, cfg.image_size, cfg.image_size, generator=g))
            image_dest.append(dest)
        else:
            n = seq_len - 3 - b
            sp = [(3, 8), (15, 19)] if row_kind == "text" else []
            ids, tg, m, srows, drows = text_row(rand(n), sp, b, seq_len)
            spans += srows
            span_dest += drows
        tokens.append(ids)
        targets.append(tg)
        masks.append(m)
    if spans:
        width = max(len(r) for r in spans)
        span_tokens = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in spans])
        span_dest_t = torch.tensor([r + [-1] * (width - 1 - len(r)) for r in span_dest])
    else:
        span_tokens, span_dest_t = Batch.empty_spans()
    if images:
        images_t, image_dest_t = torch.stack(images), torch.tensor(image_dest)
    else:
        images_t, image_dest_t = Batch.empty_images(cfg.image_size, k)
    return Batch(
        tokens=torch.tensor(tokens),
        targets=torch.tensor(targets),
        loss_mask=torch.tensor(masks),
        span_tokens=span_tokens,
        span_dest=span_dest_t,
        images=images_t,
        image_dest=image_dest_t,
    )


def numpy_dict(d: dict) -> dict:
    """Tensors -> numpy arrays (results crossing the fork boundary: torch tensors would go by shared memory)."""
    return {k: v.detach().cpu().numpy() for k, v in d.items()}


def tensor_dict(d: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in d.items()}
