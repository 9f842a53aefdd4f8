"""Synthetic held-out evaluation sets and finetuning tasks, from the shape generator of `synth`.

Written under the synth output folder, all seeded, each set from its own RNG stream:

  eval/caption/images/synth-caption-NNNNNN.jpg + captions.json   COCO captions format: `images`
      [{id, file_name, width, height}], `annotations` [{id, image_id, caption}], 3 references per
      image ("large red circle top left", "a large red circle in the top left", ...)
  eval/vqa/images/COCO_synthval_NNNNNNNNNNNN.jpg + questions.json + annotations.json   VQA v2 format
      (data_subtype "synthval", so `tasks`' default image name pattern finds the images); 2-4
      questions per image from QUESTIONS, 10 annotator answers each (8-10 of them the canonical one)
  tasks/images/shapes-vqa-NNNNNN.jpg + shapes_vqa_train.jsonl   {image, question, answer,
      question_id, image_id} on training images, for finetuning
  tasks/shapes_text_{train,val}.jsonl   a text-only entailment task, {premise, hypothesis,
      choices: ["yes", "no"], label, answer}: does a shape description entail a claim about it?
  tasks/tokenizer_text.txt   the default templates (templates/default.yaml) rendered on the training
      task rows, one example per line: pass it to `data_prep tokenizer --input` too, so the prompt
      words and punctuation ("Summarize", ":", "?") are in the vocabulary
  */image_specs.json   image file name -> {size, colour, shape, row, column}: the ground truth

Held out: image ids are caption eval 700001.., VQA eval 800001.., VQA finetuning 500001.. (the
tars use 9-digit string keys), so held-out and training keys never coincide. Contents are kept
apart too: an image identical to an earlier one of its own set is drawn again, and so is an eval
image identical to a pretraining (pairs tar) or finetuning image. That does happen: medium and
large shapes near the edges are pinned in place (no jitter left), so ~30% of random specs give one
fixed image. The eval sets therefore also depend on the training images.
The text task's val examples exclude every (premise, hypothesis) pair of its train file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

from data_prep.synth import COLOURS, COLUMNS, ROWS, SHAPES, SIZES, ShapeSpec, draw_shape, random_spec

CAPTION_ID_BASE, VQA_ID_BASE, TASK_ID_BASE = 700_000, 800_000, 500_000
VQA_SPLIT = "synthval"
MAX_REDRAWS = 100  # per held-out image, to avoid one identical to a training image

# question kind -> (question, VQA question_type)
QUESTIONS = {
    "colour": ("what colour is the shape?", "what colour is the"),
    "position": ("where is the shape?", "where is the"),
    "shape": ("what shape is it?", "what shape is"),
    "size": ("how big is the shape?", "how big is the"),
}
# A few annotators give another word for the same thing (or a neighbouring size).
_SHAPE_VARIANTS = {
    "circle": "round",
    "square": "box",
    "triangle": "triangle",
    "diamond": "rhombus",
    "cross": "plus",
}
_SIZE_VARIANTS = {"small": "medium", "medium": "small", "large": "big"}


def position(spec: ShapeSpec) -> str:
    return f"{ROWS[spec.row]} {COLUMNS[spec.col]}"


def answer(spec: ShapeSpec, kind: str) -> str:
    """The canonical answer to QUESTIONS[kind] about an image of `spec`."""
    return {
        "colour": spec.colour,
        "position": position(spec),
        "shape": spec.shape,
        "size": spec.size,
    }[kind]


def _variant(spec: ShapeSpec, kind: str) -> str:
    return {
        "colour": f"dark {spec.colour}",
        "position": f"in the {position(spec)}",
        "shape": _SHAPE_VARIANTS[spec.shape],
        "size": _SIZE_VARIANTS[spec.size],
    }[kind]


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def reference_captions(spec: ShapeSpec) -> list[str]:
    return [
        spec.caption,
        f"{_a(spec.size)} {spec.colour} {spec.shape} in the {position(spec)}",
        f"{_a(spec.colour)} {spec.shape}, {spec.size}, at the {position(spec)} of the image",
    ]


def spec_dict(spec: ShapeSpec) -> dict:
    return {
        "size": spec.size,
        "colour": spec.colour,
        "shape": spec.shape,
        "row": ROWS[spec.row],
        "column": COLUMNS[spec.col],
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write_atomic(path, json.dumps(obj) + "\n")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _digest(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def training_image_digests(tars: list[Path]) -> set[bytes]:
    """sha1 of every .jpg in the pretraining tars."""
    out = set()
    for path in tars:
        with tarfile.open(path) as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".jpg"):
                    out.add(_digest(tar.extractfile(m).read()))
    return out


def _draw_images(
    folder: Path, names: list[str], px: int, rng: random.Random, exclude: set[bytes] = frozenset()
) -> tuple[dict[str, ShapeSpec], set[bytes]]:
    """Draw one random shape per name into folder/name (JPEG); old *.jpg there are removed first.
    An image identical to one in `exclude` or to one drawn before is drawn again: medium and large
    shapes near the edges are pinned in place (no jitter left), so the same spec can give the same
    pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.jpg"):
        stale.unlink()  # a previous run with more images must not leave extra files
    specs, digests = {}, set()
    for name in names:
        for _ in range(MAX_REDRAWS):
            spec = random_spec(rng)
            buf = io.BytesIO()
            draw_shape(spec, px, rng).save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
            if _digest(data) not in exclude and _digest(data) not in digests:
                break
        (folder / name).write_bytes(data)
        specs[name] = spec
        digests.add(_digest(data))
    return specs, digests


