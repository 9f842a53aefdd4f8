"""`python -m evaluation score ...`: results on stdout, every kind of bad input -> exit 2 with a clear message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import exit_codes
from evaluation.cli import main
from evaluation.metrics.caption import score_captions

REPO = Path(__file__).resolve().parents[2]

COCO_ANNOTATIONS = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}],  # image 4 has no caption
    "annotations": [
        {"id": 10, "image_id": 1, "caption": "A man rides a horse on the beach."},
        {"id": 11, "image_id": 1, "caption": "A person riding a horse along the shore"},
        {"id": 12, "image_id": 2, "caption": "A dog lies on a red couch."},
        {"id": 13, "image_id": 2, "caption": "A small dog sitting on the sofa."},
        {"id": 14, "image_id": 3, "caption": "A plate of food on a table."},
    ],
}
COCO_PREDICTIONS = [
    {"image_id": 1, "caption": "a man riding a horse on a beach"},
    {"image_id": 2, "caption": "a small dog sitting on the couch"},
]


def _answers(*pairs):
    """[(answer, count), ...] -> ten VQA answer dicts."""
    answers = [a for a, n in pairs for _ in range(n)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


VQA_QUESTIONS = {
    "questions": [
        {"image_id": 1, "question": "Is it sunny?", "question_id": 100},
        {"image_id": 1, "question": "How many dogs?", "question_id": 101},
        {"image_id": 2, "question": "What color is the car?", "question_id": 102},
    ]
}
VQA_ANNOTATIONS = {
    "annotations": [
        {
            "question_id": 100,
            "image_id": 1,
            "question_type": "is it",
            "answer_type": "yes/no",
            "multiple_choice_answer": "yes",
            "answers": _answers(("yes", 10)),
        },
        {
            "question_id": 101,
            "image_id": 1,
            "question_type": "how many",
            "answer_type": "number",
            "multiple_choice_answer": "2",
            "answers": _answers(("2", 3), ("3", 7)),
        },
        {
            "question_id": 102,
            "image_id": 2,
            "question_type": "what color is the",
            "answer_type": "other",
            "multiple_choice_answer": "red",
            "answers": _answers(("red", 9), ("blue", 1)),
        },
    ]
}
VQA_PREDICTIONS = [{"question_id": 100, "answer": "yes"}, {"question_id": 101, "answer": "Two"}]


def _write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _run(argv, capsys, caplog):
    caplog.clear()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().out, caplog.text


@pytest.fixture
def coco(tmp_path):
    return {
        "predictions": _write(tmp_path / "preds.json", COCO_PREDICTIONS),
        "annotations": _write(tmp_path / "captions.json", COCO_ANNOTATIONS),
    }


@pytest.fixture
def vqa(tmp_path):
    return {
        "predictions": _write(tmp_path / "answers.json", VQA_PREDICTIONS),
        "questions": _write(tmp_path / "questions.json", VQA_QUESTIONS),
        "annotations": _write(tmp_path / "vqa_annotations.json", VQA_ANNOTATIONS),
    }


def _coco_argv(files, *extra):
    return [
        "score",
        "coco-caption",
        "--predictions",
        files["predictions"],
        "--annotations",
        files["annotations"],
        *extra,
    ]


def _vqa_argv(files, *extra):
    args = ["--predictions", files["predictions"], "--questions", files["questions"]]
    return ["score", "vqa", *args, "--annotations", files["annotations"], *extra]


# ---------------------------------------------------------------- successful runs


def test_coco_caption_scores_predicted_images_and_counts_missing(coco, capsys, caplog):
    rc, out, logs = _run(_coco_argv(coco), capsys, caplog)
    assert rc == exit_codes.OK
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    refs = {i: [a["caption"] for a in COCO_ANNOTATIONS["annotations"] if a["image_id"] == i] for i in (1, 2)}
    expected = score_captions({p["image_id"]: p["caption"] for p in COCO_PREDICTIONS}, refs)
    assert result == {**expected, "num_images": 2, "num_missing": 1}  # image 3 has captions, no prediction
    assert "1 of 3 annotated images have no prediction" in logs


def test_coco_caption_require_all(coco, capsys, caplog):
    rc, out, logs = _run(_coco_argv(coco, "--require-all"), capsys, caplog)
    assert rc == exit_codes.USER_ERROR and out == ""
    assert "1 annotated image(s)" in logs and "e.g. 3" in logs and "--require-all" in logs


def test_vqa_scores_and_breakdown(vqa, capsys, caplog):
    rc, out, logs = _run(_vqa_argv(vqa), capsys, caplog)
    assert rc == exit_codes.OK
    # 100: "yes" against ten "yes" -> 1.0; 101: "Two" -> "2", given by 3 of 10 -> 0.9
    assert json.loads(out) == {
        "overall": 95.0,
        "per_answer_type": {"number": 90.0, "yes/no": 100.0},
        "per_question_type": {"how many": 90.0, "is it": 100.0},
        "num_questions": 2,
        "num_missing": 1,
    }


def test_vqa_require_all(vqa, capsys, caplog):
    rc, out, logs = _run(_vqa_argv(vqa, "--require-all"), capsys, caplog)
    assert rc == exit_codes.USER_ERROR and out == ""
    assert "1 annotated question(s)" in logs and "102" in logs


# ---------------------------------------------------------------- bad COCO inputs

BAD_COCO = [
    pytest.param("predictions", None, ["predictions file", "does not exist"], id="missing-file"),
    pytest.param(
        "predictions",
        '[{"image_id": 1, "caption": "a"},\n {"image_id": 2 "caption": "b"}]',
        ["preds.json", "not valid JSON", "line 2 column 17"],
        id="malformed-json",
    ),
    pytest.param("predictions", {"image_id": 1}, ["must be a JSON list", "not a JSON object"], id="shape"),
    pytest.param(
        "predictions", COCO_ANNOTATIONS, ["looks like an annotations file"], id="swapped-files-hint"
    ),
    pytest.param("predictions", [], ["empty list", "nothing to score"], id="empty"),
    pytest.param(
        "predictions",
        [{"image_id": 999, "caption": "a dog"}],
        ["image_id 999", "is not in", "captions.json"],
        id="unknown-image",
    ),
    pytest.param(
        "predictions",
        [{"image_id": "1", "caption": "a dog"}],
        ["image_id '1'", "it is a string here but 1 exists there"],
        id="id-type-mismatch",
    ),
    pytest.param(
        "predictions",
        [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}],
        ["entry 1", "duplicate image_id 1", "also entry 0"],
        id="duplicate",
    ),
    pytest.param(
        "predictions",
        [{"image_id": 4, "caption": "a dog"}],
        ["image_id 4", "has no caption there"],
        id="image-without-captions",
    ),
    pytest.param(
        "predictions",
        [{"image_id": 1, "caption": 42}],
        ["entry 0", "'caption' must be a string, got 42"],
        id="non-string-caption",
    ),
    pytest.param(
        "predictions",
        [{"image_id": 1.5, "caption": "a"}, ["x"], {"caption": "b"}],
        ["3 problems:", "entry 0", "entry 1", "entry 2"],
        id="all-problems-at-once",
    ),
    pytest.param(
        "annotations", [1, 2], ["annotations file", "must be a JSON object"], id="annotations-shape"
    ),
    pytest.param(
        "annotations",
        {"annotations": [{"image_id": 1, "caption": None}]},
        ["annotations[0]", "'caption' must be a string"],
        id="annotations-non-string-caption",
    ),
]


@pytest.mark.parametrize("which, content, expected", BAD_COCO)
def test_bad_coco_inputs_exit_2(coco, capsys, caplog, which, content, expected):
    if content is None:
        coco[which].unlink()
    else:
        _write(coco[which], content)
    rc, out, logs = _run(_coco_argv(coco), capsys, caplog)
    assert rc == exit_codes.USER_ERROR
    assert out == ""
    for text in expected:
        assert text in logs
    assert logs.count("ERROR") == 1  # one error message, listing every problem


# ---------------------------------------------------------------- bad VQA inputs

BAD_VQA = [
    pytest.param("questions", None, ["questions file", "does not exist"], id="missing-questions"),
    pytest.param(
        "annotations", '{"annotations": [}', ["vqa_annotations.json", "line 1 column 18"], id="malformed"
    ),
    pytest.param("predictions", {"question_id": 1}, ["must be a JSON list"], id="shape"),
    pytest.param("predictions", [], ["empty list"], id="empty"),
    pytest.param(
        "predictions",
        [{"question_id": 555, "answer": "yes"}],
        ["question_id 555", "not in", "vqa_annotations.json", "questions.json"],
        id="unknown-question",
    ),
    pytest.param(
        "predictions",
        [{"question_id": 100, "answer": "yes"}, {"question_id": 100, "answer": "no"}],
        ["duplicate question_id 100"],
        id="duplicate",
    ),
    pytest.param(
        "predictions",
        [{"question_id": 100, "answer": ["yes"]}],
        ["'answer' must be a string"],
        id="non-string-answer",
    ),
    pytest.param(
        "questions",
        {"questions": VQA_QUESTIONS["questions"][:1]},
        ["question_id 101", "questions.json"],
        id="q-file",
    ),
    pytest.param(
        "questions", {"images": []}, ["must be a JSON object with a 'questions' list"], id="q-shape"
    ),
    pytest.param(
        "questions",
        {"questions": [{**q, "image_id": 7} for q in VQA_QUESTIONS["questions"]]},
        ["image_id 7", "do not belong together"],
        id="image-mismatch",
    ),
    pytest.param(
        "annotations",
        {"annotations": [{**VQA_ANNOTATIONS["annotations"][0], "answers": []}]},
        ["'answers' must be a non-empty list"],
        id="no-answers",
    ),
    pytest.param(
        "annotations",
        {"annotations": [{k: v for k, v in VQA_ANNOTATIONS["annotations"][0].items() if k != "answer_type"}]},
        ["'answer_type' must be a string"],
        id="no-answer-type",
    ),
]


@pytest.mark.parametrize("which, content, expected", BAD_VQA)
def test_bad_vqa_inputs_exit_2(vqa, capsys, caplog, which, content, expected):
    if content is None:
        vqa[which].unlink()
    else:
        _write(vqa[which], content)
    rc, out, logs = _run(_vqa_argv(vqa), capsys, caplog)
    assert rc == exit_codes.USER_ERROR
    assert out == ""
    for text in expected:
        assert text in logs
    assert logs.count("ERROR") == 1  # one error message, listing every problem


# ---------------------------------------------------------------- the real entry point


def _python_m(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "evaluation", *map(str, argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_m_evaluation_ok_and_user_error(coco, tmp_path):
    ok = _python_m(*_coco_argv(coco))
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"} | {
        "num_images",
        "num_missing",
    }
    bad = _python_m(*_coco_argv({**coco, "annotations": tmp_path / "nope.json"}))
    assert bad.returncode == exit_codes.USER_ERROR
    assert bad.stdout == ""
    assert "nope.json does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "argv", [["--help"], ["score", "--help"], ["score", "coco-caption", "--help"], ["score", "vqa", "--help"]]
)
def test_help_has_examples(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out


def test_importing_evaluation_stays_light_and_training_never_imports_it():
    code = "import sys, evaluation.cli, evaluation.metrics.caption, evaluation.metrics.vqa; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "training").rglob("*.py")
        if "import evaluation" in (text := p.read_text()) or "from evaluation" in text
    ]
    assert offenders == []


def test_many_problems_are_counted_not_all_listed(coco, capsys, caplog):
    _write(coco["predictions"], [{"image_id": 1, "caption": n} for n in range(30)])
    rc, _, logs = _run(_coco_argv(coco), capsys, caplog)
    assert rc == exit_codes.USER_ERROR
    assert "30 problems:" in logs and "... and 10 more" in logs


def test_problems_of_both_kinds_are_reported_together(vqa, capsys, caplog):
    bad = [{"question_id": 100, "answer": 1}, {"question_id": 555, "answer": "x"}]
    _write(vqa["predictions"], bad)
    _write(vqa["questions"], {"oops": []})
    rc, _, logs = _run(_vqa_argv(vqa), capsys, caplog)
    assert rc == exit_codes.USER_ERROR
    assert "3 problems:" in logs
    assert "'answer' must be a string" in logs
    assert "questions file" in logs and "'questions' list" in logs
    assert "question_id 555" in logs and "vqa_annotations.json" in logs


def test_a_broken_annotation_is_not_also_reported_as_missing(vqa, coco, capsys, caplog):
    broken = {k: v for k, v in VQA_ANNOTATIONS["annotations"][0].items() if k != "answer_type"}
    _write(vqa["annotations"], {"annotations": [broken, *VQA_ANNOTATIONS["annotations"][1:]]})
    rc, _, logs = _run(_vqa_argv(vqa), capsys, caplog)
    assert rc == exit_codes.USER_ERROR
    assert "'answer_type' must be a string" in logs and "is not in" not in logs

    _write(coco["annotations"], {"annotations": [{"image_id": 1, "caption": 3}]})
    _write(coco["predictions"], [{"image_id": 1, "caption": "a horse"}])
    rc, _, logs = _run(_coco_argv(coco), capsys, caplog)
    assert rc == exit_codes.USER_ERROR
    assert "'caption' must be a string" in logs and "is not in" not in logs
