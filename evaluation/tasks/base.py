"""What every task kind shares: examples as rendered records, seeded demonstrations, the data-parallel split.

A task goes through three phases, in this order, so that bad inputs fail before any model is built:
1. `load(problems)`: read and check the files (no tokenizer, no torch), render the prompts of every
   example and demonstration, draw each example's demonstrations;
2. `check_fit(tokenizer, train_cfg, problems)`: every prefix (demonstrations included) fits the model;
3. `predict(runner)` on every rank -> this rank's predictions, gathered by the harness; rank 0 writes them
   (`write_predictions`) and `score`s the file, the same code `python -m evaluation score` runs.

Prompts: `encoder` (one encoder segment per string), `prompt` (decoder text before the answer) and `label`
(a demonstration's answer) are Python format strings over an example's fields (each kind names them).
Demonstrations: with num_shots = k, each example draws k records of the pool with
`random.Random(f"{seed}:{example key}")` (independent of `limit`, of the order and of the data-parallel
split); an example never gets itself as a demonstration when the pool is the evaluated split.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.generate_cli import Record
from evaluation.harness_config import HarnessConfig, TaskConfig
from evaluation.inputs import Problems


@dataclass
class Item:
    """One example (or demonstration) before rendering: its id, fields and image files."""

    key: Any  # image_id, question_id or line number: predictions are keyed by it
    where: str  # "FILE, image_id 42" or "FILE:LINE", for messages
    fields: dict[str, Any]
    images: list[Path] = field(default_factory=list)


@dataclass
class Runner:
    """What `predict` needs: the model in this process's TP layout, its tokenizer, an ExampleBuilder."""

    model: Any
    tokenizer: Any
    builder: Any  # evaluation.generate_cli.ExampleBuilder
    topology: Any


