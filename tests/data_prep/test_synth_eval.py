"""`synth`'s held-out eval sets (COCO captions, VQA v2) and finetuning task files."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.synth import COLOURS, COLUMNS, ROWS, SIZES, synth
from data_prep.task_synth import QUESTIONS, VQA_SPLIT

KIND_OF_QUESTION = {text: kind for kind, (text, _) in QUESTIONS.items()}
# Bounding-box width of each shape as a fraction of its size's extent (see synth.draw_shape).
SHAPE_WIDTH = {"circle": 1.0, "square": 0.85, "triangle": 1.0, "diamond": 1.0, "cross": 1.0}


def _canonical(spec: dict, kind: str) -> str:
    if kind == "position":
        return f"{spec['row']} {spec['column']}"
    return spec[kind]


def _seen_in_pixels(path: Path, shape: str) -> dict:
    """Colour, grid cell and size read back from the image itself (not from any metadata)."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    dist = np.linalg.norm(255.0 - a, axis=-1)
    mask = dist > 0.5 * dist.max()
    ys, xs = np.nonzero(mask)
    colour = min(COLOURS, key=lambda c: np.linalg.norm(a[mask].mean(0) - COLOURS[c]))
    n = a.shape[0]
    cy, cx = (ys.min() + ys.max() + 1) / 2 / n, (xs.min() + xs.max() + 1) / 2 / n
    width = (xs.max() - xs.min() + 1) / n / SHAPE_WIDTH[shape]
    size = min(SIZES, key=lambda s: abs(SIZES[s] - width))
    return {
        "colour": colour,
        "row": ROWS[min(2, int(cy * 3))],
        "column": COLUMNS[min(2, int(cx * 3))],
        "size": size,
    }


def _specs(folder: Path) -> dict:
    return json.loads((folder / "image_specs.json").read_text())


def test_files_exist_and_parse_in_their_formats(raw_data):
    cap = json.loads((raw_data / "eval" / "caption" / "captions.json").read_text())
    assert len(cap["images"]) == 64 and len(cap["annotations"]) == 3 * 64
    for img in cap["images"]:
        assert {"id", "file_name", "width", "height"} <= set(img)
        assert (raw_data / "eval" / "caption" / "images" / img["file_name"]).is_file()
    assert all({"id", "image_id", "caption"} <= set(a) for a in cap["annotations"])
    assert len({a["id"] for a in cap["annotations"]}) == len(cap["annotations"])

    vqa = raw_data / "eval" / "vqa"
    q, a = (
        json.loads((vqa / "questions.json").read_text()),
        json.loads((vqa / "annotations.json").read_text()),
    )
    assert q["data_subtype"] == a["data_subtype"] == VQA_SPLIT
    assert {x["question_id"] for x in q["questions"]} == {x["question_id"] for x in a["annotations"]}
    per_image = {}
    for x in q["questions"]:
        per_image.setdefault(x["image_id"], []).append(x["question"])
        assert x["question"] in KIND_OF_QUESTION
        assert (vqa / "images" / f"COCO_{VQA_SPLIT}_{x['image_id']:012d}.jpg").is_file()
    assert len(per_image) == 64 and all(
        2 <= len(v) <= 4 and len(set(v)) == len(v) for v in per_image.values()
    )
    for ann in a["annotations"]:
        assert ann["answer_type"] == "other" and ann["question_type"]
        assert len(ann["answers"]) == 10 and [x["answer_id"] for x in ann["answers"]] == list(range(1, 11))

    rows = [
        json.loads(line) for line in (raw_data / "tasks" / "shapes_vqa_train.jsonl").read_text().splitlines()
    ]
    assert len(rows) >= 2 * 256 and all({"image", "question", "answer"} <= set(r) for r in rows)
    assert all((raw_data / "tasks" / r["image"]).is_file() for r in rows)
    for split, n in (("train", 1000), ("val", 200)):
        text = (raw_data / "tasks" / f"shapes_text_{split}.jsonl").read_text().splitlines()
        assert len(text) == n
    assert "Summarize this image:" in (raw_data / "tasks" / "tokenizer_text.txt").read_text()


