"""`python -m evaluation generate`: JSONL examples in, JSONL predictions out (see `evaluation/cli.py`).

Input line (one JSON object per line; blank lines are skipped):
    {"image": "img/1.jpg", "encoder": ["Question: what is on the table?"], "prompt": "Answer:", "id": 7}
- `prompt` (string, may be empty): decoder text right before the answer; required;
- `encoder` (list of strings, optional): each string is one segment read by the language encoder;
- `image` (a path) or `images` (a list of paths), optional: relative paths are relative to the JSONL file;
- any other field (ids for the scorer: `image_id`, `question_id`, ...) is copied to the output line.
A demonstrations file (`--demos`) has the same fields plus `label` (the answer text); every example
gets all of them, in file order, laid out as `--demo-style` says (evaluation/generate.py).

Output line, in input order: the copied fields plus {"index", "prediction", "tokens", "score", "finished"}
(`score`: summed log-probability / length ** length_penalty). Written by global rank 0, atomically.

Everything is validated before the model is built: files, JSON, field types, every image decodes, every
prefix fits the model's length; all problems are reported at once as `FILE:LINE: problem`.

Parallelism: one process, or torchrun with N processes: TP = --tp (default N); N / TP data-parallel
replicas split the examples and rank 0 gathers the predictions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from evaluation.inputs import Problems

log = logging.getLogger(__name__)

INPUT_FIELDS = ("image", "images", "encoder", "prompt")


@dataclass
class Record:
    """One validated JSONL line (text not yet tokenized, images as resolved paths)."""

    where: str  # FILE:LINE, for messages
    images: list[Path]
    encoder: list[str]
    prompt: str
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields copied to the output


def _check_image(path: Path) -> str | None:
    """None if the image decodes, else the reason."""
    from data_prep.images import ImageSkip, decode_image

    try:
        decode_image(path.read_bytes())
    except ImageSkip as e:
        return str(e)
    except OSError as e:
        return e.strerror or str(e)
    return None


def read_records(path: str | Path, what: str, problems: Problems, *, labels: bool = False) -> list[Record]:
    """Parse and check a JSONL file of examples (or demonstrations with `labels`); problems are collected."""
    path = Path(path)
    if not path.is_file():
        problems.add(
            f"{what} file {path} does not exist" if not path.exists() else f"{what} {path} is not a file"
        )
        return []
    out: list[Record] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.add(f"cannot read {what} file {path}: {e}")
        return []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.add(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.add(f"{where}: a line must be a JSON object, got {type(obj).__name__}")
            continue
        line_problems: list[str] = []
        fail = line_problems.append

        prompt = obj.get("prompt")
        if prompt is None:
            fail('missing "prompt" (the decoder text before the answer; "" for none)')
        elif not isinstance(prompt, str):
            fail(f'"prompt" must be a string, got {type(prompt).__name__}')
        encoder = obj.get("encoder", [])
        if isinstance(encoder, str):
            fail('"encoder" must be a list of strings (one per encoder segment), e.g. ["..."]')
        elif not isinstance(encoder, list) or not all(isinstance(s, str) for s in encoder):
            fail('"encoder" must be a list of strings')
        if "image" in obj and "images" in obj:
            fail('give "image" or "images", not both')
        paths = obj.get("images", [obj["image"]] if "image" in obj else [])
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            fail('"image" must be a path string and "images" a list of path strings')
            paths = []
        images = []
        for p in paths:
            img = Path(p) if os.path.isabs(p) else path.parent / p
            if not img.is_file():
                fail(f"image {img} does not exist")
                continue
            reason = _check_image(img)
            if reason:
                fail(f"image {img} cannot be decoded ({reason})")
            images.append(img)
        label = obj.get("label")
        if labels and (not isinstance(label, str) or not label.strip()):
            fail('a demonstration needs a non-empty "label" string (its answer)')
        if not line_problems and not images and not any(s.strip() for s in encoder) and not prompt.strip():
            fail('empty example: give an "image", "encoder" text or a "prompt"')
        for msg in line_problems:
            problems.add(f"{where}: {msg}")
        if line_problems:
            continue
        extra = {k: v for k, v in obj.items() if k not in INPUT_FIELDS + (("label",) if labels else ())}
        out.append(Record(where, images, list(encoder), prompt, label if labels else None, extra))
    if not out and not problems:
        problems.add(f"{what} file {path} holds no examples")
    return out


class ExampleBuilder:
    """Records -> `Example`s / `Demonstration`s: tokenized text, images decoded at the model's resolution."""

    def __init__(self, tokenizer, train_cfg):
        from training.data.loader import RowSpec

        self.tok = tokenizer
        self.spec = RowSpec.from_configs(train_cfg.data, train_cfg.model)

    def image(self, path: Path):
        from data_prep.images import decode_image, resize_center_crop
        from training.data.loader import decode_image as normalize

        img = resize_center_crop(decode_image(path.read_bytes()), self.spec.image_size)
        return normalize(img, self.spec)

    def example(self, rec: Record, *, load_images: bool = True, placeholder=None):
        from evaluation.generate import Example

        images = [self.image(p) if load_images else placeholder for p in rec.images]
        return Example(images, [self.tok.encode(s) for s in rec.encoder], self.tok.encode(rec.prompt))

    def demonstration(self, rec: Record):
        from evaluation.generate import Demonstration

        return Demonstration(self.example(rec), self.tok.encode(rec.label))