class Task:
    """Base class of the task kinds (evaluation/tasks/<kind>.py)."""

    kind = ""
    default_encoder: list[str] = []
    default_prompt = ""
    default_label = ""
    generative = False  # uses max_new_tokens / num_beams / length_penalty

    def __init__(self, cfg: TaskConfig, harness: HarnessConfig):
        self.cfg = cfg
        self.harness = harness
        self.items: list[Item] = []  # the evaluated examples (after `limit`)
        self.records: list[Record] = []  # rendered, one per item
        self.demos: list[list[Record]] = []  # each item's demonstrations

    @property
    def name(self) -> str:
        return self.cfg.name

    def path(self, p: str) -> Path:
        return self.harness.path(p)

    # ---- phase 1: inputs ------------------------------------------------------------------------
    def read(self, files, problems: Problems, *, demos: bool) -> list[Item]:
        """The items of `files` (the data or the demonstration pool); problems are collected."""
        raise NotImplementedError

    def same_source(self) -> bool:
        """Is the demonstration pool the evaluated split itself (then an example never demonstrates itself)?"""
        d, p = self.cfg.data, self.cfg.demos
        pairs = [(d.annotations, p.annotations), (d.questions, p.questions), (d.path, p.path)]
        return any(a and b and self.path(a).resolve() == self.path(b).resolve() for a, b in pairs)

    def load(self, problems: Problems) -> None:
        items = self.read(self.cfg.data, problems, demos=False)
        if self.cfg.limit:
            items = items[: self.cfg.limit]
        self.items = items
        check_images(items, problems)
        self.records = [self.render(it, problems) for it in items]
        if self.cfg.num_shots > 0:
            pool = self.read(self.cfg.demos, problems, demos=True)
            drawn = self.draw_demos(pool, problems)
            used = {id(it): it for demos in drawn for it in demos}  # only the drawn images are checked
            check_images(list(used.values()), problems)
            rendered = {i: self.render(it, problems, label=True) for i, it in used.items()}
            self.demos = [[rendered[id(it)] for it in demos] for demos in drawn]
        else:
            self.demos = [[] for _ in items]
        if not items and not problems:
            problems.add(f"task {self.name}: no examples to evaluate in {self.describe_data()}")

    def describe_data(self) -> str:
        d = self.cfg.data
        return ", ".join(str(self.path(p)) for p in (d.questions, d.annotations, d.path) if p)

    def render(self, item: Item, problems: Problems, *, label: bool = False) -> Record:
        """The item's encoder texts, prompt (and label) from the task's format strings."""
        cfg = self.cfg
        encoder = cfg.encoder if cfg.encoder is not None else self.default_encoder
        prompt = cfg.prompt if cfg.prompt is not None else self.default_prompt
        texts = [self._format(f, item, "encoder", problems) for f in encoder]
        rec = Record(item.where, list(item.images), texts, self._format(prompt, item, "prompt", problems))
        if label:
            rec.label = self._format(
                cfg.label if cfg.label is not None else self.default_label, item, "label", problems
            )
            if not rec.label.strip():
                problems.add(f"task {self.name}: {item.where}: the demonstration's label is empty")
        rec.extra = {"key": item.key}
        return rec

    def _format(self, fmt: str, item: Item, what: str, problems: Problems) -> str:
        try:
            return fmt.format(**item.fields)
        except KeyError as e:
            problems.add(
                f"task {self.name}: {item.where}: {what} {fmt!r} names the field {e.args[0]!r}, which this "
                f"example does not have (fields: {', '.join(sorted(item.fields))})"
            )
        except (IndexError, ValueError, AttributeError, TypeError) as e:
            problems.add(f"task {self.name}: {item.where}: {what} {fmt!r} cannot be formatted ({e})")
        return ""

    def draw_demos(self, pool: list[Item], problems: Problems) -> list[list[Item]]:
        k = self.cfg.num_shots
        exclude_self = self.same_source()
        if len(pool) < k + int(exclude_self):
            problems.add(
                f"task {self.name}: num_shots={k} but the demonstration pool has {len(pool)} example(s)"
                + (" (one of them is the example itself)" if exclude_self else "")
            )
            return [[] for _ in self.items]
        out = []
        for it in self.items:
            rng = random.Random(f"{self.cfg.seed}:{it.key}")
            picks = rng.sample(range(len(pool)), k + int(exclude_self))  # one spare: the example itself
            out.append([pool[i] for i in picks if not (exclude_self and pool[i].key == it.key)][:k])
        return out

    # ---- phase 2: lengths -----------------------------------------------------------------------
    def check_fit(self, tokenizer, train_cfg, problems: Problems) -> None:
        """Every example's prefix with its demonstrations fits model.max_seq_len (placeholder images)."""
        import torch

        from common.errors import UserError
        from evaluation.generate import Demonstration, prefix_row
        from evaluation.generate_cli import ExampleBuilder

        builder = ExampleBuilder(tokenizer, train_cfg)
        placeholder = torch.zeros(3, 1, 1)
        room = 1 if self.generative else 0
        for rec, demos in zip(self.records, self.demos):
            ex = builder.example(rec, load_images=False, placeholder=placeholder)
            ds = [
                Demonstration(
                    builder.example(d, load_images=False, placeholder=placeholder), tokenizer.encode(d.label)
                )
                for d in demos
            ]
            try:
                for target in self.fit_targets(rec, tokenizer):
                    row = prefix_row(ex, ds, self.cfg.demo_style, model_config=train_cfg.model, target=target)
                    if len(row.seq) - 1 + room > train_cfg.model.max_seq_len:
                        raise UserError(
                            f"its prefix needs {len(row.seq) - 1} decoder positions, leaving no room to "
                            f"generate in model.max_seq_len={train_cfg.model.max_seq_len}"
                        )
            except UserError as e:
                problems.add(f"task {self.name}: {rec.where}: {e}")
                if self.cfg.num_shots:
                    problems.add(
                        f"task {self.name}: lower num_shots (now {self.cfg.num_shots}) or shorten the prompts"
                    )
                return

    def fit_targets(self, rec: Record, tokenizer) -> list[list[int]]:
        """Continuations that must fit after the prefix (the choices of a multiple-choice example)."""
        return [[]]

    # ---- phase 3: the model ---------------------------------------------------------------------
    def predict(self, runner: Runner) -> dict[int, Any]:
        """This data-parallel rank's predictions, by item index (every rank must call it)."""
        raise NotImplementedError

    def write_predictions(self, predictions: dict[int, Any], path: Path) -> None:
        raise NotImplementedError

    def score(self, path: Path) -> tuple[dict[str, float], dict]:
        """(metrics for MLflow: name -> number, details) from a predictions file."""
        raise NotImplementedError

    def num_examples(self) -> int:
        return len(self.items)

    # ---- shared model-side helpers --------------------------------------------------------------
    def generate_texts(self, runner: Runner) -> dict[int, dict]:
        """Greedy / beam generation of every item of this rank's share: {index: {text, tokens, finished}}."""
        from evaluation.generate import generate_hypotheses

        cfg, b, tok = self.cfg, runner.builder, runner.tokenizer
        out: dict[int, dict] = {}
        for chunk in batches(dp_share(len(self.records), runner.topology), cfg.batch_size):
            idx = [i if i is not None else 0 for i in chunk]  # padding: every DP rank makes the same calls
            examples = [b.example(self.records[i]) for i in idx]
            demos = [[b.demonstration(d) for d in self.demos[i]] for i in idx] if cfg.num_shots else None
            hyps = generate_hypotheses(
                runner.model,
                examples,
                demonstrations=demos,
                demo_style=cfg.demo_style,
                max_new_tokens=cfg.max_new_tokens,
                num_beams=cfg.num_beams,
                length_penalty=cfg.length_penalty,
                batch_size=len(idx),
                vocab_limit=tok.vocab_size,
            )
            for i, h in zip(chunk, hyps):
                if i is not None:
                    out[i] = {
                        "text": tok.decode(h.tokens).strip(),
                        "tokens": h.tokens,
                        "finished": h.finished,
                    }
        return out


