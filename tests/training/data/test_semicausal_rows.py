"""Semi-causal assembly (pure functions): spans, loss masks, image layout, flat destinations."""

from __future__ import annotations

import numpy as np
import torch

from common.special_tokens import BOS_ID, END_IMAGE_ID, EOS_ID, IMAGE_ID, PAD_ID
from training.data import semicausal


def test_spans_respect_lengths_fraction_and_documents():
    starts = np.array([0, 37, 90, 161])
    for sample in range(50):
        spans = semicausal.sample_spans(255, starts, 8, 24, 0.25, semicausal.span_rng(7, 0, sample))
        assert spans, "a 255-token sequence gets spans"
        covered = sum(n for _, n in spans)
        assert 0.15 * 255 <= covered <= 0.25 * 255 + 24
        for (p, n), nxt in zip(spans, spans[1:] + [(10**9, 0)]):
            assert 8 <= n <= 24 or n == covered  # the last one may be trimmed to the budget (>= min)
            assert p >= 1 and p + n < 255 and p + n < nxt[0]  # a causal token follows every span
            assert not any(p < s < p + n for s in starts), f"span {p}..{p + n} crosses a document start"


def test_spans_are_keyed_by_seed_epoch_and_sample():
    args = (200, np.array([0]), 8, 24, 0.25)
    a = semicausal.sample_spans(*args, semicausal.span_rng(1, 0, 5))
    assert a == semicausal.sample_spans(
        *args, semicausal.span_rng(1, 0, 5)
    )  # a resumed run sees the same spans
    assert a != semicausal.sample_spans(*args, semicausal.span_rng(1, 1, 5))  # next epoch: new spans
    assert a != semicausal.sample_spans(*args, semicausal.span_rng(1, 0, 6))


def test_text_row_loss_mask_excludes_targets_inside_spans():
    tokens = np.arange(10, 10 + 41)
    row = semicausal.text_row(tokens, np.array([0]), semicausal.span_rng(0, 0, 0), 4, 6, 0.25)
    assert row.spans
    for p, n in row.spans:
        # input position t predicts token t+1: inside the span -> no loss; after the span -> loss
        assert not row.loss[p - 1 : p + n - 1].any()
        assert row.loss[p + n - 1]  # predicting the token after the span, from the span's last position
        assert row.loss[p - 2] if p >= 2 else True


def test_paper_example_layout_in_a_batch():
    # the paper's x1..x12 with non-causal spans x[3:5] and x[8:10] (0-based input positions 2..4, 7..9)
    seq = np.arange(100, 113)
    row = semicausal.Row(seq=seq, loss=np.ones(12, dtype=bool), spans=[(2, 3), (7, 3)])
    for p, n in row.spans:
        row.loss[p - 1 : p + n - 1] = False
    b = semicausal.collate([row, row], slots=4, image_size=8)
    assert b.tokens.shape == (2, 12) and b.span_tokens.shape == (4, 4)
    assert b.span_tokens[0].tolist() == [BOS_ID, 102, 103, 104]
    assert b.span_dest[2].tolist() == [12 + 2, 12 + 3, 12 + 4]  # second row: flat index b*T + t
    assert b.loss_mask[0].tolist() == [1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    assert b.images.shape == (0, 3, 8, 8) and b.image_dest.shape == (0, 4)


def test_pair_rows_and_padding():
    img = torch.randn(3, 8, 8)
    short = semicausal.pair_row(np.array([50, 51]), img, slots=4, max_seq_len=32)
    long = semicausal.pair_row(np.arange(60, 100), img, slots=4, max_seq_len=16)  # caption truncated to fit
    assert short.seq.tolist() == [
        BOS_ID,
        IMAGE_ID,
        PAD_ID,
        PAD_ID,
        PAD_ID,
        PAD_ID,
        END_IMAGE_ID,
        50,
        51,
        EOS_ID,
    ]
    assert short.loss.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]  # caption tokens and </s> carry loss
    assert len(long.seq) - 1 == 16
    b = semicausal.collate([short, long], slots=4, image_size=8)
    assert b.tokens.shape == (2, 16) and b.images.shape == (2, 3, 8, 8)
    assert b.image_dest.tolist() == [[2, 3, 4, 5], [18, 19, 20, 21]]
    assert b.loss_mask[0, 9:].sum() == 0 and b.targets[0, 8] == EOS_ID and b.tokens[0, 9] == PAD_ID
    assert b.num_loss_tokens() == 3 + (16 - 6)
    assert b.span_tokens.shape[0] == 0
