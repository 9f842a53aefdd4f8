"""Official VQA v2 accuracy (GT-Vision-Lab/VQA vqaEval.py) of a results file.

Inputs, as the official tools read them:
- predictions (results format): a JSON list of {"question_id": int|str, "answer": str};
- questions: {"questions": [{"image_id", "question", "question_id"}, ...]};
- annotations: {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
  "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}, x10]}, ...]}.

Accuracy of one question, as in the official code:
- the prediction and the human answers are stripped (newlines/tabs -> spaces); if the human answers
  are not all identical, all of them and the prediction are normalized with `vqa_normalize`
  (official quirk, kept: when all 10 humans gave the same string, nothing is normalized, so "Two"
  scores 0 against ten "2");
- for each of the 10 leave-one-out subsets of 9 human answers: min(1, matches in the subset / 3);
  the accuracy is the mean over the 10 subsets. An answer given by k of 10 humans scores
  0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, >=4 (k=3: 3 subsets have 2 matches -> 2/3, 7 have 3 -> 1;
  (3 * 2/3 + 7) / 10 = 0.9). (The official code leaves one answer out by comparing answer dicts,
  which equals leaving out by position because VQA's answer_ids are distinct; we leave out by position.
  Any number of human answers >= 1 is accepted, 10 in VQA v2.)
- reported like the official code: percent, rounded to 2 decimals, overall, per answer type
  ("yes/no", "number", "other") and per question type ("what color is the", ...).

Scoring uses the annotations; the questions file is checked for consistency (every predicted question
is in it, with the same image_id). Unlike the official loader, which requires a prediction for every
annotated question, predictions for a subset are scored and the rest counted in `num_missing`
(`require_all=True` restores the official requirement).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.inputs import Problems, check_results, describe, id_type_hint, is_id, load_json, unpredicted
from evaluation.metrics.vqa_normalize import normalize_answer, strip_answer

log = logging.getLogger(__name__)

_LISTED_MISSING = 5
_DIGITS = 2  # the official code rounds percentages to 2 decimals


@dataclass
class VqaQuestion:
    answers: list[str]  # the human answers (10 in VQA v2), raw
    question_type: str
    answer_type: str


@dataclass
class VqaSet:
    """Validated inputs: the predicted answer and the annotation of each predicted question."""

    predictions: dict[Hashable, str]
    annotations: dict[Hashable, VqaQuestion]
    num_missing: int  # annotated questions without a prediction


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of one predicted answer against the human answers (module docstring)."""
    if not human_answers:
        raise ValueError("a VQA question needs at least one human answer")
    humans = [strip_answer(a) for a in human_answers]
    predicted = strip_answer(prediction)
    if len(set(humans)) > 1:
        humans = [normalize_answer(a) for a in humans]
        predicted = normalize_answer(predicted)
    matches = sum(h == predicted for h in humans)
    # Leaving out answer i leaves `matches` minus one if answer i itself matched.
    per_subset = [min(1, float(matches - (h == predicted)) / 3) for h in humans]
    return float(sum(per_subset)) / len(per_subset)


def _percent(values: list[float]) -> float:
    return round(100 * float(sum(values)) / len(values), _DIGITS)


def score_vqa(predictions: Mapping[Hashable, str], annotations: Mapping[Hashable, VqaQuestion]) -> dict:
    """Overall / per answer type / per question type accuracy (percent, 2 decimals) of `predictions`."""
    if not predictions:
        raise ValueError("VQA accuracy needs at least one prediction")
    overall: list[float] = []
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for question_id, answer in predictions.items():
        ann = annotations[question_id]
        acc = question_accuracy(answer, ann.answers)
        overall.append(acc)
        by_answer_type.setdefault(ann.answer_type, []).append(acc)
        by_question_type.setdefault(ann.question_type, []).append(acc)
    return {
        "overall": _percent(overall),
        "per_answer_type": {t: _percent(v) for t, v in sorted(by_answer_type.items())},
        "per_question_type": {t: _percent(v) for t, v in sorted(by_question_type.items())},
        "num_questions": len(overall),
    }


def _check_predictions(data: Any, name: str, problems: Problems) -> dict[Hashable, str]:
    return check_results(
        data,
        name,
        problems,
        id_key="question_id",
        text_key="answer",
        fmt="VQA results",
        swapped_keys=("questions", "annotations"),
        duplicate_fix="give exactly one answer per question",
    )


def _check_questions(data: Any, name: str, problems: Problems) -> dict[Hashable, Any]:
    """question_id -> image_id (None when absent)."""
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        problems.add(
            f"questions file {name} must be a JSON object with a 'questions' list "
            f"(VQA questions format), not {describe(data)}"
            + (" without a 'questions' list" if isinstance(data, dict) else "")
        )
        return {}
    image_of: dict[Hashable, Any] = {}
    for i, q in enumerate(data["questions"]):
        if not isinstance(q, dict) or not is_id(q.get("question_id")):
            problems.add(f"questions file {name}, questions[{i}]: expected an object with a 'question_id'")
            continue
        image_of[q["question_id"]] = q.get("image_id")
    return image_of


