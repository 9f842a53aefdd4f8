"""`python -m data_prep tasks`: finetuning task data -> MDS task shards + stats.json.

MetaLM is finetuned "through the encoders" (paper 2.4, 3.3-3.5): an example's input and instruction
go to the bidirectional language encoder, its images to the vision encoder, and the causal decoder
learns to generate the target. A template (`task_templates`, YAML) says which rendered text goes
where; one of a dataset's templates is drawn per example with an RNG seeded by (--seed, dataset,
example key), so the output is identical for any --workers.

Inputs (`task_readers`): JSONL task files (`--input [NAME=]FILE`, NAME = the template set, default
the file stem without a split suffix), COCO captions JSON (dataset `coco_caption` unless named) and
one VQA v2 question + annotation pair (`--questions [NAME=]Q.json --annotations A.json`, dataset `vqa`).

Columns of a task shard (one row per example; a consumer lays it out as `<s>`, the images (each
`<image> slots </image>`), the encoder segments (each one non-causal span), the decoder prompt, then
the target followed by `</s>`; loss on the target and `</s>` only):
  key                str            unique id: "<input file name>:<line | q<question_id> | <image_id>_<ann id>>"
  dataset            str            the template set used (e.g. mnli, vqa)
  template_id        int            index of the drawn template within its dataset
  images             bytes          the JPEG files (RGB, resized + center-cropped to --image-size) back to back
  image_sizes        json           their byte lengths (0..N images): shard_meta.split_images cuts them apart
  encoder_segments   json           list of lists of token ids, one per encoder segment, without <s>
  decoder_prompt_ids json           list of decoder prompt token ids (may be empty: MDS cannot store an
                                    empty ndarray), no loss
  target_ids         ndarray:int32  target token ids, without </s>
  target             str            the rendered target text (before any cut)
  answers            json           list[str] references for scoring: VQA's annotator answers, all COCO
                                    captions of the image, a JSONL `answers` list, else [target]
  choices            json           list[str] for multiple choice (JSONL `choices`), else []
  label              int            index into choices, -1 if none
  question_id        int            VQA question id or a JSONL int `question_id`, else -1
  image_id           int            VQA/COCO image id or a JSONL int `image_id`, else -1

Skipped examples are counted by reason in stats.json: bad_record, missing_annotation,
missing_caption (reader level); missing_field (a later example lacks a field a template needs; the
FIRST example of each input lacking one is a UserError instead, before anything is written),
bad_value, bad_label, empty_encoder_segment, empty_target, empty_input (no image and no segment
left), and the image reasons of `images.py` (missing_image, corrupt_image, ...). Too long text is
CUT, not skipped: each encoder segment to --max-encoder-tokens (the encoder adds <s>, so 511 fits
the paper's 512 positions), the target to --max-target-tokens; both are counted. The decoder prompt
is template text and is never cut. `--max-per-dataset N` keeps N examples per dataset, chosen by a
seeded hash of their keys (deterministic, spread over the whole file), before the image and token
skips above.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from streaming import MDSWriter
from tqdm import tqdm

from common.errors import UserError
from data_prep.images import ImageSkip, process_image
from data_prep.pairs import SHARD_HASHES, normalize_caption
from data_prep.shard_meta import TASK_COLUMNS, join_images, write_stats
from data_prep.staging import check_output, staged_output
from data_prep.task_readers import RawExample, open_task_sources, resolve_image
from data_prep.task_templates import (
    DEFAULT_TEMPLATES,
    BadValue,
    MissingField,
    TemplateSet,
    label_index,
    load_templates,
    render_context,
)
from data_prep.tokenizer import load_tokenizer
from data_prep.workers import ordered_map

log = logging.getLogger(__name__)

CHUNK = 32  # examples per worker task
IMAGE_ROOT_PROBE = 20  # examples looked at to tell a wrong --image-root from a few missing images


@dataclass
class TasksConfig:
    inputs: list[str]  # "[NAME=]FILE": JSONL task files, COCO captions JSON
    tokenizer: Path  # tokenizer dir written by `data_prep tokenizer`
    output: Path  # shard dir to create
    templates: Path = DEFAULT_TEMPLATES  # YAML template file (see task_templates)
    format: str = "auto"  # auto|jsonl|coco for --input; vqa: only --questions/--annotations
    questions: str | None = None  # "[NAME=]Q.json": VQA v2 questions
    annotations: Path | None = None  # VQA v2 annotations
    image_root: Path | None = None  # image paths are relative to it (default: each input file's folder)
    image_patterns: list[str] | None = (
        None  # VQA image file names (default COCO_{split}_{image_id:012d}.jpg, {image_id}.jpg)
    )
    coco_captions: str = "all"  # COCO: one example per caption (all) or per image (first)
    seed: int = 0  # template draws and the per-dataset cap
    max_per_dataset: int | None = None  # keep at most this many examples per dataset (paper: 30k)
    max_encoder_tokens: int = 511  # longer encoder segments are cut to this many tokens
    max_target_tokens: int = 128  # longer targets are cut to this many tokens
    image_size: int = 224  # stored images are image_size x image_size center crops
    jpeg_quality: int = 95
    workers: int = 1  # processes doing image + tokenizer work
    shard_size_limit: str = "64mb"
    force: bool = False
    progress: bool = True

    def validate(self) -> None:
        p = []
        if self.image_size < 8:
            p.append(f"--image-size {self.image_size}: must be at least 8")
        if not 1 <= self.jpeg_quality <= 100:
            p.append(f"--jpeg-quality {self.jpeg_quality}: must be in 1..100")
        if self.max_encoder_tokens < 1:
            p.append(f"--max-encoder-tokens {self.max_encoder_tokens}: must be at least 1")
        if self.max_target_tokens < 1:
            p.append(f"--max-target-tokens {self.max_target_tokens}: must be at least 1")
        if self.max_per_dataset is not None and self.max_per_dataset < 1:
            p.append(f"--max-per-dataset {self.max_per_dataset}: must be at least 1")
        if self.workers < 1:
            p.append(f"--workers {self.workers}: must be at least 1")
        if self.coco_captions not in ("all", "first"):
            p.append(f"--coco-captions {self.coco_captions}: use all or first")
        if p:
            raise UserError(p)


@dataclass
class PendingExample:
    """An example with its template rendered; images and tokens are made in a worker."""

    key: str
    dataset: str
    template_id: int
    image_paths: list[str]
    encoder: list[str]
    decoder: str
    target: str
    answers: list[str]
    choices: list[str]
    label: int
    question_id: int
    image_id: int


def _int_or(value, default: int = -1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str_list(value) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def prepare_example(raw: RawExample, reader, templates: TemplateSet, seed: int) -> PendingExample | str:
    """Render the drawn template: a PendingExample, or a skip reason. MissingField propagates."""
    tpl = templates.draw(reader.dataset, raw.key, seed)
    fields = raw.fields
    try:
        r = tpl.render(render_context(fields))
    except BadValue:
        return "bad_value"
    encoder = [normalize_caption(s) for s in r.encoder]
    target = normalize_caption(r.target)
    if any(not s for s in encoder):
        return "empty_encoder_segment"
    if not target:
        return "empty_target"
    if not encoder and not r.image_values:
        return "empty_input"
    choices = _str_list(fields.get("choices")) or []
    label = -1
    if "label" in fields and fields["label"] is not None:
        i = label_index(fields["label"], choices)
        if choices:
            if i is None or not 0 <= i < len(choices):
                return "bad_label"
            label = i
        elif i is not None and i >= 0:
            label = i
    answers = [a for a in (_str_list(fields.get("answers")) or []) if a.strip()] or [target]
    return PendingExample(
        key=raw.key,
        dataset=reader.dataset,
        template_id=tpl.index,
        image_paths=[resolve_image(reader.image_root, v) for v in r.image_values],
        encoder=encoder,
        decoder=normalize_caption(r.decoder),
        target=target,
        answers=answers,
        choices=choices,
        label=label,
        question_id=_int_or(fields.get("question_id")),
        image_id=_int_or(fields.get("image_id")),
    )


# Per-process state for the workers (set by _init_worker, in-process when --workers 1).
_STATE: dict = {}


def _init_worker(tokenizer_dir: str, image_size: int, quality: int, max_enc: int, max_tgt: int) -> None:
    _STATE.update(
        tok=load_tokenizer(tokenizer_dir),
        image_size=image_size,
        quality=quality,
        max_enc=max_enc,
        max_tgt=max_tgt,
    )


def _load_image(path: str, size: int, quality: int) -> bytes:
    if not path:
        raise ImageSkip("missing_image", "empty image path")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ImageSkip("missing_image", path) from e
    except OSError as e:
        raise ImageSkip("unreadable_image", f"{path}: {e}") from e
    return process_image(data, size, quality)


def process_chunk(chunk: list[PendingExample]) -> list[tuple[dict | None, str | None, tuple[int, bool]]]:
    """(sample, None, (encoder segments cut, target cut)) or (None, skip reason, (0, False)), in order."""
    tok = _STATE["tok"]
    size, quality = _STATE["image_size"], _STATE["quality"]
    max_enc, max_tgt = _STATE["max_enc"], _STATE["max_tgt"]
    cache: dict[str, bytes | ImageSkip] = {}  # VQA: several questions per image
    out: list = []
    texts: list[str] = []
    for ex in chunk:
        images, reason = [], None
        for path in ex.image_paths:
            if path not in cache:
                try:
                    cache[path] = _load_image(path, size, quality)
                except ImageSkip as e:
                    cache[path] = e
            if isinstance(cache[path], ImageSkip):
                reason = cache[path].reason
                break
            images.append(cache[path])
        out.append((ex, images, reason))
        if reason is None:
            # byte-level BPE (RoBERTa vocabularies) marks a word start with its leading space: the target
            # continues the prompt's text, so it is encoded as " target" (sentencepiece/WordPiece add it)
            target = " " + ex.target if tok.model_type == "bpe-bytelevel" and ex.decoder else ex.target
            texts.extend([*ex.encoder, ex.decoder, target])
    ids = iter(tok.encode_batch(texts))
    results = []
    for ex, images, reason in out:
        if reason is not None:
            results.append((None, reason, (0, False)))
            continue
        segments = [next(ids) for _ in ex.encoder]
        prompt, target = next(ids), next(ids)
        if any(not s for s in segments):
            results.append((None, "empty_encoder_segment", (0, False)))
            continue
        if not target:
            results.append((None, "empty_target", (0, False)))
            continue
        n_cut = sum(len(s) > max_enc for s in segments)
        sample = {
            "key": ex.key,
            "dataset": ex.dataset,
            "template_id": ex.template_id,
            **join_images(images),
            "encoder_segments": [s[:max_enc] for s in segments],
            "decoder_prompt_ids": list(prompt),
            "target_ids": np.asarray(target[:max_tgt], dtype=np.int32),
            "target": ex.target,
            "answers": ex.answers,
            "choices": ex.choices,
            "label": ex.label,
            "question_id": ex.question_id,
            "image_id": ex.image_id,
        }
        results.append((sample, None, (n_cut, len(target) > max_tgt)))
    return results


def _valid_examples(reader, limit: int | None = None) -> Iterator[RawExample]:
    n = 0
    for raw in reader:
        if raw.skip is None:
            yield raw
            n += 1
            if limit is not None and n >= limit:
                return


def check_sources(readers: list, templates: TemplateSet) -> None:
    """Before anything is written: every dataset has templates, the first example of every input has
    every field its dataset's templates need, and images are found under the image root."""
    problems = []
    tfile = templates.path
    for reader in readers:
        src = f"input {reader.path}"
        tpls = templates.by_dataset.get(reader.dataset)
        if not tpls:
            problems.append(
                f"templates {tfile}: no templates for dataset '{reader.dataset}' ({src}); add them, or name "
                f"the input NAME=FILE with one of: {', '.join(sorted(templates.by_dataset))}"
            )
            continue
        probe = list(_valid_examples(reader, IMAGE_ROOT_PROBE))
        if not probe:
            continue
        first = probe[0]
        ctx = render_context(first.fields)
        for t in tpls:
            for name in t.required_fields():
                if name not in ctx:
                    problems.append(
                        f"templates {tfile}: dataset '{reader.dataset}' template {t.index} uses field "
                        f"'{name}', which {src} {first.where} does not have (its fields: "
                        f"{', '.join(sorted(first.fields)) or 'none'})"
                    )
        tried, found = [], False
        for raw in probe:
            tpl = next((t for t in tpls if t.images), None)
            if tpl is None:
                break
            try:
                values = tpl.render(render_context(raw.fields)).image_values
            except (MissingField, BadValue):
                continue
            paths = [resolve_image(reader.image_root, v) for v in values]
            tried.extend(paths)
            if any(p and Path(p).is_file() for p in paths):
                found = True
                break
        if tried and not found:
            fix = "--image-root (or --image-pattern for VQA)" if reader.format == "vqa" else "--image-root"
            problems.append(
                f"{src}: none of the images of its first {len(probe)} examples exist (e.g. {tried[0]}); "
                f"pass {fix}"
            )
    if problems:
        raise UserError(problems)


