"""Semi-causal sample assembly (DESIGN.md 2): pure functions from shard samples to `Batch`.

A *row* is one decoder sequence before padding: `seq` (n token ids; the decoder input is seq[:-1]
and the targets seq[1:]), `loss` (n-1 flags: does target t carry loss), text `spans`
((start, length) in input positions, replaced by language-encoder outputs) and an optional `image`
whose K slots start at input position `image_start`.

- text row: spans of uniform length in [min_len, max_len] covering about `fraction` of the tokens,
  never crossing a document start, drawn from an RNG keyed by (seed, epoch, sample id) so a resumed
  run sees the same spans. A target inside a span gets no loss; the token right after a span does.
- image-text row: `<s> <image> [K slots] </image> caption </s>`, loss on caption tokens and `</s>`.
- finetuning rows (`training/data/finetune.py`): `<s> [images] [encoder segments] prompt target </s>`,
  several examples optionally packed into one row with per-position example ids and positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from common.special_tokens import BOS_ID, END_IMAGE_ID, EOS_ID, IMAGE_ID, PAD_ID
from training.data.batch import Batch


@dataclass
class Row:
    seq: np.ndarray  # [n] int64 token ids (input = seq[:-1], targets = seq[1:])
    loss: np.ndarray  # [n-1] bool: target t carries loss
    spans: list[tuple[int, int]]  # text spans as (input start, length)
    images: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # ([3, H, W] normalized, first slot)
    example_ids: np.ndarray | None = None  # [n-1] packed rows: which example each input position belongs to
    positions: np.ndarray | None = None  # [n-1] packed rows: position ids restarting at 0 per example


def span_rng(seed: int, epoch: int, sample_id: int) -> np.random.Generator:
    """The RNG for one sample's spans: same (seed, epoch, sample) -> same spans, on any rank or resume."""
    return np.random.default_rng([int(seed), int(epoch), int(sample_id)])


def sample_spans(
    length: int, doc_starts: np.ndarray, min_len: int, max_len: int, fraction: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Non-overlapping spans (start, len) in [0, length) covering ~fraction of it, none crossing a doc start.

    Spans are kept at least one token apart (so each span is followed by a causal token that carries
    the prediction from the span's last position) and never start at position 0.
    """
    target = int(round(fraction * length))
    if target <= 0 or length < min_len + 2:
        return []
    starts = np.asarray(doc_starts, dtype=np.int64)
    # blocked[i] = True if position i begins a document (a span may start there but not contain it later)
    doc_begin = np.zeros(length + 1, dtype=bool)
    doc_begin[starts[(starts > 0) & (starts < length)]] = True
    taken = np.zeros(length + 1, dtype=bool)  # occupied by a span or its one-token margin
    spans: list[tuple[int, int]] = []
    covered = 0
    mean_len = (min_len + max_len) / 2
    for _ in range(int(8 * max(1, target / mean_len)) + 8):
        if covered >= target:
            break
        n = int(rng.integers(min_len, max_len + 1))
        n = min(n, target - covered) if target - covered >= min_len else n
        if n > length - 2:
            continue
        p = int(rng.integers(1, length - n))  # span [p, p+n) followed by a causal token at p+n < length
        if taken[p - 1 : p + n + 1].any() or doc_begin[p + 1 : p + n].any():
            continue
        taken[p - 1 : p + n + 1] = True
        spans.append((p, n))
        covered += n
    return sorted(spans)


def text_row(
    tokens: np.ndarray,
    doc_starts: np.ndarray,
    spans_rng: np.random.Generator,
    min_len: int,
    max_len: int,
    fraction: float,
) -> Row:
    """A packed text sample -> row with non-causal spans (input positions 0..n-2)."""
    seq = np.asarray(tokens, dtype=np.int64)
    n_in = len(seq) - 1
    spans = sample_spans(n_in, doc_starts, min_len, max_len, fraction, spans_rng)
    loss = seq[1:] != PAD_ID
    for p, n in spans:
        loss[p - 1 : p + n - 1] = False  # targets p..p+n-1 lie inside the span
    return Row(seq=seq, loss=loss, spans=spans)


def pair_row(caption_ids: np.ndarray, image: torch.Tensor, slots: int, max_seq_len: int) -> Row:
    """Image-text sample -> `<s> <image> [K slots] </image> caption </s>` row (caption truncated to fit)."""
    room = max_seq_len + 1 - (slots + 4)  # n = slots + 4 + caption, input length n-1 <= max_seq_len
    cap = np.asarray(caption_ids, dtype=np.int64)[: max(0, room)]
    seq = np.concatenate([[BOS_ID, IMAGE_ID], np.full(slots, PAD_ID), [END_IMAGE_ID], cap, [EOS_ID]]).astype(
        np.int64
    )
    loss = np.zeros(len(seq) - 1, dtype=bool)
    loss[slots + 2 :] = True  # targets from the first caption token to </s>
    return Row(seq=seq, loss=loss, spans=[], images=[(image, 2)])


def collate(rows: list[Row], slots: int, image_size: int) -> Batch:
    """Pad rows to the longest one and gather spans and images with their flat destinations."""
    B = len(rows)
    T = max(len(r.seq) - 1 for r in rows)
    tokens = torch.full((B, T), PAD_ID, dtype=torch.long)
    targets = torch.full((B, T), PAD_ID, dtype=torch.long)
    loss_mask = torch.zeros(B, T, dtype=torch.float32)
    span_rows, dest_rows, images, image_dest = [], [], [], []
    packed = any(r.example_ids is not None for r in rows)
    example_ids = torch.full((B, T), -1, dtype=torch.long) if packed else None
    positions = torch.zeros(B, T, dtype=torch.long) if packed else None
    for b, r in enumerate(rows):
        n = len(r.seq) - 1
        seq = torch.from_numpy(r.seq)
        tokens[b, :n] = seq[:-1]
        targets[b, :n] = seq[1:]
        loss_mask[b, :n] = torch.from_numpy(r.loss.astype(np.float32))
        for p, length in r.spans:
            span_rows.append(torch.cat([torch.tensor([BOS_ID]), seq[p : p + length]]))
            dest_rows.append(b * T + p + torch.arange(length))
        for image, start in r.images:
            images.append(image)
            image_dest.append(b * T + start + torch.arange(slots))
        if packed:  # padding: example -1 (attends only to itself), positions 0
            example_ids[b, :n] = torch.from_numpy(r.example_ids) if r.example_ids is not None else 0
            positions[b, :n] = torch.from_numpy(r.positions) if r.positions is not None else torch.arange(n)
    if span_rows:
        L = max(len(s) for s in span_rows)
        span_tokens = torch.full((len(span_rows), L), PAD_ID, dtype=torch.long)
        span_dest = torch.full((len(span_rows), L - 1), -1, dtype=torch.long)
        for i, (s, d) in enumerate(zip(span_rows, dest_rows)):
            span_tokens[i, : len(s)] = s
            span_dest[i, : len(d)] = d
    else:
        span_tokens, span_dest = Batch.empty_spans()
    if images:
        imgs, idest = torch.stack(images), torch.stack(image_dest)
    else:
        imgs, idest = Batch.empty_images(image_size, slots)
    return Batch(
        tokens=tokens,
        targets=targets,
        loss_mask=loss_mask,
        span_tokens=span_tokens,
        span_dest=span_dest,
        images=imgs,
        image_dest=idest,
        example_ids=example_ids,
        positions=positions,
    )