def _specs_file(path: Path, specs: dict[str, ShapeSpec]) -> None:
    _write_json(path, {name: spec_dict(s) for name, s in specs.items()})


def _vqa_answers(spec: ShapeSpec, kind: str, rng: random.Random) -> list[str]:
    """10 annotator answers: the canonical one, with 0-2 replaced by a variant."""
    answers = [answer(spec, kind)] * 10
    for i in rng.sample(range(10), rng.choice((0, 0, 1, 1, 2))):
        answers[i] = _variant(spec, kind)
    return answers


def write_caption_eval(out: Path, n: int, px: int, rng: random.Random, exclude: set[bytes]) -> None:
    ids = [CAPTION_ID_BASE + i for i in range(1, n + 1)]
    names = [f"synth-caption-{i:06d}.jpg" for i in ids]
    specs, _ = _draw_images(out / "images", names, px, rng, exclude)
    images, anns = [], []
    for image_id, name in zip(ids, names):
        images.append({"id": image_id, "file_name": name, "width": px, "height": px})
        for caption in reference_captions(specs[name]):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "caption": caption})
    info = {"description": "synthetic shapes, held-out captioning set (data_prep synth)", "version": "1"}
    _write_json(out / "captions.json", {"info": info, "licenses": [], "images": images, "annotations": anns})
    _specs_file(out / "image_specs.json", specs)


def _questions_for(rng: random.Random) -> list[str]:
    kinds = list(QUESTIONS)
    return sorted(rng.sample(kinds, rng.randint(2, 4)), key=kinds.index)


def write_vqa_eval(out: Path, n: int, px: int, rng: random.Random, exclude: set[bytes]) -> None:
    ids = [VQA_ID_BASE + i for i in range(1, n + 1)]
    names = [f"COCO_{VQA_SPLIT}_{i:012d}.jpg" for i in ids]
    specs, _ = _draw_images(out / "images", names, px, rng, exclude)
    questions, anns = [], []
    for image_id, name in zip(ids, names):
        spec = specs[name]
        for kind in _questions_for(rng):
            qid = image_id * 10 + list(QUESTIONS).index(kind)
            text, qtype = QUESTIONS[kind]
            questions.append({"image_id": image_id, "question": text, "question_id": qid})
            anns.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "question_type": qtype,
                    "answer_type": "other",
                    "multiple_choice_answer": answer(spec, kind),
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                        for k, a in enumerate(_vqa_answers(spec, kind, rng))
                    ],
                }
            )
    common = {
        "info": {"description": "synthetic shapes, held-out VQA set (data_prep synth)", "version": "1"},
        "license": {},
        "data_type": "synthetic_shapes",
        "data_subtype": VQA_SPLIT,
    }
    _write_json(out / "questions.json", {**common, "task_type": "Open-Ended", "questions": questions})
    _write_json(out / "annotations.json", {**common, "annotations": anns})
    _specs_file(out / "image_specs.json", specs)


def write_vqa_task(
    out: Path, n: int, px: int, rng: random.Random
) -> tuple[list[dict], dict[str, ShapeSpec], set[bytes]]:
    ids = [TASK_ID_BASE + i for i in range(1, n + 1)]
    names = [f"shapes-vqa-{i:06d}.jpg" for i in ids]
    specs, digests = _draw_images(out / "images", names, px, rng)
    rows = []
    for image_id, name in zip(ids, names):
        spec = specs[name]
        for kind in _questions_for(rng):
            rows.append(
                {
                    "image": f"images/{name}",
                    "question": QUESTIONS[kind][0],
                    "answer": answer(spec, kind),
                    "question_id": image_id * 10 + list(QUESTIONS).index(kind),
                    "image_id": image_id,
                }
            )
    _write_jsonl(out / "shapes_vqa_train.jsonl", rows)
    _specs_file(out / "image_specs.json", specs)
    return rows, specs, digests


