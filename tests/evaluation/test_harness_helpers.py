"""Tiny benchmark data for the harness tests (builders imported by tests/evaluation/test_harness*.py), and
the harness's model-free parts: the EVAL config (shipped files, overrides, every problem at once), the
data-parallel split, seeded demonstrations, and input validation that names file and id."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from common.errors import UserError
from evaluation.harness_config import HarnessConfig, load_eval_config
from evaluation.inputs import Problems
from tests.paths import CONFIGS

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (240, 240, 20)}


def _image(path: Path, colour: str, size: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (32, 32), (250, 250, 250))
    m = 8 if size == "small" else 2
    img.paste(COLOURS[colour], (m, m, 32 - m, 32 - m))
    img.save(path, format="JPEG", quality=90)


def write_eval_data(root: Path, tokenizer=None) -> Path:
    """root/: caption/ (COCO captions, 4 images), vqa/ (VQA v2, 4 images x 2 questions, split 'tiny'),
    vqa_train.jsonl (+ images), mc.jsonl / mc_train.jsonl (premise/hypothesis/choices/label), and with a
    tokenizer text/ (MDS text shards). Returns root."""
    root.mkdir(parents=True, exist_ok=True)
    specs = [("red", "small"), ("blue", "large"), ("green", "small"), ("yellow", "large")]
    images, anns = [], []
    for i, (c, s) in enumerate(specs, start=1):
        name = f"img_{i}.jpg"
        _image(root / "caption" / "images" / name, c, s)
        images.append({"id": i, "file_name": name})
        anns += [{"image_id": i, "caption": f"a {s} {c} square"}, {"image_id": i, "caption": f"a {c} square"}]
    (root / "caption" / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    questions, answers = [], []
    for i, (c, s) in enumerate(specs, start=1):
        _image(root / "vqa" / "images" / f"COCO_tiny_{i:012d}.jpg", c, s)
        for k, (q, a, qt) in enumerate(
            [("what colour is the square?", c, "what colour"), ("how big is the square?", s, "how big")]
        ):
            qid = i * 10 + k
            questions.append({"question_id": qid, "image_id": i, "question": q})
            answers.append(
                {
                    "question_id": qid,
                    "image_id": i,
                    "question_type": qt,
                    "answer_type": "other" if k == 0 else "size",
                    "multiple_choice_answer": a,
                    "answers": [{"answer": a, "answer_id": j + 1} for j in range(10)],
                }
            )
    (root / "vqa" / "questions.json").write_text(json.dumps({"data_subtype": "tiny", "questions": questions}))
    (root / "vqa" / "annotations.json").write_text(json.dumps({"annotations": answers}))
    train = []
    for i, (c, s) in enumerate([("green", "large"), ("red", "large"), ("blue", "small")], start=1):
        _image(root / "train_images" / f"t{i}.jpg", c, s)
        train.append(
            {"image": f"train_images/t{i}.jpg", "question": "what colour is the square?", "answer": c}
        )
    (root / "vqa_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    rng = random.Random(0)
    for name, n in (("mc.jsonl", 6), ("mc_train.jsonl", 4)):
        rows = []
        for _ in range(n):
            c, s = rng.choice(list(COLOURS)), rng.choice(["small", "large"])
            claim = rng.choice(list(COLOURS))
            rows.append(
                {
                    "premise": f"a {s} {c} square",
                    "hypothesis": f"the square is {claim}",
                    "choices": ["yes", "no"],
                    "label": 0 if claim == c else 1,
                }
            )
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if tokenizer is not None:
        from tests.training.shards import write_text

        write_text(root / "text", tokenizer, 6, seq_len=32, seed=5)
    return root


EVAL_TASKS = [
    {
        "name": "cap",
        "kind": "caption",
        "data": {"annotations": "caption/captions.json", "images": "caption/images"},
        "encoder": [],
        "prompt": "",
        "max_new_tokens": 4,
    },
    {
        "name": "vqa",
        "kind": "vqa",
        "data": {
            "questions": "vqa/questions.json",
            "annotations": "vqa/annotations.json",
            "images": "vqa/images",
        },
        "max_new_tokens": 3,
        "batch_size": 3,
    },
    {
        "name": "vqa_1shot",
        "kind": "vqa",
        "data": {
            "questions": "vqa/questions.json",
            "annotations": "vqa/annotations.json",
            "images": "vqa/images",
        },
        "demos": {"path": "vqa_train.jsonl"},
        "num_shots": 1,
        "num_beams": 2,
        "max_new_tokens": 3,
    },
    {
        "name": "mc",
        "kind": "multiple_choice",
        "data": {"path": "mc.jsonl"},
        "demos": {"path": "mc_train.jsonl"},
        "num_shots": 1,
        "encoder": ["Premise: {premise}", "Hypothesis: {hypothesis}"],
        "prompt": "Label:",
        "batch_size": 4,
    },
    {"name": "ppl", "kind": "perplexity", "data": {"path": "text"}, "batch_size": 4},
]


def write_eval_config(path: Path, root: Path, tasks: list[dict] | None = None, **extra) -> Path:
    path.write_text(
        yaml.safe_dump({"root": str(root), "tasks": tasks or EVAL_TASKS, **extra}, sort_keys=False)
    )
    return path


def write_train_config(path: Path, tokenizer_dir: Path, run_dir: Path) -> Path:
    """The training config of an untrained debug MetaLM on the tiny tokenizer (for `--model init`)."""
    from training.config import TrainingConfig
    from training.model import model_config_from_preset

    cfg = TrainingConfig(model=model_config_from_preset("debug", vocab_size=64, init_std=0.2))
    cfg.data.tokenizer = str(tokenizer_dir)
    cfg.train.run_dir = str(run_dir)
    cfg.tracking.uri = f"sqlite:///{run_dir.parent / 'mlflow.db'}"
    path.write_text(cfg.to_yaml())
    return path


# ---- model-free tests -------------------------------------------------------------------------------
EVAL_CONFIGS = sorted(CONFIGS.glob("eval/*.yaml"))


def test_shipped_eval_configs_parse():
    assert {p.name for p in EVAL_CONFIGS} >= {"shapes.yaml", "coco-vqa.yaml"}
    for p in EVAL_CONFIGS:
        cfg = load_eval_config(p)
        assert cfg.tasks and len({t.name for t in cfg.tasks}) == len(cfg.tasks)
    shapes = load_eval_config(CONFIGS / "eval" / "shapes.yaml")
    assert {t.kind for t in shapes.tasks} == {"caption", "vqa", "multiple_choice", "perplexity"}


def test_overrides_by_index_and_name_and_all_problems_at_once(tmp_path):
    f = write_eval_config(tmp_path / "e.yaml", tmp_path)
    cfg = load_eval_config(
        f, ["tasks.vqa.limit=3", "tasks.0.num_beams=2", "root=/x", "tracking.enabled=false"]
    )
    by = {t.name: t for t in cfg.tasks}
    assert by["vqa"].limit == 3 and by["cap"].num_beams == 2 and cfg.root == "/x" and not cfg.tracking.enabled
    assert cfg.path("a/b.json") == Path("/x/a/b.json") and cfg.path("/abs.json") == Path("/abs.json")
    with pytest.raises(UserError) as e:
        load_eval_config(
            f,
            [
                "tasks.cap.max_new_tokns=3",  # typo: did you mean
                "tasks.vqa.kind=vq",  # unknown kind
                "tasks.mc.num_shots=-1",
                "tasks.ppl.data.path=",
            ],
        )
    msg = str(e.value)
    assert "max_new_tokns" in msg and "did you mean 'max_new_tokens'" in msg
    with pytest.raises(UserError) as e:
        load_eval_config(f, ["tasks.vqa.kind=vq", "tasks.mc.num_shots=-1", "tasks.ppl.data.path="])
    msg = str(e.value)
    assert "'vq'" in msg and "did you mean 'vqa'" in msg
    assert "num_shots: must be >= 0" in msg and "data.path: required for kind perplexity" in msg
    with pytest.raises(UserError, match="no task named 'nope'"):
        load_eval_config(f, ["tasks.nope.limit=1"])
    with pytest.raises(UserError, match="needs a demonstration pool"):
        load_eval_config(f, ["tasks.vqa.num_shots=2"])


def test_dp_share_pads_every_rank_to_the_same_calls():
    from types import SimpleNamespace

    from evaluation.tasks.base import dp_share

    shares = [dp_share(5, SimpleNamespace(dp_size=2, dp_rank=r)) for r in range(2)]
    assert shares == [[0, 2, 4], [1, 3, None]]
    assert sorted(i for s in shares for i in s if i is not None) == list(range(5))
    assert dp_share(3, SimpleNamespace(dp_size=1, dp_rank=0)) == [0, 1, 2]


def _tasks(root: Path, overrides=()):
    from evaluation.tasks import make_task

    cfg = load_eval_config(write_eval_config(root / "e.yaml", root), list(overrides))
    problems = Problems()
    tasks = {t.name: make_task(t, cfg) for t in cfg.tasks if t.kind != "perplexity"}
    for t in tasks.values():
        t.load(problems)
    problems.raise_if_any()
    return tasks


def test_k_shot_demonstrations_are_drawn_with_the_seed(tmp_path):
    root = write_eval_data(tmp_path / "d")
    two = ["tasks.vqa_1shot.num_shots=2"]
    tasks = _tasks(root, two)
    vqa = tasks["vqa_1shot"]
    pool = [json.loads(line) for line in (root / "vqa_train.jsonl").read_text().splitlines()]
    for item, demos in zip(vqa.items, vqa.demos):
        picks = random.Random(f"1234:{item.key}").sample(range(len(pool)), 2)
        assert [d.label for d in demos] == [pool[i]["answer"] for i in picks]
        assert [d.encoder for d in demos] == [[f"question: {pool[i]['question']}"] for i in picks]
        assert [d.images for d in demos] == [[root / pool[i]["image"]] for i in picks]
    assert len({tuple(d.label for d in ds) for ds in vqa.demos}) > 1  # each example draws its own
    again = _tasks(root, two)["vqa_1shot"].demos
    assert [[d.label for d in ds] for ds in again] == [[d.label for d in ds] for ds in vqa.demos]
    other = _tasks(root, [*two, "tasks.vqa_1shot.seed=7"])["vqa_1shot"].demos
    assert [[d.label for d in ds] for ds in other] != [[d.label for d in ds] for ds in vqa.demos]
    limited = _tasks(root, [*two, "tasks.vqa_1shot.limit=3"])["vqa_1shot"]
    assert [[d.label for d in ds] for ds in limited.demos] == [[d.label for d in ds] for ds in vqa.demos[:3]]
    mc = tasks["mc"]
    assert mc.records[0].encoder[0].startswith("Premise: a ") and mc.records[0].prompt == "Label:"
    assert all(d.label in ("yes", "no") for ds in mc.demos for d in ds)
    # the pool is the evaluated split: an example never demonstrates itself
    same = _tasks(root, ["tasks.mc.demos.path=mc.jsonl", "tasks.mc.num_shots=5"])["mc"]
    for item, demos in zip(same.items, same.demos):
        assert len(demos) == 5 and item.where not in [d.where for d in demos]


def _load_problems(root: Path, tasks: list[dict]) -> str:
    from evaluation.harness import prepare_tasks

    cfg = load_eval_config(write_eval_config(root / "bad.yaml", root, tasks))
    assert isinstance(cfg, HarnessConfig)
    with pytest.raises(UserError) as e:
        prepare_tasks(cfg, tokenizer=None, train_cfg=None)  # fails before the tokenizer is needed
    return str(e.value)


def test_bad_inputs_name_the_file_and_the_id(tmp_path):
    root = write_eval_data(tmp_path / "d")
    (root / "caption" / "images" / "img_3.jpg").unlink()  # a missing image
    q = json.loads((root / "vqa" / "questions.json").read_text())
    q["questions"].append({"question_id": 999, "image_id": 1, "question": "why?"})  # no annotation
    (root / "vqa" / "questions.json").write_text(json.dumps(q))
    caps = json.loads((root / "caption" / "captions.json").read_text())
    caps["annotations"].append({"image_id": 77, "caption": "an orphan"})  # an id absent from images
    (root / "caption" / "captions.json").write_text(json.dumps(caps))
    (root / "mc.jsonl").write_text('{"premise": "x", "choices": ["yes", "no"], "label": 0}\n{broken\n')
    msg = _load_problems(root, EVAL_TASKS[:2] + EVAL_TASKS[3:4])
    cap_file, q_file = root / "caption" / "captions.json", root / "vqa" / "questions.json"
    assert f"{cap_file}, image_id 3: image {root / 'caption' / 'images' / 'img_3.jpg'} does not exist" in msg
    assert f"{cap_file}: annotations[8] is for image_id 77" in msg
    assert f"{q_file}, question_id 999: no annotation for it in {root / 'vqa' / 'annotations.json'}" in msg
    assert f"{root / 'mc.jsonl'}:2: not valid JSON" in msg
    assert "names the field 'hypothesis'" in msg and f"{root / 'mc.jsonl'}:1" in msg
    # a file that is not JSON at all, and one that does not exist
    (root / "vqa" / "annotations.json").write_text("{not json")
    msg = _load_problems(
        root, [EVAL_TASKS[1], {**EVAL_TASKS[0], "data": {"annotations": "nope.json", "images": "x"}}]
    )
    assert f"annotations (VQA) file {root / 'vqa' / 'annotations.json'} is not valid JSON" in msg
    assert f"file {root / 'nope.json'} does not exist" in msg


def test_training_reaches_evaluation_in_one_place_only():
    """The trainer's eval.harness hook imports evaluation late, in one function; nothing else in training/."""
    from tests.paths import REPO

    hits = [
        (p.relative_to(REPO).as_posix(), line.strip())
        for p in (REPO / "training").rglob("*.py")
        for line in p.read_text().splitlines()
        if re.search(r"^\s*(from|import)\s+evaluation|import_module\(\s*[\"']evaluation|__import__", line)
    ]
    assert hits == [
        (
            "training/trainer_evaluation.py",
            'self._harness = importlib.import_module("evaluation.hook").TrainingHook(self.cfg, self.topo)',
        )
    ]
