"""The validation pass over a whole training config: every problem at once, before any process group."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import UserError
from training.precision import precision_problems

if TYPE_CHECKING:
    from training.config.schema import StreamConfig, TrainingConfig


def config_problems(cfg: TrainingConfig, world_size: int, check_data: bool = True) -> list[str]:
    """Every problem with `cfg` for a job of `world_size` processes (empty = fine), each naming its fix."""
    p: list[str] = []
    t, tp = cfg.train, cfg.parallel.tp
    p += cfg.parallel.problems(world_size)
    # TP vs world size is reported once, by parallel.problems; docked weights on disk with the data checks
    p += cfg.model.problems(tp, None, check_files=check_data)
    p += cfg.model.frozen_random_problems(cfg.checkpoint.load_weights_from)
    p += cfg.checkpoint.problems()
    p += cfg.profile.problems()
    p += cfg.train.loss_spike.problems()
    if t.straggler_interval < 0 or t.straggler_factor <= 1 or t.straggler_windows < 1:
        p.append(
            f"train.straggler_interval={t.straggler_interval} / straggler_factor={t.straggler_factor} / "
            f"straggler_windows={t.straggler_windows}: need interval >= 0 (0 = off), factor > 1, windows >= 1"
        )
    dp = cfg.dp_size(world_size)
    if t.steps < 1:
        p.append(f"train.steps={t.steps} must be >= 1")
    if t.micro_batch_size < 1:
        p.append(f"train.micro_batch_size={t.micro_batch_size} must be >= 1")
    elif t.global_batch_size % (t.micro_batch_size * dp) != 0:
        p.append(
            f"train.global_batch_size={t.global_batch_size} is not divisible by micro_batch_size x DP = "
            f"{t.micro_batch_size} x {dp} (world {world_size} / tp {tp}); set global_batch_size to a multiple "
            f"of {t.micro_batch_size * dp}, e.g. {t.micro_batch_size * dp * max(1, round(t.global_batch_size / (t.micro_batch_size * dp)))}"
        )
    if t.zero_stage not in (0, 1, 2, 3):
        p.append(f"train.zero_stage={t.zero_stage} must be 0, 1, 2 or 3")
    elif t.zero_stage == 0 and t.precision != "fp16":
        p.append(
            f"train.zero_stage=0 with precision={t.precision}: DeepSpeed's stage-0 optimizer cannot skip a "
            "non-finite update (NaN weights instead of a skipped step); use train.zero_stage=1 (same "
            "maths, optimizer states sharded over DP)"
        )
    if t.zero_stage == 3 and tp > 1:
        p.append(
            f"train.zero_stage=3 with parallel.tp={tp}: DeepSpeed cannot train ZeRO-3 together with tensor "
            "parallelism; use train.zero_stage=1 or 2 with TP, or parallel.tp=1 with ZeRO-3"
        )
    p += precision_problems(t.precision)
    p += _zero_problems(t.zero)
    p += sequence_parallel_problems(cfg.parallel)
    o = cfg.optim
    if o.lr <= 0:
        p.append(f"optim.lr={o.lr} must be > 0")
    if not 0 <= o.min_lr_ratio <= 1:
        p.append(f"optim.min_lr_ratio={o.min_lr_ratio} must be within [0, 1]")
    if o.warmup_steps < 0:
        p.append(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    for comp, mult in _fields(o.lr_multipliers):
        if mult <= 0:
            p.append(
                f"optim.lr_multipliers.{comp}={mult} must be > 0: to keep a component fixed, freeze it "
                "(model.freeze.* or the encoders' trainable_layers)"
            )
    d = cfg.data
    if not 1 <= d.span_min_len <= d.span_max_len:
        p.append(f"data.span_min_len={d.span_min_len} / span_max_len={d.span_max_len}: need 1 <= min <= max")
    if d.span_max_len + 1 > cfg.model.span_max_len:
        p.append(
            f"data.span_max_len={d.span_max_len} does not fit the language encoder (model span_max_len="
            f"{cfg.model.span_max_len} including <s>); set data.span_max_len <= {cfg.model.span_max_len - 1}"
        )
    if not 0 <= d.span_fraction < 1:
        p.append(f"data.span_fraction={d.span_fraction} must be within [0, 1)")
    if len(d.image_mean) != 3 or len(d.image_std) != 3 or min(d.image_std, default=1) <= 0:
        p.append("data.image_mean / data.image_std need 3 values each (RGB), std > 0")
    if d.num_workers < 0:
        p.append(f"data.num_workers={d.num_workers} must be >= 0")
    p += _proportion_problems(d.train)
    if d.micro_batch_tokens < 0:
        p.append(
            f"data.micro_batch_tokens={d.micro_batch_tokens} must be >= 0 (0 = off: micro_batch_size rows)"
        )
    elif d.micro_batch_tokens > 0 and d.batching != "per_stream":
        p.append(
            f"data.micro_batch_tokens={d.micro_batch_tokens} gives every stream its own rows per micro-batch, so "
            f"each micro-batch holds one stream: set data.batching=per_stream (got {d.batching!r})"
        )
    if cfg.eval.caption_samples < 0 or cfg.eval.batches < 0:
        p.append("eval.batches and eval.caption_samples must be >= 0")
    if check_data:
        p += data_problems(cfg)
    return p


def _fields(section) -> list[tuple[str, float]]:
    """(name, value) of every field of a dataclass section."""
    return [(f.name, getattr(section, f.name)) for f in dataclasses.fields(section)]


def _zero_problems(z) -> list[str]:
    """train.zero: bucket sizes are element counts (> 0); the ZeRO-3 thresholds may be 0."""
    p = []
    for name in ("reduce_bucket_size", "allgather_bucket_size"):
        if getattr(z, name) < 1:
            p.append(f"train.zero.{name}={getattr(z, name)} must be >= 1 (elements; e.g. 500000000)")
    for name in (
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
    ):
        if getattr(z, name) < 0:
            p.append(f"train.zero.{name}={getattr(z, name)} must be >= 0")
    return p


def sequence_parallel_problems(par, on_gpu: bool | None = None) -> list[str]:
    """parallel.sequence_parallel is refused, with the reason for this machine (`on_gpu` injects it)."""
    if not par.sequence_parallel:
        return []
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    if par.tp < 2:
        return [
            f"parallel.sequence_parallel=true with parallel.tp={par.tp}: it splits the sequence across TP "
            "ranks, so it needs parallel.tp >= 2; set parallel.sequence_parallel=false"
        ]
    if not on_gpu:
        return [
            "parallel.sequence_parallel=true cannot run on a CPU: megatron-core's sequence-parallel gathers and "
            "reduce-scatters allocate on torch.cuda.current_device() (tensor_parallel/mappings.py, layers.py) "
            "and its torch LayerNorm fallback refuses sequence parallelism without apex / Transformer Engine; "
            "set parallel.sequence_parallel=false"
        ]
    return [
        "parallel.sequence_parallel=true is not implemented in MetaLM's layers yet (batch-first activations; "
        "it needs sequence-first layers, a sequence scatter/gather around each stack and a TP all-reduce of "
        "the LayerNorm and bias gradients, which DeepSpeed does not do); set parallel.sequence_parallel=false"
    ]


def _proportion_problems(streams: list[StreamConfig]) -> list[str]:
    p = []
    props = [s.proportion for s in streams]
    given = [x for x in props if x is not None]
    if any(x <= 0 for x in given):
        p.append(f"data.train proportions must be > 0 (got {props}); drop a stream instead of giving it 0")
    if given and len(given) != len(props):
        p.append(f"data.train: give a proportion for every stream or for none (got {props})")
    elif given and all(x > 0 for x in given) and not math.isclose(sum(given), 1.0, abs_tol=1e-3):
        p.append(f"data.train proportions sum to {sum(given):.4g}, not 1 (got {props}); make them sum to 1")
    return p


def data_problems(cfg: TrainingConfig) -> list[str]:
    """Shard dirs exist and agree with each other, the tokenizer and the model (vocab, sha, image size)."""
    from data_prep.shard_meta import compatibility_problems, read_shard_meta
    from training.config.tokenizer import run_tokenizer

    p: list[str] = []
    d, m = cfg.data, cfg.model
    if not d.train:
        p.append("data.train lists no streams; add at least one shard dir (e.g. data.train: [{path: DIR}])")
    tok = None
    try:
        tok = run_tokenizer(d.tokenizer)
    except UserError as e:
        p.append(f"data.tokenizer: {e}")
    vmap = m.text_encoder.vocab_map_from
    if tok is not None and vmap and Path(vmap).resolve() != Path(d.tokenizer).resolve():
        try:
            other = run_tokenizer(vmap).sha256
        except UserError:
            other = None  # model.problems reports an unreadable map
        if other is not None and other != tok.sha256:
            p.append(
                f"model.text_encoder.vocab_map_from={vmap!r} is another tokenizer than data.tokenizer="
                f"{d.tokenizer!r}: the docked rows would follow other token ids; set it to {d.tokenizer!r}"
            )
    if tok is not None and tok.vocab_size > m.vocab_size:
        p.append(
            f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's vocabulary ({tok.vocab_size}, "
            f"{d.tokenizer}); set model.vocab_size=auto"
        )
    p += starting_model_problems(cfg, tok)
    for name, streams in (("train", d.train), ("val", d.val)):
        for i, s in enumerate(streams):
            where = f"data.{name}.{i}.path={s.path!r}"
            try:
                meta = read_shard_meta(s.path)
            except UserError as e:
                p.append(f"{where}: {e}")
                continue
            kind = meta.get("kind")
            p += [
                f"{where}: {problem}"
                for problem in compatibility_problems(
                    meta,
                    s.path,
                    tokenizer_sha256=tok.sha256 if tok is not None else None,
                    vocab_size=tok.vocab_size if tok is not None else None,
                    image_size=m.image_size if kind in ("pairs", "tasks") else None,
                    max_seq_len=m.max_seq_len,
                )
            ]
            # <s> <image> [K] </image> + caption + </s> must fit
            if kind == "pairs" and m.image_slots + 4 >= m.max_seq_len:
                p.append(
                    f"model.max_seq_len={m.max_seq_len} cannot hold an image ({m.image_slots} slots) and a caption"
                )
            elif kind not in ("pairs", "text", "tasks"):
                p.append(f"{where}: stats.json kind={kind!r} is not one training reads (pairs, text, tasks)")
    return p


# model fields a starting model must share with the run (dropout, freezing, image size may change)
SHAPE_FIELDS = {
    "decoder": ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "norm_scheme"),
    "text_encoder": ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "max_len"),
    "vision_encoder": ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "patch_size"),
    "connector": ("kind", "num_latents", "resampler_layers", "resampler_heads"),
}


def starting_model_problems(cfg: TrainingConfig, tok) -> list[str]:
    """`checkpoint.load_weights_from`: it exists, and its tokenizer, vocabulary and model shapes are the
    run's (a finetuning stage may change dropout, freezing and the image resolution, not the shapes)."""
    src = cfg.checkpoint.load_weights_from
    if not src:
        return []
    from training.checkpoint.exported_weights import describe_source

    key = f"checkpoint.load_weights_from={src!r}"
    try:
        info = describe_source(src)
    except UserError as e:
        return [str(e)]
    p: list[str] = []
    if tok is not None and info.get("tokenizer_sha256") and info["tokenizer_sha256"] != tok.sha256:
        p.append(
            f"{key} was trained with another tokenizer (sha256 {info['tokenizer_sha256'][:12]}... vs "
            f"{tok.sha256[:12]}... of data.tokenizer={cfg.data.tokenizer!r}); use the starting model's tokenizer "
            "(an export has it in tokenizer/ beside the file) and shards built with it"
        )
    if info.get("vocab_size") not in (None, cfg.model.vocab_size):
        p.append(
            f"{key} has vocab_size {info['vocab_size']}, this run's model.vocab_size is {cfg.model.vocab_size}"
        )
    if info.get("config"):
        from training.config.schema import load_config

        try:
            theirs = load_config(info["config"]).model
        except UserError as e:
            return p + [f"{key}: its config {info['config']} does not load ({e})"]
        for section, names in SHAPE_FIELDS.items():
            for name in names:
                a, b = getattr(getattr(theirs, section), name), getattr(getattr(cfg.model, section), name)
                if a != b:
                    p.append(
                        f"{key} has model.{section}.{name}={a!r} but this run sets {b!r}: a starting model's "
                        "shapes cannot change (set it back, or train from scratch)"
                    )
    return p