def write_tokenizer_text(path: Path, rows: dict[str, list[dict]]) -> None:
    """Each row rendered with every default template of its dataset, one line per rendering."""
    from data_prep.task_templates import DEFAULT_TEMPLATES, load_templates, render_context

    templates = load_templates(DEFAULT_TEMPLATES)
    lines = []
    for dataset, items in rows.items():
        for row in items:
            for t in templates.by_dataset.get(dataset, []):
                r = t.render(render_context(row))
                lines.append(" ".join(x for x in (*r.encoder, r.decoder, r.target) if x))
    _write_atomic(path, "\n".join(lines) + "\n")


_PREMISES = (
    "the {size} {colour} {shape} is at the {pos}",
    "there is a {size} {colour} {shape} in the {pos}",
    "{a_colour} {shape} of {size} size sits at the {pos}",
)
_CLAIMS = {
    "colour": ("the shape is {v}", lambda s: s.colour, list(COLOURS)),
    "shape": ("it is a {v}", lambda s: s.shape, list(SHAPES)),
    "size": ("the shape is {v}", lambda s: s.size, list(SIZES)),
    "position": (
        "the shape is at the {v}",
        lambda s: position(s),
        [f"{r} {c}" for r in ROWS for c in COLUMNS],
    ),
}


def shape_entailment(rng: random.Random) -> dict:
    """One {premise, hypothesis, choices, label, answer} example; true and false claims 50/50."""
    spec = random_spec(rng)
    premise = rng.choice(_PREMISES).format(
        size=spec.size, colour=spec.colour, a_colour=_a(spec.colour), shape=spec.shape, pos=position(spec)
    )
    text, truth, values = _CLAIMS[rng.choice(list(_CLAIMS))]
    holds = rng.random() < 0.5
    value = truth(spec) if holds else rng.choice([v for v in values if v != truth(spec)])
    return {
        "premise": premise,
        "hypothesis": text.format(v=value),
        "choices": ["yes", "no"],
        "label": 0 if holds else 1,
        "answer": "yes" if holds else "no",
        "spec": spec_dict(spec),
    }


def text_task_examples(n: int, rng: random.Random, exclude: set | None = None) -> list[dict]:
    """n examples, none with a (premise, hypothesis) pair in `exclude` (held-out sets exclude train)."""
    rows = []
    while len(rows) < n:
        row = shape_entailment(rng)
        if not exclude or (row["premise"], row["hypothesis"]) not in exclude:
            rows.append(row)
    return rows


def write_eval_and_tasks(
    output: Path,
    image_size: int,
    seed: int,
    num_eval_images: int = 64,
    num_task_images: int = 256,
    num_text_train: int = 1000,
    num_text_val: int = 200,
    pairs_tars: list[Path] = (),
) -> dict:
    """Write what the module docstring describes under `output` (0 images: skip that part).
    No eval image is identical to an image of `pairs_tars` or of the finetuning tasks."""
    written: dict[str, list[str]] = {"eval": [], "tasks": []}
    task_digests: set[bytes] = set()
    if num_task_images:
        tasks_dir = output / "tasks"
        tasks_dir.mkdir(parents=True, exist_ok=True)
        vqa_rows, specs, task_digests = write_vqa_task(
            tasks_dir, num_task_images, image_size, random.Random(f"{seed}-task-vqa")
        )
        train = text_task_examples(num_text_train, random.Random(f"{seed}-task-text-train"))
        seen = {(r["premise"], r["hypothesis"]) for r in train}
        val = text_task_examples(num_text_val, random.Random(f"{seed}-task-text-val"), exclude=seen)
        _write_jsonl(tasks_dir / "shapes_text_train.jsonl", train)
        _write_jsonl(tasks_dir / "shapes_text_val.jsonl", val)
        captions = [{"caption": s.caption, "image": name} for name, s in specs.items()]
        write_tokenizer_text(
            tasks_dir / "tokenizer_text.txt",
            {"shapes_vqa": vqa_rows, "vqa": vqa_rows, "shapes_text": train, "coco_caption": captions},
        )
        written["tasks"] = [
            str(tasks_dir / f)
            for f in ("shapes_vqa_train.jsonl", "shapes_text_train.jsonl", "shapes_text_val.jsonl")
        ]
    if num_eval_images:
        exclude = training_image_digests(list(pairs_tars)) | task_digests
        caption_dir, vqa_dir = output / "eval" / "caption", output / "eval" / "vqa"
        caption_dir.mkdir(parents=True, exist_ok=True)
        vqa_dir.mkdir(parents=True, exist_ok=True)
        rng = random.Random(f"{seed}-eval-caption")
        write_caption_eval(caption_dir, num_eval_images, image_size, rng, exclude)
        write_vqa_eval(vqa_dir, num_eval_images, image_size, random.Random(f"{seed}-eval-vqa"), exclude)
        written["eval"] = [str(caption_dir / "captions.json"), str(vqa_dir / "questions.json")]
    return written
