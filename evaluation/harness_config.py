"""EVAL.yaml: the benchmark harness's typed configuration (`python -m evaluation run`, `eval.harness`).

    cfg = load_eval_config("configs/eval/shapes.yaml", ["root=/data/demo_out", "tasks.shapes_vqa.limit=8"])

Built with the project's one config engine (`training.config.loader`: YAML + dotted overrides, unknown
keys named with the closest known one, every problem reported at once as one UserError). Precedence:
command line > file > defaults. A task is addressed in an override by its index (`tasks.0.limit=8`) or
by its name (`tasks.shapes_vqa.limit=8`). Relative paths of the tasks are relative to `root`.

    root: demo_out                     # base folder of the tasks' relative paths ('' = current directory)
    tasks:
      - name: shapes_vqa               # MLflow: eval/shapes_vqa/<metric>; predictions: shapes_vqa.json
        kind: vqa                      # caption | vqa | multiple_choice | perplexity
        data: {questions: raw/eval/vqa/questions.json, annotations: raw/eval/vqa/annotations.json,
               images: raw/eval/vqa/images}
        demos: {path: raw/tasks/shapes_vqa_train.jsonl}   # the pool k-shot demonstrations are drawn from
        num_shots: 2
        limit: 32

Each field's meaning is the comment beside it; `evaluation/tasks/` says what each kind reads and reports.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.errors import UserError
from training.config import loader as config_io

TASK_KINDS = ("caption", "vqa", "multiple_choice", "perplexity")
GENERATIVE_KINDS = ("caption", "vqa")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a task name is part of MLflow metric keys and file names


@dataclass
class TaskFiles:
    """Where a set of examples is: the evaluated split (`data`) or the demonstration pool (`demos`)."""

    annotations: str = ""  # caption: COCO captions JSON (images + annotations); vqa: VQA v2 annotations JSON
    questions: str = ""  # vqa: VQA v2 questions JSON (its data_subtype names the image files)
    images: str = ""  # caption, vqa: folder of the image files the JSON files name
    image_name: str = ""  # vqa: image file name format over {image_id}, {data_subtype} ('' = COCO's name)
    path: str = ""  # multiple_choice: JSONL; perplexity: text shard folder; caption/vqa demos: JSONL records

    def given(self) -> bool:
        return any((self.annotations, self.questions, self.images, self.path))


@dataclass
class TaskConfig:
    """One benchmark: what to read, how to prompt the model, how to decode."""

    name: str = ""  # unique task name: MLflow metrics eval/<name>/<metric>, predictions file <name>.json
    kind: str = ""  # caption | vqa | multiple_choice | perplexity (required; evaluation/tasks/ says more)
    data: TaskFiles = field(default_factory=TaskFiles)  # the evaluated examples
    demos: TaskFiles = field(default_factory=TaskFiles)  # k-shot pool (a train split): same layout or JSONL
    encoder: list[str] | None = None  # encoder segments, format strings over the fields (null: kind's)
    prompt: str | None = None  # decoder prompt right before the answer, a format string (null: kind's)
    label: str | None = None  # a demonstration's answer, a format string (null: the kind's default)
    choices_field: str = "choices"  # multiple_choice: field with the list of choice strings
    label_field: str = "label"  # multiple_choice: field with the index of the correct choice
    num_shots: int = 0  # in-context demonstrations per example (0 = zero-shot), drawn from `demos`
    demo_style: Literal["encoder", "decoder"] = "encoder"  # demo inputs via the encoder (paper) / decoder
    seed: int = 1234  # seed of the demonstration draw (each example draws its own, keyed by its id)
    max_new_tokens: int = 20  # caption, vqa: longest generated answer in tokens (also stops at </s>)
    num_beams: int = 1  # caption, vqa: 1 = greedy, else beam search
    length_penalty: float = 1.0  # beam score = summed log-prob / length ** this (fairseq's rule)
    batch_size: int = 16  # examples per generate call / sequences per forward, per data-parallel rank
    limit: int = 0  # evaluate only the first N examples in file order (0 = all)
    span_sampling: bool = False  # perplexity: spans as training samples them (true) or no spans (false)


@dataclass
class EvalTrackingConfig:
    """Where `python -m evaluation run` logs eval/<task>/<metric> (global rank 0; failures only warn)."""

    enabled: bool = True  # log to MLflow
    uri: str = ""  # tracking URI ('' = the model's training run's: its tracking.uri or the default store)
    experiment: str = ""  # experiment of a NEW run ('' = the training run's experiment)
    run_name: str = ""  # name of a NEW run ('' = eval-<model folder or file name>)


@dataclass
class HarnessConfig:
    """An EVAL.yaml: the tasks and where results go."""

    root: str = ""  # base folder of the tasks' relative paths ('' = the current directory)
    tasks: list[TaskConfig] = field(default_factory=list)  # the benchmarks, run in this order
    tracking: EvalTrackingConfig = field(default_factory=EvalTrackingConfig)  # MLflow (CLI runs)

    def path(self, p: str) -> Path:
        """A task path resolved against `root` (absolute paths stay as they are)."""
        q = Path(p).expanduser()
        return q if q.is_absolute() or not self.root else Path(self.root).expanduser() / q

    def to_dict(self) -> dict:
        return config_io.to_dict(self)


# ---- checks -----------------------------------------------------------------------------------------
def _format_fields(fmt: str, where: str, problems: list[str]) -> None:
    try:
        list(string.Formatter().parse(fmt))
    except ValueError as e:
        problems.append(
            f"{where}: {fmt!r} is not a valid format string ({e}); write literal braces as {{{{ }}}}"
        )


def _task_problems(t: TaskConfig, where: str) -> list[str]:
    p: list[str] = []
    if t.kind not in TASK_KINDS:
        close = difflib.get_close_matches(t.kind, TASK_KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [f"{where}.kind={t.kind!r}: use one of {', '.join(TASK_KINDS)}{hint}"]
    d, demos = t.data, t.demos
    need = {
        "caption": [("annotations", d.annotations), ("images", d.images)],
        "vqa": [("questions", d.questions), ("annotations", d.annotations), ("images", d.images)],
        "multiple_choice": [("path", d.path)],
        "perplexity": [("path", d.path)],
    }[t.kind]
    for key, value in need:
        if not value:
            p.append(f"{where}.data.{key}: required for kind {t.kind}")
    for name in ("max_new_tokens", "num_beams", "batch_size"):
        if getattr(t, name) < 1:
            p.append(f"{where}.{name}: must be >= 1, got {getattr(t, name)}")
    for name in ("num_shots", "limit"):
        if getattr(t, name) < 0:
            p.append(f"{where}.{name}: must be >= 0, got {getattr(t, name)}")
    if t.kind == "perplexity":
        if t.num_shots or demos.given():
            p.append(f"{where}: kind perplexity takes no demonstrations (num_shots, demos)")
    elif t.num_shots > 0 and not demos.given():
        p.append(f"{where}.num_shots={t.num_shots} needs a demonstration pool: set {where}.demos")
    if t.kind in ("caption", "vqa") and demos.path and (demos.annotations or demos.questions):
        p.append(f"{where}.demos: give a JSONL `path` or the {t.kind} JSON files, not both")
    for key in ("encoder", "prompt", "label"):
        value = getattr(t, key)
        for i, fmt in enumerate(value if isinstance(value, list) else [value] if value is not None else []):
            _format_fields(fmt, f"{where}.{key}" + (f".{i}" if isinstance(value, list) else ""), p)
    return p


def harness_problems(cfg: HarnessConfig) -> list[str]:
    """Every problem with an EVAL.yaml that can be found without reading its data files."""
    p: list[str] = []
    if not cfg.tasks:
        p.append("tasks: the list is empty; add at least one task (see configs/eval/shapes.yaml)")
    seen: dict[str, int] = {}
    for i, t in enumerate(cfg.tasks):
        where = f"tasks.{i}"
        if not t.name:
            p.append(f"{where}.name: every task needs a name (MLflow metrics are eval/<name>/<metric>)")
        elif not _NAME.match(t.name):
            p.append(f"{where}.name={t.name!r}: use letters, digits, '_', '-' and '.' only")
        elif t.name in seen:
            p.append(f"{where}.name={t.name!r}: also the name of tasks.{seen[t.name]}; names must be unique")
        else:
            seen[t.name] = i
        p += _task_problems(t, f"{where} ({t.name})" if t.name else where)
    return p


# ---- loading ----------------------------------------------------------------------------------------
def _by_name(overrides: list[str], raw: dict) -> list[str]:
    """`tasks.NAME.key=v` -> `tasks.INDEX.key=v` for the task names of the file."""
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    names = {
        t.get("name"): i
        for i, t in enumerate(tasks or [])
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    }
    out = []
    for item in overrides:
        parts = item.split(".", 2)
        if len(parts) == 3 and parts[0] == "tasks" and not parts[1].isdigit():
            if parts[1] not in names:
                known = ", ".join(sorted(names)) or "none"
                raise UserError(f"override {item!r}: no task named {parts[1]!r} (tasks: {known})")
            item = f"tasks.{names[parts[1]]}.{parts[2]}"
        out.append(item)
    return out


def eval_config_from_dict(raw: dict) -> HarnessConfig:
    """Build, type-check and check an EVAL config from a nested dict; one UserError with every problem."""
    problems: list[str] = []
    cfg = config_io.build(HarnessConfig, raw, "", problems)
    if not problems:
        problems += harness_problems(cfg)
    if problems:
        raise UserError(problems)
    return cfg


def load_eval_config(path: str | Path | None, overrides: list[str] | None = None) -> HarnessConfig:
    """EVAL.yaml (optional) + dotted overrides -> HarnessConfig (UserError naming every problem)."""
    raw = config_io.load_yaml(path) if path else {}
    over = config_io.parse_overrides(_by_name(list(overrides or []), raw))
    try:
        return eval_config_from_dict(config_io.deep_merge(raw, over))
    except UserError as e:
        raise UserError(f"eval config {path or '<overrides>'}:\n{e}") from None