# ---- input helpers ---------------------------------------------------------------------------------
def read_json(path: Path, what: str, problems: Problems) -> Any:
    """A parsed JSON file, or None after adding the problem (missing file, not JSON) naming the file."""
    from common.errors import UserError
    from evaluation.inputs import load_json

    try:
        return load_json(path, what)
    except UserError as e:
        problems.add(str(e))
        return None


def read_jsonl(path: Path, what: str, problems: Problems) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line; a bad line is a problem naming FILE:LINE."""
    import json

    if not path.is_file():
        problems.add(
            f"{what} file {path} does not exist" if not path.exists() else f"{what} {path} is not a file"
        )
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.add(f"cannot read {what} file {path}: {e}")
        return []
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.add(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.add(f"{path}:{n}: a line must be a JSON object, got {type(obj).__name__}")
            continue
        out.append((n, obj))
    return out


def jsonl_items(path: Path, what: str, problems: Problems, *, images: bool) -> list[Item]:
    """Items of a JSONL file: key = line number, fields = the object; with `images`, its "image" (a path
    relative to the file, or absolute) is the example's image."""
    out = []
    for n, obj in read_jsonl(path, what, problems):
        where = f"{path}:{n}"
        paths: list[Path] = []
        if images:
            img = obj.get("image")
            if not isinstance(img, str) or not img:
                problems.add(f'{where}: needs an "image" (a path relative to the file)')
                continue
            paths = [Path(img) if Path(img).is_absolute() else path.parent / img]
        out.append(Item(n, where, dict(obj), paths))
    return out


def check_images(items: list[Item], problems: Problems) -> None:
    """Every image of `items` exists and its header reads as an image."""
    from PIL import Image, UnidentifiedImageError

    for it in items:
        for p in it.images:
            if not p.is_file():
                problems.add(f"{it.where}: image {p} does not exist")
                continue
            try:
                with Image.open(p) as img:
                    img.size  # noqa: B018 - the header is parsed here
            except (UnidentifiedImageError, OSError) as e:
                problems.add(f"{it.where}: image {p} cannot be read as an image ({type(e).__name__})")


# ---- data parallel ---------------------------------------------------------------------------------
def dp_share(n: int, topology) -> list[int | None]:
    """This DP rank's item indices (strided), padded with None to ceil(n / dp) so that every DP rank makes
    the same model calls with the same batch sizes (under ZeRO-3 every module call is a collective)."""
    dp, r = topology.dp_size, topology.dp_rank
    per = math.ceil(n / dp) if n else 0
    return [i if i < n else None for i in (r + k * dp for k in range(per))]


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def gather(local: dict[int, Any], topology) -> dict[int, Any]:
    """Every rank's predictions merged (all ranks get all of them; TP ranks hold identical copies)."""
    if topology.world_size == 1:
        return dict(local)
    import torch.distributed as dist

    parts: list[dict] = [None] * topology.world_size  # type: ignore[list-item]
    dist.all_gather_object(parts, local, group=topology.world_group)
    out: dict[int, Any] = {}
    for part in parts:
        out.update(part)
    return out