def run(args) -> dict | None:
    """The `generate` command: returns the summary (global rank 0) or None (other ranks)."""
    from common.process_setup import setup_process

    setup_process()
    # the inputs first (no torch yet): a bad file fails in a second, before any model is built
    problems = Problems()
    for name in ("num_beams", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            problems.add(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tp is not None and args.tp < 1:
        problems.add(f"--tp must be >= 1, got {args.tp}")
    if not Path(args.model).exists():
        problems.add(f"--model {args.model} does not exist (an exported .safetensors or a checkpoint folder)")
    if args.tokenizer and not Path(args.tokenizer).is_dir():
        problems.add(f"--tokenizer {args.tokenizer} is not a folder")
    out_path = Path(args.output)
    if out_path.resolve() == Path(args.input).resolve():
        problems.add(f"--output {out_path} is the input file: write the predictions elsewhere")
    records = read_records(args.input, "--input", problems)
    demo_records = read_records(args.demos, "--demos", problems, labels=True) if args.demos else []
    problems.raise_if_any()
    # libraries print notices on stdout (DeepSpeed's accelerator line): keep stdout for the result JSON
    with contextlib.redirect_stdout(sys.stderr):
        return _run_model(args, records, demo_records, out_path)


def _run_model(args, records: list[Record], demo_records: list[Record], out_path: Path) -> dict | None:
    import time

    import torch
    import torch.distributed as dist

    from evaluation.generate import Demonstration, generate_hypotheses, prefix_row
    from evaluation.model_io import load_model, resolve_source, source_config, source_tokenizer
    from parallel import destroy_distributed

    src = resolve_source(args.model)
    train_cfg = source_config(src)
    tok = source_tokenizer(src, args.tokenizer, train_cfg)
    builder = ExampleBuilder(tok, train_cfg)
    # every prefix must fit: checked on the token ids (images stand in as placeholders, same length)
    problems = Problems()
    placeholder = torch.zeros(3, 1, 1)
    demos_light = [
        Demonstration(builder.example(r, load_images=False, placeholder=placeholder), tok.encode(r.label))
        for r in demo_records
    ]
    for rec in records:
        try:
            prefix_row(
                builder.example(rec, load_images=False, placeholder=placeholder),
                demos_light,
                args.demo_style,
                model_config=train_cfg.model,
            )
        except UserError as e:
            problems.add(f"{rec.where}: {e}")
    problems.raise_if_any()

    model, _, _ = load_model(src, args.tp, tokenizer=args.tokenizer, dtype=_dtype(args.dtype))
    topo = model.topology
    try:
        demos = [builder.demonstration(r) for r in demo_records]
        mine = list(range(topo.dp_rank, len(records), topo.dp_size))
        t0 = time.monotonic()
        results: dict[int, Any] = {}
        for i in range(0, len(mine), args.batch_size):
            idx = mine[i : i + args.batch_size]
            hyps = generate_hypotheses(
                model,
                [builder.example(records[j]) for j in idx],
                demonstrations=demos,
                demo_style=args.demo_style,
                max_new_tokens=args.max_new_tokens,
                num_beams=args.num_beams,
                length_penalty=args.length_penalty,
                batch_size=args.batch_size,
                vocab_limit=tok.vocab_size,
            )
            results.update({j: (h.tokens, h.score, h.finished) for j, h in zip(idx, hyps)})
        if topo.world_size > 1:
            gathered: list[dict] = [None] * topo.world_size  # type: ignore[list-item]
            dist.all_gather_object(gathered, results, group=topo.world_group)
            for part in gathered:
                results.update(part)
        seconds = time.monotonic() - t0
        if topo.rank != 0:
            return None
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for j, rec in enumerate(records):
                tokens, score, finished = results[j]
                line = {**rec.extra, "index": j, "prediction": tok.decode(tokens), "tokens": tokens}
                line.update(score=score, finished=finished)
                f.write(json.dumps(line) + "\n")
        os.replace(tmp, out_path)
        log.info("wrote %d predictions to %s in %.1fs", len(records), out_path, seconds)
        return {
            "output": str(out_path),
            "num_examples": len(records),
            "num_demonstrations": len(demos),
            "demo_style": args.demo_style,
            "num_beams": args.num_beams,
            "tp": topo.tp_size,
            "dp": topo.dp_size,
            "seconds": round(seconds, 3),
        }
    finally:
        destroy_distributed()


def _dtype(name: str):
    import torch

    return {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
