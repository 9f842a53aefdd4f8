"""Finetuning rows: an example's images and encoder segments are non-causal, the decoder generates the target.

One example (a row of a `python -m data_prep tasks` shard) becomes

    <s> [<image> K slots </image>]*  [segment 1] [segment 2] ...  prompt  target </s>

- each image's K slots are filled by the vision encoder (+ connector), each encoder segment is one
  non-causal span: the language encoder reads `[<s>] + segment` and its outputs replace the decoder
  inputs at the segment's positions one for one (the paper's layout, DESIGN.md 2; section 2.4);
- the decoder prompt (e.g. "answer:") is causal text without loss;
- loss only on the target tokens and `</s>` (the first target token is predicted from the prompt's
  last position, or from the last segment/image position when there is no prompt).

**Packing** (T5 / llm-foundry style): several examples share one row up to the decoder length. Each
position records its example (`example_ids`) and its position within the example (`positions`); the
model lets a position attend only to earlier positions of the same example and restarts the position
embeddings, so a packed example computes what it computes alone (tested: same per-example loss).
Across an example boundary nothing carries loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.errors import UserError
from common.special_tokens import BOS_ID, END_IMAGE_ID, EOS_ID, IMAGE_ID, PAD_ID
from training.data.semicausal import Row


def task_row(
    images: Sequence[torch.Tensor],
    segments: Sequence[Sequence[int]],
    prompt: Sequence[int],
    target: Sequence[int],
    slots: int,
    max_seq_len: int,
    max_segment_len: int,
) -> Row:
    """One example -> its row. The target is cut to fit `max_seq_len` inputs (at least one target
    token and `</s>` must fit; else a UserError names what to raise); segments longer than the
    language encoder takes (`max_segment_len`, without its `<s>`) are cut."""
    seq: list[int] = [BOS_ID]
    image_starts: list[int] = []
    for _ in images:
        image_starts.append(len(seq) + 1)
        seq += [IMAGE_ID] + [PAD_ID] * slots + [END_IMAGE_ID]
    spans: list[tuple[int, int]] = []
    for seg in segments:
        seg = list(seg)[:max_segment_len]
        if seg:
            spans.append((len(seq), len(seg)))
            seq += seg  # the span's token ids: the language encoder reads them from here (collate)
    seq += list(prompt)
    head = len(seq)
    room = max_seq_len + 1 - head - 1  # inputs are seq[:-1]; `</s>` closes the target
    if room < 1:
        raise UserError(
            f"a finetuning example needs {head + 2} decoder positions (images {len(images)} x {slots + 2}, "
            f"segments {sum(n for _, n in spans)}, prompt {len(prompt)}) but model.max_seq_len is "
            f"{max_seq_len}: raise model.max_seq_len or cut the inputs (data_prep tasks --max-encoder-tokens)"
        )
    seq += list(target)[:room] + [EOS_ID]
    arr = np.asarray(seq, dtype=np.int64)
    loss = np.zeros(len(arr) - 1, dtype=bool)
    loss[head - 1 :] = True  # targets seq[head:] = target tokens and </s>
    return Row(seq=arr, loss=loss, spans=spans, images=[(img, s) for img, s in zip(images, image_starts)])


def pack_rows(rows: Sequence[Row], max_seq_len: int) -> list[Row]:
    """Greedy first-fit packing of single-example rows into rows of at most `max_seq_len` inputs, in
    order of arrival (deterministic). Each example keeps its own `<s> ... </s>`; the boundary target
    (an example's last input predicting the next example's `<s>`) carries no loss."""
    bins: list[list[Row]] = []
    sizes: list[int] = []
    for r in rows:
        n = len(r.seq)  # an example uses len(seq) input positions once packed (its </s> is an input too)
        for i, used in enumerate(sizes):
            if used + n <= max_seq_len + 1:
                bins[i].append(r)
                sizes[i] += n
                break
        else:
            bins.append([r])
            sizes.append(n)
    return [_join(b) for b in bins]


def _join(parts: list[Row]) -> Row:
    if len(parts) == 1 and parts[0].example_ids is None:
        r = parts[0]
        n_in = len(r.seq) - 1
        return Row(
            r.seq, r.loss, r.spans, r.images, np.zeros(n_in, np.int64), np.arange(n_in, dtype=np.int64)
        )
    seq: list[np.ndarray] = []
    loss: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    images: list[tuple[torch.Tensor, int]] = []
    offset = 0
    for k, r in enumerate(parts):
        n = len(r.seq)
        seq.append(r.seq)
        # inputs of this example: its n tokens; targets: seq[1:] of the example, then the next <s> (no loss)
        loss.append(np.concatenate([r.loss, [False]]))
        ids.append(np.full(n, k, dtype=np.int64))
        pos.append(np.arange(n, dtype=np.int64))
        spans += [(p + offset, m) for p, m in r.spans]
        images += [(img, s + offset) for img, s in r.images]
        offset += n
    # the packed row's inputs are all tokens but the last; its targets all but the first
    return Row(
        seq=np.concatenate(seq),
        loss=np.concatenate(loss)[:-1],
        spans=spans,
        images=images,
        example_ids=np.concatenate(ids)[:-1],
        positions=np.concatenate(pos)[:-1],
    )


def padding_fraction(rows: Sequence[Row]) -> float:
    """Share of the [B, T] decoder positions that are padding once these rows are collated."""
    if not rows:
        return 0.0
    lengths = [len(r.seq) - 1 for r in rows]
    return 1.0 - sum(lengths) / (len(lengths) * max(lengths))
