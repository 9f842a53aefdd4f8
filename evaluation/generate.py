"""Zero- and few-shot use of a trained MetaLM (paper section 2.4): encoder-side inputs, in-context
demonstrations, generation and multiple-choice scoring.

An `Example` is what the finetuning data calls one example without its target: images (vision
encoder), encoder texts (each one non-causal segment read bidirectionally by the language encoder) and
a decoder prompt. Its prefix is laid out exactly as `training.data.finetune.task_row` lays out a
finetuning example (the same code), so a finetuned model sees at test time what it was trained on:

    <s> [<image> K slots </image>]* [encoder segment 1] [segment 2] ... prompt      -> generated answer

In-context demonstrations (`Demonstration(example, label)`) come before the query, each as a whole
finetuning sequence `<s> [images] [segments] prompt label </s>` (its label as decoder tokens), then the
query's prefix. `demo_style` says where a demonstration's input goes:
- "encoder" (the paper's way): its encoder texts are encoder segments of their own (non-causal spans);
- "decoder" (GPT-style): its encoder texts become plain causal decoder tokens, in front of its prompt.
The query's encoder texts always go through the encoder; images always go through the vision encoder.
`demonstrations` is one list shared by every example, or one list per example.

All ids are token ids (the caller tokenizes: `tokenizer.encode(text)`, no `<s>`); images are normalized
[3, H, W] tensors at the model's resolution. Every TP rank must make the same calls; results are
identical on all of them. A model under ZeRO-3 (`engine.module`) works when every DP rank makes the same
number of calls with the same batch_size and num_beams (a rank with fewer examples pads its batches);
the examples may differ (see training/model/generation.py for the decoding itself, the KV cache and
ZeRO-3). A model loaded for evaluation (`evaluation.model_io.load_model`) is not ZeRO-partitioned: its
DP replicas decode independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from common.errors import UserError
from common.special_tokens import EOS_ID
from training.data.finetune import task_row
from training.data.semicausal import Row, collate
from training.model.generation import Hypothesis, generate_rows

DemoStyle = Literal["encoder", "decoder"]
DEMO_STYLES = ("encoder", "decoder")


@dataclass
class Example:
    """The input of one example (no target)."""

    images: list[torch.Tensor] = field(default_factory=list)  # [3, H, W] normalized, for the vision encoder
    encoder_texts: list[list[int]] = field(default_factory=list)  # token ids per encoder segment (no <s>)
    decoder_prompt: list[int] = field(default_factory=list)  # causal decoder tokens right before the answer


@dataclass
class Demonstration:
    """An in-context demonstration: an example and its label (decoder tokens, without </s>)."""

    example: Example
    label: list[int]


@dataclass
class ChoiceScore:
    """Log-likelihood of one choice given the example's prefix."""

    logprob: float  # summed log-probability of the choice tokens (and </s> with include_eos)
    num_tokens: int  # how many tokens were scored


def _row(ex: Example, target: Sequence[int], cfg, *, as_decoder: bool = False) -> Row:
    segments = [list(s) for s in ex.encoder_texts]
    prompt = list(ex.decoder_prompt)
    if as_decoder:  # GPT-style: the encoder texts are read by the decoder, in order, before the prompt
        prompt = [t for s in segments for t in s] + prompt
        segments = []
    return task_row(
        list(ex.images),
        segments,
        prompt,
        list(target),
        cfg.image_slots,
        cfg.max_seq_len,
        cfg.span_max_len - 1,
    )


def _concat(parts: list[Row]) -> Row:
    """One sequence of several rows (each row's whole `seq`, the last one's inputs end before its final
    token): spans and images shifted; loss only from the last row; positions run on (no packing)."""
    seq, loss, spans, images = [], [], [], []
    offset = 0
    for k, r in enumerate(parts):
        last = k == len(parts) - 1
        seq.append(r.seq)
        loss.append(r.loss if last else np.zeros(len(r.seq), dtype=bool))
        spans += [(p + offset, n) for p, n in r.spans]
        images += [(img, s + offset) for img, s in r.images]
        offset += len(r.seq)
    return Row(seq=np.concatenate(seq), loss=np.concatenate(loss), spans=spans, images=images)


def _check_style(demo_style: str) -> None:
    if demo_style not in DEMO_STYLES:
        raise UserError(f"demo_style={demo_style!r}: use one of {', '.join(DEMO_STYLES)}")


def _demos_for(demonstrations, n: int) -> list[list[Demonstration]]:
    """One list of demonstrations per example (a shared list, or one per example)."""
    if not demonstrations:
        return [[] for _ in range(n)]
    if isinstance(demonstrations[0], Demonstration):
        return [list(demonstrations) for _ in range(n)]
    if len(demonstrations) != n:
        raise UserError(f"{len(demonstrations)} demonstration lists for {n} examples: give one per example")
    return [list(d) for d in demonstrations]


