"""Finetuning layout and packing (training/data/finetune.py) on hand examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.special_tokens import BOS_ID, END_IMAGE_ID, EOS_ID, IMAGE_ID, PAD_ID
from training.data import finetune, semicausal


def test_two_images_two_segments_prompt_and_target():
    a, b = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    row = finetune.task_row(
        [a, b], [[40, 41, 42], [50, 51]], [60], [70, 71], slots=2, max_seq_len=64, max_segment_len=8
    )
    img = [IMAGE_ID, PAD_ID, PAD_ID, END_IMAGE_ID]
    assert row.seq.tolist() == [BOS_ID, *img, *img, 40, 41, 42, 50, 51, 60, 70, 71, EOS_ID]
    assert [s for _, s in row.images] == [2, 6]  # first slot of each image (input positions)
    assert row.spans == [(9, 3), (12, 2)]  # each encoder segment is one non-causal span
    # targets seq[1:]: loss only on 70, 71 and </s> (predicted from the prompt 60, then 70, 71)
    assert row.loss.tolist() == [False] * 14 + [True] * 3
    batch = semicausal.collate([row], slots=2, image_size=8)
    assert batch.span_tokens.tolist() == [[BOS_ID, 40, 41, 42], [BOS_ID, 50, 51, PAD_ID]]
    assert batch.span_dest.tolist() == [[9, 10, 11], [12, 13, -1]]
    assert batch.image_dest.tolist() == [[2, 3], [6, 7]] and batch.images.shape == (2, 3, 8, 8)
    assert batch.targets[0, batch.loss_mask[0].bool()].tolist() == [70, 71, EOS_ID]
    assert not batch.packed


def test_no_prompt_no_images_and_limits():
    row = finetune.task_row([], [[5, 6, 7, 8, 9]], [], [30], slots=4, max_seq_len=32, max_segment_len=3)
    assert row.seq.tolist() == [BOS_ID, 5, 6, 7, 30, EOS_ID] and row.spans == [(1, 3)]  # segment cut to 3
    assert row.loss.tolist() == [
        False,
        False,
        False,
        True,
        True,
    ]  # 30 predicted from the span's last position
    cut = finetune.task_row([], [[5]], [9], list(range(100, 140)), slots=4, max_seq_len=8, max_segment_len=3)
    assert len(cut.seq) - 1 == 8 and cut.seq[-1] == EOS_ID  # target cut so the row fits
    with pytest.raises(UserError, match="model.max_seq_len"):
        finetune.task_row([torch.zeros(3, 8, 8)], [], [], [1], slots=16, max_seq_len=8, max_segment_len=3)


def test_packing_keeps_examples_apart():
    r1 = finetune.task_row([], [[40, 41]], [60], [70], slots=2, max_seq_len=16, max_segment_len=8)  # 6 tokens
    r2 = finetune.task_row([torch.ones(3, 8, 8)], [], [61], [71, 72], slots=2, max_seq_len=16, max_segment_len=8)
    r3 = finetune.task_row([], [[42]], [], [73], slots=2, max_seq_len=16, max_segment_len=8)  # 4 tokens
    assert (len(r1.seq), len(r2.seq), len(r3.seq)) == (6, 9, 4)
    packed = finetune.pack_rows([r1, r2, r3], max_seq_len=12)  # 13 tokens per row
    assert len(packed) == 2  # r1 + r3 share a row; r2 does not fit beside r1
    p = packed[0]
    assert p.seq.tolist() == r1.seq.tolist() + r3.seq.tolist()
    assert p.example_ids.tolist() == [0] * 6 + [1] * 3 and p.positions.tolist() == list(range(6)) + [0, 1, 2]
    assert p.spans == [(1, 2), (7, 1)]
    # each example's loss targets, none across the boundary (r1's </s> predicting r3's <s>)
    assert p.loss.tolist() == r1.loss.tolist() + [False] + r3.loss.tolist()
    batch = semicausal.collate(packed, slots=2, image_size=8)
    assert batch.packed and batch.example_ids.shape == batch.tokens.shape == (2, 9)
    assert batch.num_examples() == 3  # what the resumable loader state counts (not the 2 rows)
    assert batch.example_ids[1].tolist() == [0] * 8 + [-1]  # r2 alone, then padding
    assert batch.positions[1].tolist() == list(range(8)) + [0]
    assert batch.image_dest.tolist() == [[9 + 2, 9 + 3]]
    assert batch.num_loss_tokens() == 2 + 3 + 2  # the same loss tokens as unpacked
    unpacked = semicausal.collate([r1, r2, r3], slots=2, image_size=8)
    assert unpacked.num_loss_tokens() == batch.num_loss_tokens()
    assert finetune.padding_fraction(packed) < finetune.padding_fraction([r1, r2, r3])


def test_packing_is_deterministic_and_order_preserving():
    rows = [
        finetune.task_row([], [[1] * n], [], [2], slots=2, max_seq_len=20, max_segment_len=20)
        for n in (3, 10, 2, 7, 1)
    ]
    a = finetune.pack_rows(rows, 20)
    b = finetune.pack_rows(rows, 20)
    assert [r.seq.tolist() for r in a] == [r.seq.tolist() for r in b]
    assert all(len(r.seq) - 1 <= 20 for r in a)
    assert sum(int(np.sum(r.loss)) for r in a) == sum(int(np.sum(r.loss)) for r in rows)
