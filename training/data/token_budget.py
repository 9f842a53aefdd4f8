"""Token-budget micro-batches: each stream gets its own rows per micro-batch (`data.micro_batch_tokens`).

With one row count for every stream, an image-text micro-batch (8 rows of ~290 decoder positions) is a
small fraction of the work of a text one (8 x 2048): the GPUs idle through the short ones. With a budget
of N decoder positions, stream k's micro-batches hold `rows_k = max(1, N // row_k)` rows, where `row_k`
is the longest decoder input a row of that stream can have (`stream_row_tokens`), so a micro-batch never
exceeds N positions, padding included, and memory sized for one text micro-batch fits all of them.

How (exact and simple): mosaicml-streaming's `StreamingDataset` has one batch size, so each training
stream gets its own `StreamingDataset` + loader (`rows_k` per batch, DP-partitioned, TP-replicated,
shuffled and resumable as before), and `TokenBudgetLoader` interleaves them with a deterministic
schedule (`schedule_choice`): micro-batch i (0-based) comes from the stream k with the largest deficit
`(i + 1) * w_k - drawn_k`, ties to the lower index, where `w_k` is proportional to `proportion_k / rows_k`.
So each stream's share of *samples* follows `data.train[k].proportion` (null: by stream size), exactly up
to one micro-batch at any point, and every rank (any TP, any DP) picks the same stream at the same
micro-batch: the ranks of a step stay in lockstep. The resumable state is the schedule position, the
micro-batches drawn per stream, and each stream loader's `state_dict()` (samples it yielded in its epoch);
a stream that runs out starts its next epoch on its own. Which rows each stream holds keeps
streaming's seeded, per-epoch shuffle (`data.shuffle_seed`); spans keep their (seed, epoch, sample) RNG.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from training.data.batch import Batch

log = logging.getLogger(__name__)

STATE_KEY = "token_budget"  # marks a TokenBudgetLoader state in trainer_state.json


def stream_row_tokens(meta: dict, slots: int, max_seq_len: int) -> int:
    """Decoder input positions of the longest row a shard set can produce (its stats.json `meta`).

    text: the packed sequence length (cut to max_seq_len); image-text: `<s> <image> [K] </image> caption`
    with the longest caption in the shards (`caption_tokens.max`; the model's K image slots included);
    finetuning tasks: max_seq_len (their stats do not bound one example's length)."""
    kind = meta.get("kind")
    if kind == "text" and meta.get("seq_len"):
        return max(1, min(int(meta["seq_len"]) - 1, max_seq_len))
    if kind == "pairs":
        cap = meta.get("caption_tokens") or {}
        longest = cap.get("max") or cap.get("limit") or max_seq_len
        return max(1, min(slots + 3 + int(longest), max_seq_len))  # <s> <image> K </image> + caption
    return max_seq_len


def rows_per_micro_batch(budget: int, row_tokens: int) -> int:
    return max(1, budget // max(1, row_tokens))


def schedule_weights(proportions: list[float], rows: list[int]) -> list[float]:
    """Micro-batch shares that give each stream its share of samples: proportional to proportion / rows."""
    raw = [p / r for p, r in zip(proportions, rows)]
    total = sum(raw)
    return [x / total for x in raw]


def schedule_choice(position: int, drawn: list[int], weights: list[float]) -> int:
    """The stream of micro-batch `position` (0-based) given the micro-batches drawn so far per stream."""
    deficits = [(position + 1) * w - d for w, d in zip(weights, drawn)]
    return max(range(len(weights)), key=lambda k: (deficits[k], -k))


class TokenBudgetLoader:
    """Training micro-batches from one loader per stream, interleaved by `schedule_choice`; endless.

    `state_dict()` / `load_state_dict()` replace the single StreamingDataLoader's in trainer_state; the
    batches after a restore are exactly those an uninterrupted run would have drawn."""

    def __init__(self, loaders: list, rows: list[int], proportions: list[float], names: list[str]):
        self.loaders, self.rows, self.names = loaders, rows, names
        self.weights = schedule_weights(proportions, rows)
        self.position = 0
        self.drawn = [0] * len(loaders)
        self._iters: list[Iterator[Batch] | None] = [None] * len(loaders)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            k = schedule_choice(self.position, self.drawn, self.weights)
            batch = self._next(k)
            self.position += 1
            self.drawn[k] += 1
            yield batch

    def _next(self, k: int) -> Batch:
        it = self._iters[k]
        if it is not None:
            batch = next(it, None)
            if batch is not None:
                return batch
        for _ in range(2):  # this stream's epoch is over (or not started): start its next one
            self._iters[k] = it = iter(self.loaders[k])
            # starting a DataLoader iterator draws a seed from the global torch RNG: undo it, so dropout
            # masks do not depend on where a stream's epoch starts (a resumed run starts them elsewhere)
            rng = torch.get_rng_state()
            batch = next(it, None)
            torch.set_rng_state(rng)
            if batch is not None:
                return batch
        raise RuntimeError(
            f"training stream {self.names[k]} yields no micro-batch of {self.rows[k]} rows: it has fewer samples "
            "per DP rank than that; add data, or lower data.micro_batch_tokens"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            STATE_KEY: {
                "position": self.position,
                "drawn": list(self.drawn),
                "rows": list(self.rows),
                "streams": [ld.state_dict() for ld in self.loaders],
            }
        }

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        state = obj.get(STATE_KEY) if isinstance(obj, dict) else None
        if state is None or len(state["streams"]) != len(self.loaders):
            raise ValueError(
                "the checkpoint's data-loader state is not from a token-budget run with the same "
                f"{len(self.loaders)} training streams (data.micro_batch_tokens / data.train changed?); "
                "resume with the run's data settings"
            )
        if list(state["rows"]) != self.rows:
            log.warning(
                "rows per micro-batch changed since the checkpoint (%s -> %s): the data order after the "
                "resume differs from an uninterrupted run",
                state["rows"],
                self.rows,
            )
        self.position, self.drawn = int(state["position"]), [int(x) for x in state["drawn"]]
        for loader, st in zip(self.loaders, state["streams"]):
            loader.load_state_dict(st)
        self._iters = [None] * len(self.loaders)
