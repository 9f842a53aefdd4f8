"""Streaming data for training: mixed image-text / text MDS streams -> semi-causal `Batch`es.

One `StreamingDataset` holds every stream of a split (mixed by `Stream(proportion=...)`). It is
partitioned over **data-parallel** ranks only: streaming's `replication=tp` makes the `tp`
consecutive global ranks of one TP group (Megatron's rank order) read identical samples, while
shared memory stays per process. JPEG decode, normalization, span sampling and padding all run in
the loader workers (`get_item` + `collate`). `StreamingDataLoader.state_dict()` goes into
trainer_state for exact mid-epoch resumption.

With `data.micro_batch_tokens > 0` training reads each stream through its own StreamingDataset with
its own rows per micro-batch, interleaved by a deterministic schedule (training/data/token_budget.py).
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from common.streaming_compat import ensure_streaming_importable
from data_prep.shard_meta import split_images
from training.data import finetune, semicausal, token_budget
from training.data.batch import Batch

ensure_streaming_importable()  # the one precondition of `import streaming` on a CPU torch (no-op on CUDA)
from streaming import Stream, StreamingDataLoader, StreamingDataset  # noqa: E402

log = logging.getLogger(__name__)


class _ExpectedStreamingNotices(logging.Filter):
    """Drop streaming notices that repeat every epoch and do not apply here: we do account for
    `replication` (StreamingDataLoader.state_dict divides by it), and per_stream batching drops
    incomplete batches by design."""

    MESSAGES = ("`replication` arg has been set", "Because of the `per_stream` batching method")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in record.getMessage() for m in self.MESSAGES)


def _quiet_expected_streaming_notices() -> None:
    """Installed once, by the first `build_loader` call (not at import)."""
    for name in ("streaming.base.dataset", "streaming.base.batching.per_stream"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedStreamingNotices) for f in logger.filters):
            logger.addFilter(_ExpectedStreamingNotices())


@dataclass(frozen=True)
class RowSpec:
    """What the loader workers need to turn a shard sample into a row (picklable)."""

    slots: int  # image slots K per image
    image_size: int  # model image resolution (pixels)
    max_seq_len: int  # decoder input length limit
    span_min_len: int
    span_max_len: int
    span_fraction: float
    seed: int  # span RNG seed
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    max_segment_len: int = 511  # finetuning: encoder segment tokens (the language encoder adds <s>)
    pack: bool = False  # finetuning: pack several task examples per row

    @classmethod
    def from_configs(cls, data_cfg, model_cfg) -> RowSpec:
        return cls(
            slots=model_cfg.image_slots,
            image_size=model_cfg.image_size,
            max_seq_len=model_cfg.max_seq_len,
            span_min_len=data_cfg.span_min_len,
            span_max_len=data_cfg.span_max_len,
            span_fraction=data_cfg.span_fraction,
            seed=data_cfg.shuffle_seed,
            image_mean=tuple(data_cfg.image_mean),
            image_std=tuple(data_cfg.image_std),
            max_segment_len=model_cfg.span_max_len - 1,
            pack=data_cfg.pack,
        )


def decode_image(data: Any, spec: RowSpec) -> torch.Tensor:
    """JPEG bytes (or a PIL image) -> [3, H, W] float32 normalized with the configured mean/std."""
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (spec.image_size, spec.image_size):
        img = img.resize((spec.image_size, spec.image_size), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()  # uint8 HWC -> float CHW
    scale, bias = _normalizer(spec.image_mean, spec.image_std)
    return torch.addcmul(bias, x, scale)  # (x / 255 - mean) / std in one pass


@functools.lru_cache(maxsize=4)
def _normalizer(mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return 1.0 / (255.0 * s), -m / s


def sample_to_row(sample: dict, sample_id: int, epoch: int, spec: RowSpec) -> semicausal.Row:
    if "tokens" in sample:
        rng = semicausal.span_rng(spec.seed, epoch, sample_id)
        starts = sample.get("doc_starts", np.zeros(1, dtype=np.int32))
        return semicausal.text_row(
            np.asarray(sample["tokens"])[: spec.max_seq_len + 1],
            starts,
            rng,
            spec.span_min_len,
            spec.span_max_len,
            spec.span_fraction,
        )
    if "caption_ids" in sample:
        return semicausal.pair_row(
            sample["caption_ids"], decode_image(sample["image"], spec), spec.slots, spec.max_seq_len
        )
    if "target_ids" in sample:
        return finetune.task_row(
            [decode_image(jpeg, spec) for jpeg in split_images(sample)],
            sample["encoder_segments"],
            list(sample["decoder_prompt_ids"]),
            list(sample["target_ids"]),
            spec.slots,
            spec.max_seq_len,
            spec.max_segment_len,
        )
    raise ValueError(
        f"shard sample {sample_id} has none of 'tokens', 'caption_ids', 'target_ids' (columns: {sorted(sample)})"
    )


class SemiCausalDataset(StreamingDataset):
    """StreamingDataset whose items are semi-causal rows (built in the loader worker that reads them)."""

    def __init__(self, *, spec: RowSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def __iter__(self):
        try:
            yield from super().__iter__()
        finally:
            # an epoch left early (end of training, eval batches cap): stop streaming's download/ready
            # threads now, else the process waits for them at exit (DataLoader gives workers 5 s, then kills)
            it = getattr(self, "_iterator", None)
            if it is not None:
                it.non_blocking_exit()

    def get_item(self, sample_id: int, retry: int = 7) -> semicausal.Row:
        sample = super().get_item(sample_id, retry)
        # the epoch being iterated: __iter__ pre-increments next_epoch (shared memory, same in every worker)
        epoch = max(0, self.next_epoch - 1)
        return sample_to_row(sample, sample_id, epoch, self.spec)


class Collator:
    def __init__(self, spec: RowSpec):
        self.spec = spec

    def __call__(self, rows: list[semicausal.Row]) -> Batch:
        if self.spec.pack:
            rows = finetune.pack_rows(rows, self.spec.max_seq_len)
        return semicausal.collate(rows, self.spec.slots, self.spec.image_size)


class BatchLoader(StreamingDataLoader):
    """StreamingDataLoader yielding `Batch` (its sample count feeds the resumable state)."""

    def _get_batch_size(self, batch: Any) -> int:
        # the samples this batch consumed (the resumable state counts samples): packed rows hold several
        return batch.num_examples() if isinstance(batch, Batch) else super()._get_batch_size(batch)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        if isinstance(obj, dict) and token_budget.STATE_KEY in obj:
            raise ValueError(
                "the checkpoint's data-loader state is from a run with data.micro_batch_tokens > 0; resume "
                "with the run's data.micro_batch_tokens"
            )
        super().load_state_dict(obj)
        # streaming ignores a resume state of an epoch before the one it presumes next (as stale): a rollback
        # inside this process (its loader is past that epoch's start) would restart at a new epoch's first
        # sample instead of the checkpoint's position. (-1: a state saved before this loader's first epoch.)
        self.dataset.next_epoch = max(0, int(obj.get("epoch", 0)))


def build_loader(data_cfg, model_cfg, topology, micro_batch_size: int, split: str = "train"):
    """The loader for `split` ("train" or "val") on this rank; identical samples across one TP group.

    Training with `data.micro_batch_tokens > 0`: a `TokenBudgetLoader` (one loader per stream, rows per
    micro-batch from the token budget; training/data/token_budget.py); else one `BatchLoader` of
    `micro_batch_size` rows over all streams (validation always)."""
    _quiet_expected_streaming_notices()
    if (
        topology.rank // topology.tp_size != topology.dp_rank
        or topology.rank % topology.tp_size != topology.tp_rank
    ):
        raise RuntimeError(
            "data sharding assumes TP groups of consecutive global ranks (Megatron order); got rank "
            f"{topology.rank} tp_rank {topology.tp_rank} dp_rank {topology.dp_rank}"
        )
    cfgs = data_cfg.train if split == "train" else data_cfg.val
    if split == "train" and data_cfg.micro_batch_tokens > 0:
        return _token_budget_loader(data_cfg, model_cfg, topology)
    streams = [Stream(local=s.path, proportion=s.proportion if split == "train" else None) for s in cfgs]
    train = split == "train"
    return _stream_loader(data_cfg, model_cfg, topology, streams, micro_batch_size, train)


def _stream_loader(data_cfg, model_cfg, topology, streams: list, rows: int, train: bool) -> BatchLoader:
    """One StreamingDataset over `streams` (DP-partitioned, TP-replicated) and its loader of `rows`-row batches."""
    spec = RowSpec.from_configs(data_cfg, model_cfg)
    ds = SemiCausalDataset(
        spec=spec,
        streams=streams,
        batch_size=rows,
        shuffle=train and data_cfg.shuffle,
        shuffle_seed=data_cfg.shuffle_seed,
        batching_method=data_cfg.batching if train else "random",
        replication=topology.tp_size if topology.tp_size > 1 else None,
        allow_unsafe_types=False,
    )
    workers = data_cfg.num_workers
    return BatchLoader(
        ds,
        batch_size=rows,
        collate_fn=Collator(spec),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        drop_last=True,
    )


def stream_rows(data_cfg, model_cfg) -> list[tuple[str, int, int]]:
    """(path, longest row's decoder positions, rows per micro-batch) of each training stream under
    `data.micro_batch_tokens` (stats.json beside each shard set gives the row lengths)."""
    from data_prep.shard_meta import read_shard_meta

    out = []
    for s in data_cfg.train:
        row = token_budget.stream_row_tokens(
            read_shard_meta(s.path), model_cfg.image_slots, model_cfg.max_seq_len
        )
        out.append((s.path, row, token_budget.rows_per_micro_batch(data_cfg.micro_batch_tokens, row)))
    return out


def _token_budget_loader(data_cfg, model_cfg, topology) -> token_budget.TokenBudgetLoader:
    rows = stream_rows(data_cfg, model_cfg)
    loaders = [
        _stream_loader(data_cfg, model_cfg, topology, [Stream(local=path)], n, train=True)
        for path, _, n in rows
    ]
    given = [s.proportion for s in data_cfg.train]
    # proportion null: by stream size, as streaming does for one dataset over all streams
    props = given if all(p is not None for p in given) else [float(ld.dataset.size) for ld in loaders]
    log.info(
        "data.micro_batch_tokens=%d: rows per micro-batch %s",
        data_cfg.micro_batch_tokens,
        ", ".join(f"{path} {n} (rows of <= {row} positions)" for path, row, n in rows),
    )
    return token_budget.TokenBudgetLoader(loaders, [n for _, _, n in rows], props, [p for p, _, _ in rows])


def clean_stale_shared_memory() -> None:
    """Remove shared memory left by a crashed StreamingDataset (FileExistsError on `_locals` otherwise)."""
    from streaming.base.util import clean_stale_shared_memory as clean

    clean()