def _check_annotation(ann: dict, where: str, problems: Problems) -> VqaQuestion | None:
    answers = ann.get("answers")
    ok = True
    if not isinstance(answers, list) or not answers:
        problems.add(f"{where}: 'answers' must be a non-empty list of {{'answer': str}} objects")
        ok = False
    elif not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
        problems.add(f"{where}: every item of 'answers' must be an object with a string 'answer'")
        ok = False
    for key in ("question_type", "answer_type"):
        if not isinstance(ann.get(key), str):
            problems.add(f"{where}: '{key}' must be a string, got {ann.get(key)!r}")
            ok = False
    if not ok:
        return None
    return VqaQuestion([a["answer"] for a in answers], ann["question_type"], ann["answer_type"])


def _check_annotations(
    data: Any, name: str, problems: Problems
) -> tuple[dict[Hashable, VqaQuestion], dict[Hashable, Any]]:
    """question_id -> valid annotation, and question_id -> image_id for every annotated question."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        problems.add(
            f"annotations file {name} must be a JSON object with an 'annotations' list "
            f"(VQA annotations format), not {describe(data)}"
            + (" without an 'annotations' list" if isinstance(data, dict) else "")
        )
        return {}, {}
    annotations: dict[Hashable, VqaQuestion] = {}
    image_of: dict[Hashable, Any] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations file {name}, annotations[{i}]"
        if not isinstance(ann, dict) or not is_id(ann.get("question_id")):
            problems.add(f"{where}: expected an object with a 'question_id'")
            continue
        question_id = ann["question_id"]
        if question_id in annotations:
            problems.add(f"{where}: question_id {question_id!r} is annotated twice")
            continue
        checked = _check_annotation(ann, f"{where} (question_id {question_id!r})", problems)
        if checked is not None:
            annotations[question_id] = checked
        image_of[question_id] = ann.get("image_id")  # also for a broken entry: it is annotated
    return annotations, image_of


def check_vqa_inputs(
    predictions_data: Any,
    questions_data: Any,
    annotations_data: Any,
    predictions_name: str = "<predictions>",
    questions_name: str = "<questions>",
    annotations_name: str = "<annotations>",
    require_all: bool = False,
) -> VqaSet:
    """Validate parsed VQA inputs; raise one UserError listing every problem."""
    problems = Problems()
    predictions = _check_predictions(predictions_data, predictions_name, problems)
    question_images = _check_questions(questions_data, questions_name, problems)
    annotations, annotation_images = _check_annotations(annotations_data, annotations_name, problems)
    # Cross-check the valid predictions against each file whose layout could be read.
    references = [
        (name, known)
        for name, known, data, key in (
            (annotations_name, annotation_images, annotations_data, "annotations"),
            (questions_name, question_images, questions_data, "questions"),
        )
        if isinstance(data, dict) and isinstance(data.get(key), list)
    ]
    for question_id in predictions:
        for file_name, known in references:
            if question_id not in known:
                hint = id_type_hint(question_id, known)
                problems.add(
                    f"question_id {question_id!r} of {predictions_name} is not in {file_name}{hint}; "
                    "are the predictions for another split?"
                )
        in_questions, in_annotations = question_images.get(question_id), annotation_images.get(question_id)
        if in_questions is not None and in_annotations is not None and in_questions != in_annotations:
            problems.add(
                f"question_id {question_id!r} has image_id {in_questions!r} in {questions_name} but "
                f"{in_annotations!r} in {annotations_name}: the two files do not belong together"
            )
    missing = unpredicted(
        annotations,
        predictions,
        problems,
        require_all=require_all,
        what="question",
        annotations_name=annotations_name,
        predictions_name=predictions_name,
        fix="answer every question",
        listed=_LISTED_MISSING,
    )
    return VqaSet(predictions, {q: annotations[q] for q in predictions}, len(missing))


def read_vqa_inputs(
    predictions_path: str | Path,
    questions_path: str | Path,
    annotations_path: str | Path,
    require_all: bool = False,
) -> VqaSet:
    """Load and validate a VQA results file with its questions and annotations files."""
    predictions_data = load_json(predictions_path, "predictions")
    questions_data = load_json(questions_path, "questions")
    annotations_data = load_json(annotations_path, "annotations")
    return check_vqa_inputs(
        predictions_data,
        questions_data,
        annotations_data,
        str(predictions_path),
        str(questions_path),
        str(annotations_path),
        require_all,
    )