def prefix_row(
    example: Example,
    demonstrations: Sequence[Demonstration] = (),
    demo_style: DemoStyle = "encoder",
    *,
    model_config,
    target: Sequence[int] = (),
) -> Row:
    """The row of one example after its demonstrations: its inputs are the prefix (plus `target`, which
    carries the loss, followed by </s>, when scoring). `row.seq[:-1]` are the decoder inputs."""
    _check_style(demo_style)
    cfg = model_config
    parts = [_row(d.example, d.label, cfg, as_decoder=demo_style == "decoder") for d in demonstrations]
    parts.append(_row(example, target, cfg))
    row = _concat(parts) if len(parts) > 1 else parts[0]
    if len(row.seq) - 1 > cfg.max_seq_len:
        raise UserError(
            f"an example with {len(demonstrations)} demonstrations needs {len(row.seq) - 1} decoder positions but "
            f"model.max_seq_len is {cfg.max_seq_len}: use fewer or shorter demonstrations"
        )
    return row


# ---------------------------------------------------------------------------------------------------
def generate_hypotheses(
    model,
    examples: Sequence[Example],
    *,
    demonstrations=None,
    demo_style: DemoStyle = "encoder",
    max_new_tokens: int,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_id: int = EOS_ID,
    batch_size: int = 8,
    use_cache: bool = True,
    vocab_limit: int | None = None,
) -> list[Hypothesis]:
    """`generate`, returning each example's best `Hypothesis` (tokens, log-probability, score)."""
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be >= 1")
    demos = _demos_for(demonstrations, len(examples))
    rows = [prefix_row(ex, d, demo_style, model_config=model.cfg) for ex, d in zip(examples, demos)]
    out: list[Hypothesis] = []
    for i in range(0, len(rows), batch_size):
        out += generate_rows(
            model,
            rows[i : i + batch_size],
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
            eos_id=eos_id,
            use_cache=use_cache,
            vocab_limit=vocab_limit,
        )
    return out


def generate(
    model,
    examples: Sequence[Example],
    *,
    demonstrations=None,
    demo_style: DemoStyle = "encoder",
    max_new_tokens: int,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_id: int = EOS_ID,
    batch_size: int = 8,
    use_cache: bool = True,
    vocab_limit: int | None = None,
) -> list[list[int]]:
    """Generated token ids per example (without </s>): greedy (num_beams=1) or beam search ranked by
    summed log-probability / length ** length_penalty (length counts the closing </s>; fairseq's rule).

    Examples are decoded `batch_size` at a time (any prefix lengths; the encoders run once per example).
    vocab_limit: generate only ids below it (`tokenizer.vocab_size` when the model's vocabulary is larger).
    """
    hyps = generate_hypotheses(
        model,
        examples,
        demonstrations=demonstrations,
        demo_style=demo_style,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        length_penalty=length_penalty,
        eos_id=eos_id,
        batch_size=batch_size,
        use_cache=use_cache,
        vocab_limit=vocab_limit,
    )
    return [h.tokens for h in hyps]


@torch.no_grad()
def score_choices(
    model,
    examples: Sequence[Example],
    choices: Sequence[Sequence[Sequence[int]]],
    *,
    demonstrations=None,
    demo_style: DemoStyle = "encoder",
    include_eos: bool = False,
) -> list[list[ChoiceScore]]:
    """Log-likelihood of each choice (token ids) as the continuation of each example's prefix.

    One batched forward per example (its choices are the rows). `include_eos` adds the log-probability
    of </s> after the choice (a choice that must end there). For `evaluation.metrics.choice`:
    loglikelihoods[i][j] = result[i][j].logprob, token lengths = result[i][j].num_tokens."""
    if len(choices) != len(examples):
        raise UserError(f"{len(choices)} choice lists for {len(examples)} examples: give one per example")
    cfg = model.cfg
    demos = _demos_for(demonstrations, len(examples))
    dev, dtype = model.embedding.weight.device, model.embedding.weight.dtype
    all_rows: list[list[Row]] = []  # every input checked before the first forward
    for i, (ex, d, cands) in enumerate(zip(examples, demos, choices)):
        if not cands or any(len(c) == 0 for c in cands):
            raise UserError(f"example {i}: every example needs choices, each of at least one token")
        rows = []
        for c in cands:
            row = prefix_row(ex, d, demo_style, model_config=cfg, target=c)
            if int(row.loss.sum()) != len(c) + 1:  # task_row cuts a target that does not fit
                raise UserError(
                    f"example {i}: a choice of {len(c)} tokens does not fit in model.max_seq_len="
                    f"{cfg.max_seq_len} after its prefix"
                )
            if not include_eos:
                row.loss[-1] = False  # the last target is </s>
            rows.append(row)
        all_rows.append(rows)
    out: list[list[ChoiceScore]] = []
    was_training = model.training
    model.eval()
    try:
        for rows in all_rows:
            batch = collate(rows, cfg.image_slots, cfg.image_size).to(dev)
            batch.images = batch.images.to(dtype)
            losses = model(batch, reduction="none").sum(dim=1)
            counts = batch.loss_mask.sum(dim=1)
            out.append([ChoiceScore(-float(s), int(n)) for s, n in zip(losses.tolist(), counts.tolist())])
    finally:
        model.train(was_training)
    return out