def _cap_rank(seed: int, dataset: str, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}|{dataset}|{key}".encode(), digest_size=8).digest()


def cap_thresholds(readers: list, cap: int, seed: int) -> dict[str, bytes]:
    """Per dataset with more than `cap` readable examples: the largest rank that is kept."""
    ranks: dict[str, list[bytes]] = {}
    for reader in readers:
        bucket = ranks.setdefault(reader.dataset, [])
        bucket.extend(_cap_rank(seed, reader.dataset, raw.key) for raw in _valid_examples(reader))
    return {ds: sorted(r)[cap - 1] for ds, r in ranks.items() if len(r) > cap}


@dataclass
class _Counts:
    samples: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"samples": self.samples, "skipped": dict(sorted(self.skipped.items()))}


def _chunks(items: Iterator[PendingExample], size: int) -> Iterator[list[PendingExample]]:
    chunk: list[PendingExample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _length_stats(total: int, n: int, longest: int, **extra) -> dict:
    return {"mean": round(total / max(n, 1), 3), "max": longest, **extra}


def build_tasks(cfg: TasksConfig) -> dict:
    """Run the whole step; returns the stats written to stats.json. UserError on bad input."""
    cfg.validate()
    check_output(cfg.output, cfg.force)
    templates = load_templates(cfg.templates)
    readers = open_task_sources(
        cfg.inputs,
        cfg.format,
        cfg.image_root,
        cfg.questions,
        cfg.annotations,
        cfg.image_patterns,
        cfg.coco_captions,
    )
    check_sources(readers, templates)
    tok = load_tokenizer(cfg.tokenizer)
    t0 = time.perf_counter()
    thresholds = cap_thresholds(readers, cfg.max_per_dataset, cfg.seed) if cfg.max_per_dataset else {}

    skipped: Counter = Counter()
    per_dataset: dict[str, dict] = {}
    per_source: dict[str, dict] = {}
    pending_src: deque[tuple[_Counts, dict]] = deque()  # per example sent to a worker, in order
    warned = Counter()

    def dataset_stats(name: str) -> dict:
        return per_dataset.setdefault(
            name, {"counts": _Counts(), "dropped_by_cap": 0, "templates": Counter()}
        )

    def count_skip(reason: str, src: _Counts, ds: dict) -> None:
        skipped[reason] += 1
        src.skipped[reason] += 1
        ds["counts"].skipped[reason] += 1

    def examples() -> Iterator[PendingExample]:
        for reader in readers:
            src = _Counts()
            per_source[str(reader.path)] = {"format": reader.format, "dataset": reader.dataset, "c": src}
            ds = dataset_stats(reader.dataset)
            limit = thresholds.get(reader.dataset)
            for raw in reader:
                if raw.skip:
                    count_skip(raw.skip, src, ds)
                    continue
                if limit is not None and _cap_rank(cfg.seed, reader.dataset, raw.key) > limit:
                    ds["dropped_by_cap"] += 1
                    continue
                try:
                    ex = prepare_example(raw, reader, templates, cfg.seed)
                except MissingField as e:
                    warned[reader.path] += 1
                    if warned[reader.path] <= 5:
                        log.warning(
                            "%s %s: no field '%s' (dataset '%s'); skipped and counted as missing_field",
                            reader.path,
                            raw.where,
                            e.field,
                            reader.dataset,
                        )
                    ex = "missing_field"
                if isinstance(ex, str):
                    count_skip(ex, src, ds)
                    continue
                pending_src.append((src, ds))
                yield ex

    samples = n_images = enc_tokens = n_segments = seg_max = seg_cut = 0
    prompt_tokens = prompt_max = tgt_tokens = tgt_max = tgt_cut = 0
    bar = tqdm(
        desc="tasks",
        unit="ex",
        file=sys.stderr,
        disable=not cfg.progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    initargs = (
        str(cfg.tokenizer),
        cfg.image_size,
        cfg.jpeg_quality,
        cfg.max_encoder_tokens,
        cfg.max_target_tokens,
    )
    with staged_output(cfg.output, cfg.force) as tmp:
        # closing(): on Ctrl-C or an error the workers are stopped at once, not at garbage collection
        mapped = ordered_map(process_chunk, _chunks(examples(), CHUNK), cfg.workers, _init_worker, initargs)
        with (
            closing(mapped),
            MDSWriter(
                out=str(tmp), columns=TASK_COLUMNS, hashes=SHARD_HASHES, size_limit=cfg.shard_size_limit
            ) as writer,
        ):
            for results in mapped:
                for sample, reason, (n_cut, cut_target) in results:
                    src, ds = pending_src.popleft()
                    if sample is None:
                        count_skip(reason, src, ds)
                        continue
                    writer.write(sample)
                    samples += 1
                    src.samples += 1
                    ds["counts"].samples += 1
                    ds["templates"][sample["template_id"]] += 1
                    n_images += len(sample["image_sizes"])
                    lens = [len(s) for s in sample["encoder_segments"]]
                    enc_tokens += sum(lens)
                    n_segments += len(lens)
                    seg_max = max([seg_max, *lens])
                    seg_cut += n_cut
                    prompt_tokens += len(sample["decoder_prompt_ids"])
                    prompt_max = max(prompt_max, len(sample["decoder_prompt_ids"]))
                    tgt_tokens += len(sample["target_ids"])
                    tgt_max = max(tgt_max, len(sample["target_ids"]))
                    tgt_cut += cut_target
                bar.update(len(results))
        bar.close()
        if samples == 0:
            raise UserError(
                f"tasks: no usable examples in {', '.join(str(r.path) for r in readers)} "
                f"(skipped: {dict(skipped) or 'nothing read'})"
            )
        stats = {
            "kind": "tasks",
            "tokenizer": {**tok.summary(), "path": str(cfg.tokenizer.absolute())},
            **(
                {"image_size": cfg.image_size, "image_encoding": "jpeg", "jpeg_quality": cfg.jpeg_quality}
                if n_images
                else {}
            ),
            "samples": samples,
            "images": n_images,
            "tokens": enc_tokens + prompt_tokens + tgt_tokens,
            "encoder_tokens": _length_stats(
                enc_tokens,
                n_segments,
                seg_max,
                segments=n_segments,
                truncated=seg_cut,
                limit=cfg.max_encoder_tokens,
            ),
            "decoder_prompt_tokens": _length_stats(prompt_tokens, samples, prompt_max),
            "target_tokens": _length_stats(
                tgt_tokens, samples, tgt_max, truncated=tgt_cut, limit=cfg.max_target_tokens
            ),
            "skipped": dict(sorted(skipped.items())),
            "datasets": {
                name: {
                    **v["counts"].as_dict(),
                    "dropped_by_cap": v["dropped_by_cap"],
                    "templates": {str(k): n for k, n in sorted(v["templates"].items())},
                }
                for name, v in per_dataset.items()
            },
            "sources": {
                k: {"format": v["format"], "dataset": v["dataset"], **v["c"].as_dict()}
                for k, v in per_source.items()
            },
            "templates": templates.summary(),
            "seed": cfg.seed,
            "max_per_dataset": cfg.max_per_dataset,
        }
        write_stats(tmp, stats)
    dt = time.perf_counter() - t0
    log.info(
        "tasks: %d examples (%d images, %d tokens) from %d dataset(s), skipped %s, in %.1f s -> %s",
        samples,
        n_images,
        stats["tokens"],
        len(per_dataset),
        dict(skipped) or "none",
        dt,
        cfg.output,
    )
    return stats
