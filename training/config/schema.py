"""The training job's configuration: typed sections, YAML + dotted overrides, one validation pass.

    cfg = load_config("configs/debug.yaml", ["train.steps=100", "parallel.tp=2"])
    cfg.validate(world_size)          # every problem at once, as one UserError, before any process group

Precedence: command line > file > dataclass defaults. Unknown keys are rejected by name (with the
closest known key). The `model` section is a preset name plus overrides of any `ModelConfig` field;
`model.vocab_size: auto` (or leaving it out) takes the tokenizer's vocabulary (the model pads its
embedding to `model.pad_vocab_to_multiple_of`, which must divide by TP).
Each component receives only its own section (`cfg.data`, `cfg.optim`, `cfg.checkpoint`, ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from common.errors import UserError
from parallel.config import ParallelConfig
from training.checkpoint import CheckpointConfig
from training.config import loader as config_io
from training.model.config import ModelConfig, build_model_config, model_config_from_preset
from training.observability.config import ProfileConfig
from training.resilience.loss_spike import LossSpikeConfig
from training.run_dir import RunDir


@dataclass
class StreamConfig:
    path: str = (
        ""  # MDS shard directory written by `python -m data_prep pairs|text` (index.json + stats.json)
    )
    proportion: float | None = (
        None  # share of training samples drawn from this stream (train streams; null = by size)
    )


@dataclass
class DataConfig:
    tokenizer: str = "data/tokenizer"  # tokenizer dir written by `python -m data_prep tokenizer`
    train: list[StreamConfig] = field(
        default_factory=list
    )  # training streams (image-text and/or text shards)
    val: list[StreamConfig] = field(default_factory=list)  # held-out streams for validation loss and captions
    span_min_len: int = 64  # shortest non-causal text span (tokens)
    span_max_len: int = 128  # longest non-causal text span (tokens; <= model span_max_len - 1)
    span_fraction: float = 0.25  # share of a text sequence's tokens placed in non-causal spans
    num_workers: int = 1  # DataLoader worker processes per rank (JPEG decode, span sampling, collation)
    shuffle: bool = True  # shuffle training samples (streaming's deterministic, resumable shuffle)
    shuffle_seed: int = 9176  # seed of the sample order and of span sampling
    batching: Literal["random", "per_stream"] = (
        "random"  # streaming batching_method (per_stream: 1 stream/batch)
    )
    # token budget per micro-batch: a stream's rows = max(1, this // its longest row's decoder positions, image
    # slots included); every micro-batch holds one stream (0 = off: train.micro_batch_size rows for every stream)
    micro_batch_tokens: int = 0
    pack: bool = False  # finetuning: pack several task examples per row; attention stays inside each example
    clean_stale_shm: bool = (
        True  # at start, free streaming shared memory of crashed jobs (off: jobs share a node)
    )
    image_mean: list[float] = field(
        default_factory=lambda: [0.48145466, 0.4578275, 0.40821073]
    )  # RGB mean (CLIP)
    image_std: list[float] = field(
        default_factory=lambda: [0.26862954, 0.26130258, 0.27577711]
    )  # RGB std (CLIP)


@dataclass
class LrMultipliers:
    """Per-component learning-rate multipliers: a component trains at optim.lr x its multiplier, following
    the same warmup and decay (docked pretrained encoders often train slower than the decoder)."""

    decoder: float = 1.0  # decoder layers and token embedding (= the tied output layer)
    text_encoder: float = 1.0  # language encoder (its trainable layers)
    vision_encoder: float = 1.0  # ViT (its trainable layers)
    connectors: float = 1.0  # text and image connectors


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (MetaLM VL pretraining: 1e-4)
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak
    warmup_steps: int = 2500  # linear warmup from 0 (optimizer steps)
    decay: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup until train.steps
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on biases/norms)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.98  # AdamW beta2 (paper: 0.98)
    eps: float = 1e-6  # AdamW epsilon
    grad_clip: float = 1.0  # global gradient-norm clipping (0 = off)
    lr_multipliers: LrMultipliers = field(default_factory=LrMultipliers)  # lr scale per model component
    fused: Literal["auto", "never"] = (
        "auto"  # auto: DeepSpeed FusedAdam on GPU when it loads, else torch AdamW's fused kernel (CPU too)
    )


@dataclass
class ZeroConfig:
    """DeepSpeed ZeRO communication settings (its `zero_optimization` section); defaults for GPUs at ~1B."""

    overlap_comm: bool = True  # overlap gradient reduction with the backward pass (extra bucket buffers)
    contiguous_gradients: bool = True  # copy gradients into one buffer as they arrive (less fragmentation)
    reduce_bucket_size: int = 500_000_000  # gradient elements reduced per collective
    allgather_bucket_size: int = 500_000_000  # updated parameter elements all-gathered at once (ZeRO-1/2)
    reduce_scatter: bool = True  # reduce-scatter gradients to their owners, not all-reduce (ZeRO-1/2)
    stage3_prefetch_bucket_size: int = 50_000_000  # ZeRO-3: parameter elements fetched ahead of their use
    stage3_param_persistence_threshold: int = 100_000  # ZeRO-3: smaller parameters stay whole on every rank
    stage3_max_live_parameters: int = 1_000_000_000  # ZeRO-3: gathered parameter elements kept at most
    stage3_max_reuse_distance: int = 1_000_000_000  # ZeRO-3: keep a parameter reused within this many


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"  # run folder: config.yaml, checkpoints/, logs/, mlflow store default
    steps: int = 1000  # optimizer steps to train (total, including resumed ones)
    # samples per optimizer step = micro_batch_size x grad accumulation x DP; with data.micro_batch_tokens it
    # sets the accumulation only: a step is that many micro-batches per DP rank of <= micro_batch_tokens each
    global_batch_size: int = 8
    micro_batch_size: int = 8  # samples per forward/backward on one rank
    loss_weighting: Literal["micro_batch", "token"] = (
        "micro_batch"  # micro_batch: each micro-batch's mean loss weighs the same; token: each loss token of the step does
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = (
        "auto"  # auto: bf16 on GPUs; on a CPU bf16 only where measured clearly faster (training/precision.py)
    )
    zero_stage: int = 1  # DeepSpeed ZeRO stage 1-3 (3 only with parallel.tp=1; 0 only with fp16)
    zero: ZeroConfig = field(default_factory=ZeroConfig)  # DeepSpeed ZeRO bucket / overlap settings
    fp16_initial_scale_power: int = 16  # fp16 dynamic loss scale starts at 2**this
    log_interval: int = 10  # steps between console progress lines and MLflow metric flushes
    peak_tflops: float = 0.0  # one device's peak dense TFLOP/s in the training precision, for MFU (0: the
    # start-up matmul measurement when precision=auto measured one on a CPU, else no MFU)
    watchdog_timeout_s: float = 0.0  # no completed step for this long -> dump stacks, exit 76 (0 = off)
    watchdog_first_step_s: float = 600.0  # the limit before the first step (loader start-up, a rank that
    # died during set-up leaves the others in streaming's shared-memory barrier); at least watchdog_timeout_s
    max_bad_steps: int = 5  # consecutive non-finite steps before rollback / stop
    sync_timing: bool = False  # synchronize the accelerator at phase boundaries (exact time/* on GPUs)
    straggler_interval: int = 50  # steps per window of per-rank figures (one small all-gather; 0 = off)
    straggler_factor: float = 1.3  # a rank above this x the median (est. job slowdown) is slow in a window
    straggler_windows: int = 3  # consecutive slow windows before a rank is named a straggler
    loss_spike: LossSpikeConfig = field(default_factory=LossSpikeConfig)  # loss-spike detection + response


@dataclass
class EvalConfig:
    interval_steps: int = 500  # validation loss every N steps (0 = off; also run at the end)
    batches: int = 8  # validation micro-batches per rank per evaluation
    caption_interval_steps: int = (
        0  # log generated captions for held-out images every N steps (0 = only at the end)
    )
    caption_samples: int = 4  # held-out images captioned each time
    caption_max_new_tokens: int = 24  # generation length limit
    harness: str = ""  # EVAL.yaml run on the weights being trained: MLflow eval/<task>/<metric> ('' = off)
    harness_interval_steps: int = 0  # steps between eval.harness runs (0 = only at the end of training)
    harness_overrides: list[str] = field(default_factory=list)  # dotted overrides of it, e.g. [root=demo_out]


@dataclass
class TrackingConfig:
    enabled: bool = True  # log to MLflow (global rank 0 only)
    uri: str = ""  # MLflow tracking URI; empty = sqlite:///<parent of run_dir>/mlflow.db
    experiment: str = "metalm"  # MLflow experiment name
    run_name: str = ""  # MLflow run name; empty = name of run_dir


@dataclass
class TrainingConfig:
    model: ModelConfig = field(
        default_factory=lambda: model_config_from_preset("debug")
    )  # preset + overrides
    data: DataConfig = field(default_factory=DataConfig)  # streams, spans, loader
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW + schedule
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # TP size, backend, seed
    train: TrainConfig = field(default_factory=TrainConfig)  # steps, batch sizes, precision, ZeRO
    eval: EvalConfig = field(default_factory=EvalConfig)  # validation and caption samples
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # intervals, keep, resume
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow
    profile: ProfileConfig = field(default_factory=ProfileConfig)  # torch.profiler trace, memory snapshots

    # ---- derived values -------------------------------------------------------------------
    def dp_size(self, world_size: int) -> int:
        return max(1, world_size // max(1, self.parallel.tp))

    def grad_accum_steps(self, world_size: int) -> int:
        return max(
            1, self.train.global_batch_size // (self.train.micro_batch_size * self.dp_size(world_size))
        )

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.train.run_dir)

    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return self.run_dir.default_tracking_uri()

    def to_dict(self) -> dict:
        return config_io.to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """Hash of the resolved config minus what may change across a resume without changing the maths
        (steps, resume, logging, profiling, timing, straggler watching, evaluation hooks)."""
        d = self.to_dict()
        d.pop("profile", None)
        for sec, key in [
            ("train", "steps"),
            ("checkpoint", "resume"),
            ("train", "log_interval"),
            ("train", "sync_timing"),
            ("train", "straggler_interval"),
            ("train", "straggler_factor"),
            ("train", "straggler_windows"),
            ("eval", "harness"),
            ("eval", "harness_interval_steps"),
            ("eval", "harness_overrides"),
        ]:
            d.get(sec, {}).pop(key, None)
        return hashlib.sha256(json.dumps(_canonical(d), sort_keys=True).encode()).hexdigest()[:16]

    # ---- validation (training/config/checks.py) ---------------------------------------------
    def problems(self, world_size: int, check_data: bool = True) -> list[str]:
        """Every problem with this config for a job of `world_size` processes (empty = fine)."""
        from training.config.checks import config_problems

        return config_problems(self, world_size, check_data)

    def validate(self, world_size: int, check_data: bool = True) -> None:
        probs = self.problems(world_size, check_data)
        if probs:
            raise UserError(probs)


def _canonical(x: Any) -> Any:
    """10 and 10.0 hash alike (a default int and a YAML-read float of the same value)."""
    if isinstance(x, dict):
        return {k: _canonical(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_canonical(v) for v in x]
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


# ---- loading -------------------------------------------------------------------------------


def _resolve_model(raw: Any, problems: list[str], tp: int, tokenizer_dir: str | None) -> ModelConfig:
    """The model section: preset (default debug) + overrides, built by the model's engine entry point
    (training.config.loader underneath); `vocab_size: auto` or left out follows the tokenizer."""
    raw = {"preset": "debug", **raw} if isinstance(raw, dict) else raw or {"preset": "debug"}
    vocab = raw.pop("vocab_size", None) if isinstance(raw, dict) else None
    base = build_model_config(raw, problems)
    if vocab in (None, "auto"):
        # follow the tokenizer when it can be read; else keep the preset's (validation reports the tokenizer)
        v = _tokenizer_vocab(tokenizer_dir)
        if v:
            base = dataclasses.replace(base, vocab_size=v)
    elif isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
        base = dataclasses.replace(base, vocab_size=vocab)
    else:
        problems.append(f"model.vocab_size: expected a positive integer or 'auto', got {vocab!r}")
    return base


def _tokenizer_vocab(tokenizer_dir: str | None) -> int | None:
    if not tokenizer_dir:
        return None
    from training.config.tokenizer import run_tokenizer

    try:
        return run_tokenizer(tokenizer_dir).vocab_size
    except UserError:
        return None  # validation reports the tokenizer


def config_from_dict(raw: dict) -> TrainingConfig:
    """Build and type-check a TrainingConfig from a nested dict (file merged with overrides)."""
    problems: list[str] = []
    raw = dict(raw or {})
    names = [f.name for f in dataclasses.fields(TrainingConfig)]
    for k in list(raw):
        if k not in names:
            problems.append(config_io.unknown_key_problem(str(k), "", names))
            raw.pop(k)
    rest = config_io.build(TrainingConfig(), {k: v for k, v in raw.items() if k != "model"}, "", problems)
    tok_dir = rest.data.tokenizer if isinstance((raw.get("data") or {}), dict) else None
    model = _resolve_model(raw.get("model"), problems, rest.parallel.tp, tok_dir)
    if problems:
        raise UserError(problems)
    return dataclasses.replace(rest, model=model)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainingConfig:
    """YAML file (optional) + dotted overrides -> TrainingConfig (types checked; run `validate` next)."""
    raw = config_io.load_yaml(path) if path else {}
    over = config_io.parse_overrides(list(overrides or []))
    return config_from_dict(config_io.deep_merge(raw, over))
