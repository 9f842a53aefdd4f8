"""Task example sources: JSONL task files, VQA v2 question + annotation files, COCO captions.

Every reader is built (and validated: a bad whole input is a UserError before anything is written)
from one input, knows its dataset name (the template set it uses) and yields `RawExample`s in a
deterministic order, each with a `key` unique within the run and a `where` for messages.

Fields each format gives the templates:
- jsonl: the line's own fields (arbitrary). Image fields (`image` str or `images` list) are paths
  relative to the image root; `choices` (list of str) and `label` (int index, or one of the choices)
  are used for scoring; `answers` (list of str) are kept as references; `question_id`/`image_id` ints.
- vqa: question, question_id, image_id, image (resolved path), answer (= multiple_choice_answer),
  answers (the annotators' answers, usually 10), question_type, answer_type.
- coco: caption, captions (all captions of the image), image (resolved path), image_id, id
  (the annotation id); `answers` = all captions of the image (the references for scoring).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from data_prep.pair_readers import CocoReader
from data_prep.text_sources import open_lines

INPUT_FORMATS = ("auto", "jsonl", "coco", "vqa")
DEFAULT_VQA_PATTERNS = ("COCO_{split}_{image_id:012d}.jpg", "{image_id}.jpg")
_SPLIT_SUFFIX = re.compile(r"[-_.](train|training|val|valid|validation|dev|test)$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class RawExample:
    key: str  # unique within the run: "<input file name>:<position>"
    where: str  # for messages: "line 12", "question_id 458752000", "annotation 37"
    fields: dict | None = None
    skip: str | None = None  # reason, when the reader already knows the example is bad


def parse_input(spec: str) -> tuple[str | None, Path]:
    """`NAME=FILE` -> (NAME, FILE); a plain `FILE` (or one that exists with a `=` in it) -> (None, FILE)."""
    name, eq, rest = spec.partition("=")
    if eq and _NAME.match(name) and not Path(spec).exists():
        return name, Path(rest)
    return None, Path(spec)


def default_dataset_name(path: Path) -> str:
    """File stem without .jsonl[.zst]/.json and a trailing split (_train, -val, ...): mnli_train.jsonl -> mnli."""
    stem = path.name
    for suffix in (".jsonl.zst", ".jsonl", ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return _SPLIT_SUFFIX.sub("", stem) or stem


def resolve_image(root: Path, value) -> str:
    """An image field value (path relative to the root, or absolute) as a path string."""
    return str(root / value) if isinstance(value, str) and value else ""


def _load_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path}: not valid JSON ({e})") from e


def _image_root(root: Path | None, path: Path, what: str) -> Path:
    root = root if root is not None else path.parent
    if not root.is_dir():
        raise UserError(f"{what} {path}: image root {root} is not a folder; pass --image-root")
    return root


class JsonlTaskReader:
    """One example per line, arbitrary fields (see the module docstring)."""

    format = "jsonl"

    def __init__(self, path: Path, dataset: str, image_root: Path | None):
        self.path, self.dataset = path, dataset
        if not path.is_file():
            raise UserError(f"tasks input {path}: no such file")
        self.image_root = image_root if image_root is not None else path.parent
        try:
            first = next((line for line in open_lines(path) if line.strip()), None)
            obj = json.loads(first) if first is not None else {}
        except (ValueError, UnicodeDecodeError, OSError) as e:
            raise UserError(f"tasks input {path}: cannot be read as JSONL ({e})") from e
        if not isinstance(obj, dict):
            raise UserError(
                f"tasks input {path}: JSONL lines must be objects, the first is {type(obj).__name__}"
            )

    def __iter__(self) -> Iterator[RawExample]:
        name = self.path.name
        for line_no, line in enumerate(open_lines(self.path), start=1):
            if not line.strip():
                continue
            key, where = f"{name}:{line_no}", f"line {line_no}"
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                obj = None
            if not isinstance(obj, dict):
                yield RawExample(key, where, skip="bad_record")
            else:
                yield RawExample(key, where, obj)


class VqaReader:
    """VQA v2: a questions file (`questions` list, `data_subtype`) + an annotations file, joined
    on question_id. Image file names: the first of `patterns` that exists under the image root
    (`{split}` = the questions file's data_subtype, e.g. val2014; `{image_id}` an int)."""

    format = "vqa"

    def __init__(
        self,
        questions: Path,
        annotations: Path | None,
        dataset: str,
        image_root: Path | None,
        patterns: list[str] | None = None,
    ):
        self.path, self.dataset = questions, dataset
        if annotations is None:
            raise UserError(f"VQA questions {questions}: pass --annotations (the targets come from it)")
        q = _load_json(questions, "VQA questions")
        a = _load_json(annotations, "VQA annotations")
        if not isinstance(q, dict) or not isinstance(q.get("questions"), list):
            raise UserError(
                f"VQA questions {questions}: not a VQA v2 questions file (needs a `questions` list)"
            )
        if not isinstance(a, dict) or not isinstance(a.get("annotations"), list):
            raise UserError(
                f"VQA annotations {annotations}: not a VQA v2 annotations file (needs an `annotations` list)"
            )
        self.questions = q["questions"]
        self.annotations = {ann.get("question_id"): ann for ann in a["annotations"] if isinstance(ann, dict)}
        self.split = str(q.get("data_subtype") or a.get("data_subtype") or "")
        self.image_root = _image_root(image_root, questions, "VQA questions")
        self.patterns = list(patterns or DEFAULT_VQA_PATTERNS)
        for p in self.patterns:
            try:
                p.format(split=self.split, image_id=0)
            except (KeyError, IndexError, ValueError) as e:
                raise UserError(
                    f"--image-pattern {p!r}: use the fields {{split}} and {{image_id}} only ({e})"
                ) from e
        self._paths: dict[int, str] = {}

    def image_path(self, image_id: int) -> str:
        """The first pattern's file that exists (the first pattern's name if none does)."""
        if image_id not in self._paths:
            names = [p.format(split=self.split, image_id=image_id) for p in self.patterns]
            found = next((n for n in names if (self.image_root / n).is_file()), names[0])
            self._paths[image_id] = str(self.image_root / found)
        return self._paths[image_id]

    def __iter__(self) -> Iterator[RawExample]:
        name = self.path.name
        for n, q in enumerate(self.questions):
            qid = q.get("question_id") if isinstance(q, dict) else None
            key = f"{name}:q{qid}" if isinstance(qid, int) else f"{name}:#{n}"
            where = f"question_id {qid}" if isinstance(qid, int) else f"question #{n}"
            if (
                not isinstance(qid, int)
                or not isinstance(q.get("image_id"), int)
                or not isinstance(q.get("question"), str)
            ):
                yield RawExample(key, where, skip="bad_record")
                continue
            ann = self.annotations.get(qid)
            if ann is None:
                yield RawExample(key, where, skip="missing_annotation")
                continue
            answers = [a.get("answer") for a in ann.get("answers") or [] if isinstance(a, dict)]
            fields = {
                "question": q["question"],
                "question_id": qid,
                "image_id": q["image_id"],
                "image": self.image_path(q["image_id"]),
                "answer": ann.get("multiple_choice_answer"),
                "answers": [x for x in answers if isinstance(x, str)],
                "question_type": ann.get("question_type"),
                "answer_type": ann.get("answer_type"),
            }
            yield RawExample(key, where, fields)


class CocoTaskReader:
    """COCO captions JSON + image folder: one example per caption (`all`) or per image (`first`)."""

    format = "coco"

    def __init__(self, path: Path, dataset: str, image_root: Path | None, captions: str = "all"):
        self.path, self.dataset = path, dataset
        try:
            coco = CocoReader(path, image_root, captions)  # validates the file and the image root
        except UserError as e:
            raise UserError(str(e).replace("pairs input", "tasks input", 1)) from e
        self.images, self.annotations = coco.images, coco.annotations
        self.image_root, self.captions_mode = coco.image_root, captions

    def __iter__(self) -> Iterator[RawExample]:
        name = self.path.name
        by_image: dict[object, list[dict]] = {}
        for ann in self.annotations:
            if isinstance(ann, dict) and isinstance(ann.get("caption"), str):
                by_image.setdefault(ann.get("image_id"), []).append(ann)
        for n, img in enumerate(self.images):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                yield RawExample(f"{name}:#{n}", f"images[{n}]", skip="bad_record")
                continue
            anns = by_image.get(img["id"], [])
            if not anns:
                yield RawExample(f"{name}:{img['id']}", f"image id {img['id']}", skip="missing_caption")
                continue
            captions = [a["caption"] for a in anns]
            for ann in anns[:1] if self.captions_mode == "first" else anns:
                fields = {
                    "caption": ann["caption"],
                    "captions": captions,
                    "answers": captions,
                    "image": str(self.image_root / img["file_name"]),
                    "image_id": img["id"],
                    "id": ann.get("id"),
                }
                yield RawExample(f"{name}:{img['id']}_{ann.get('id')}", f"annotation {ann.get('id')}", fields)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.zst")):
        return "jsonl"
    if name.endswith(".json"):
        return "coco"
    raise UserError(
        f"tasks input {path}: cannot tell its format from the name (.jsonl, .jsonl.zst: task "
        "examples; .json: COCO captions); pass --format jsonl|coco, or --questions/--annotations for VQA"
    )


def open_task_sources(
    inputs: list[str],
    fmt: str = "auto",
    image_root: Path | None = None,
    questions: str | None = None,
    annotations: Path | None = None,
    image_patterns: list[str] | None = None,
    coco_captions: str = "all",
) -> list:
    """Readers for every input, all validated up front (UserError listing every problem)."""
    if fmt not in INPUT_FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(INPUT_FORMATS)}")
    readers, problems = [], []
    if fmt == "vqa" and questions is None:
        problems.append("--format vqa: pass --questions Q.json --annotations A.json (and --image-root)")
    for spec in inputs:
        name, path = parse_input(spec)
        try:
            if not path.exists():
                raise UserError(f"tasks input {path}: no such file")
            kind = detect_format(path) if fmt in ("auto", "vqa") else fmt
            if kind == "jsonl":
                readers.append(JsonlTaskReader(path, name or default_dataset_name(path), image_root))
            else:
                readers.append(CocoTaskReader(path, name or "coco_caption", image_root, coco_captions))
        except UserError as e:
            problems.append(str(e))
    if questions is not None:
        name, path = parse_input(questions)
        try:
            readers.append(VqaReader(path, annotations, name or "vqa", image_root, image_patterns))
        except UserError as e:
            problems.append(str(e))
    elif annotations is not None:
        problems.append("--annotations given without --questions")
    if problems:
        raise UserError(problems)
    if not readers:
        raise UserError("tasks: no input given (--input FILE... and/or --questions/--annotations)")
    return readers
