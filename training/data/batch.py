"""The semi-causal batch: the one contract between the data pipeline and the model.

Decoder sequences are [B, T]. Non-causal spans (text spans for the language encoder, images for
the vision encoder) are given separately, with `*_dest` saying which decoder positions their
connector outputs replace, one for one (DESIGN.md 2). Flat destination index = b * T + t.

Loss convention: `targets[b, t]` is the token at t+1 and `loss_mask[b, t]` is 1.0 where that
target is a causal token that carries loss (not inside a span, not padding). The model returns
the mean cross-entropy over `loss_mask`.

Packed rows (finetuning: several examples in one row, `training/data/finetune.py`) also carry
`example_ids` (attention stays inside an example: position t sees s <= t only when both belong to the
same example) and `positions` (position ids restart per example), so a packed example computes exactly
what it computes alone. Unpacked batches leave both None (plain causal attention, positions 0..T-1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, T] int64 decoder input ids; ids at span/image positions are ignored
    targets: torch.Tensor  # [B, T] int64 next-token ids
    loss_mask: torch.Tensor  # [B, T] float32, 1.0 where targets[b, t] carries loss
    span_tokens: torch.Tensor  # [S, L] int64: [<s>] + span tokens, right-padded with <pad>; S may be 0
    span_dest: torch.Tensor  # [S, L-1] int64 flat decoder index for span token j (after <s>); -1 = padding
    images: torch.Tensor  # [N, 3, H, W] float32, normalized; N may be 0
    image_dest: torch.Tensor  # [N, K] int64 flat decoder index of each of the K image slots
    example_ids: torch.Tensor | None = None  # [B, T] int64 example of each position (packed rows); -1 = pad
    positions: torch.Tensor | None = None  # [B, T] int64 position ids (packed rows), restarting per example

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def packed(self) -> bool:
        return self.example_ids is not None

    def num_examples(self) -> int:
        """Samples in this batch: one per row, or every example of every packed row."""
        if self.example_ids is None:
            return self.batch_size
        return int((self.example_ids.max(dim=1).values + 1).clamp(min=1).sum())

    @staticmethod
    def empty_spans(span_len: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """(span_tokens, span_dest) for a batch without text spans."""
        return torch.zeros(0, span_len, dtype=torch.long), torch.zeros(0, span_len - 1, dtype=torch.long)

    @staticmethod
    def empty_images(image_size: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, image_dest) for a batch without images."""
        return torch.zeros(0, 3, image_size, image_size), torch.zeros(0, slots, dtype=torch.long)