def test_answers_follow_from_the_image(raw_data):
    cap_dir, vqa_dir, task_dir = raw_data / "eval" / "caption", raw_data / "eval" / "vqa", raw_data / "tasks"
    # The ground-truth specs are what the pixels show.
    for folder in (cap_dir, vqa_dir, task_dir):
        for name, spec in _specs(folder).items():
            seen = _seen_in_pixels(folder / "images" / name, spec["shape"])
            assert seen == {k: spec[k] for k in seen}, (folder, name)

    specs = _specs(cap_dir)
    cap = json.loads((cap_dir / "captions.json").read_text())
    file_of = {img["id"]: img["file_name"] for img in cap["images"]}
    refs = {}
    for ann in cap["annotations"]:
        refs.setdefault(ann["image_id"], []).append(ann["caption"])
    for image_id, captions in refs.items():
        s = specs[file_of[image_id]]
        assert captions[0] == f"{s['size']} {s['colour']} {s['shape']} {s['row']} {s['column']}"
        assert all(s["colour"] in c and s["shape"] in c and s["row"] in c for c in captions)

    specs = _specs(vqa_dir)
    questions = {
        x["question_id"]: x for x in json.loads((vqa_dir / "questions.json").read_text())["questions"]
    }
    for ann in json.loads((vqa_dir / "annotations.json").read_text())["annotations"]:
        q = questions[ann["question_id"]]
        spec = specs[f"COCO_{VQA_SPLIT}_{q['image_id']:012d}.jpg"]
        kind = KIND_OF_QUESTION[q["question"]]
        want = _canonical(spec, kind)
        assert ann["multiple_choice_answer"] == want and ann["question_type"] == QUESTIONS[kind][1]
        assert sum(x["answer"] == want for x in ann["answers"]) >= 8

    specs = _specs(task_dir)
    for line in (task_dir / "shapes_vqa_train.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["answer"] == _canonical(specs[Path(r["image"]).name], KIND_OF_QUESTION[r["question"]])

    pairs = {}
    for split in ("train", "val"):
        for line in (task_dir / f"shapes_text_{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            s, hyp = r["spec"], r["hypothesis"]
            claim = (
                hyp.removeprefix("the shape is at the ")
                .removeprefix("the shape is ")
                .removeprefix("it is a ")
            )
            truth = claim in (s["colour"], s["size"], s["shape"], f"{s['row']} {s['column']}")
            assert r["answer"] == ("yes" if truth else "no") == r["choices"][r["label"]], r
            assert s["colour"] in r["premise"] and s["shape"] in r["premise"]
            pairs.setdefault(split, set()).add((r["premise"], hyp))
    assert not pairs["train"] & pairs["val"]  # held-out examples are not training examples


def test_held_out_images_are_not_training_images(raw_data):
    tar_keys, tar_images = set(), set()
    for tar_path in (raw_data / "pairs").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    tar_keys.add(m.name[:-4])
                    tar_images.add(tar.extractfile(m).read())
    cap = json.loads((raw_data / "eval" / "caption" / "captions.json").read_text())
    q = json.loads((raw_data / "eval" / "vqa" / "questions.json").read_text())
    rows = [json.loads(x) for x in (raw_data / "tasks" / "shapes_vqa_train.jsonl").read_text().splitlines()]
    ids = {
        "caption": {img["id"] for img in cap["images"]},
        "vqa": {x["image_id"] for x in q["questions"]},
        "task": {r["image_id"] for r in rows},
    }
    for a in ids:
        assert not {str(i) for i in ids[a]} & tar_keys
        for b in ids:
            assert a == b or not ids[a] & ids[b], (a, b)
    task_images = {p.read_bytes() for p in (raw_data / "tasks" / "images").glob("*.jpg")}
    for folder in ("caption", "vqa"):
        held_out = {p.read_bytes() for p in (raw_data / "eval" / folder / "images").glob("*.jpg")}
        assert len(held_out) == 64 and not held_out & (tar_images | task_images)


def test_existing_outputs_unchanged_and_new_ones_deterministic(tmp_path):
    kw = dict(num_images=6, num_val_images=2, image_size=32, num_docs=4, num_val_docs=2, seed=5, per_tar=4)
    synth(tmp_path / "plain", num_eval_images=0, num_task_images=0, **kw)
    synth(tmp_path / "a", num_eval_images=5, num_task_images=7, **kw)
    synth(tmp_path / "b", num_eval_images=5, num_task_images=7, **kw)
    plain = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file())
    assert [str(p.parent) for p in plain] == ["pairs"] * 3 + ["text"] * 2
    for f in plain:
        assert (tmp_path / "plain" / f).read_bytes() == (tmp_path / "a" / f).read_bytes(), f
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == len(plain) + (5 + 5 + 7) + 3 + 3 + 3 + 1  # images, eval JSON, JSONL, specs, text
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # A re-run with fewer images leaves no stale ones behind.
    synth(tmp_path / "a", num_eval_images=3, num_task_images=2, **kw)
    assert len(list((tmp_path / "a" / "eval" / "vqa" / "images").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "a" / "tasks" / "images").glob("*.jpg"))) == 2


@pytest.mark.parametrize("flag", ["--num-eval-images", "--num-task-images"])
def test_negative_counts_are_user_errors(tmp_path, flag):
    from data_prep.cli import main

    assert main(["synth", "--output", str(tmp_path / "o"), "--num-images", "2", flag, "-1"]) == 2
