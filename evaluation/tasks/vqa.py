"""kind: vqa -- VQA v2: a short generated answer per question, the official VQA accuracy.

data: `questions` (VQA questions JSON: questions [{question_id, image_id, question}], data_subtype),
`annotations` (VQA annotations JSON: [{question_id, image_id, answers, question_type, answer_type,
multiple_choice_answer}]) and `images` (the folder). The image of a question is
`images / image_name.format(image_id=..., data_subtype=...)`, by default COCO's
`COCO_{data_subtype}_{image_id:012d}.jpg`. Every question is an example (file order; `limit` keeps the
first N); every one must be annotated, with the same image id. Fields: {question_id}, {image_id},
{question}, {answer} (the annotation's multiple_choice_answer: a demonstration's label).
demos: the same layout (a train split), or `path`: JSONL {"image": PATH, "question": ..., "answer": ...}
(what `data_prep synth` writes as tasks/shapes_vqa_train.jsonl).

Default prompt, the MetaLM paper's VQA template: encoder ["question: {question}"], decoder prompt
"answer:", label "{answer}". Decoding stops at `</s>` or after max_new_tokens (set it to a few tokens).

Scoring: the predictions file is a VQA results JSON [{question_id, answer}] scored by
`evaluation.metrics.vqa` as `python -m evaluation score vqa` scores it (the official normalization and
leave-one-annotator-out accuracy). Metrics (percent, 2 decimals, as the official code): `accuracy`
(overall) and `accuracy/<answer type>`; the per-question-type figures are in the results JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from common.errors import UserError
from evaluation.inputs import Problems, is_id
from evaluation.tasks.base import Item, Task, jsonl_items, read_json

COCO_IMAGE_NAME = "COCO_{data_subtype}_{image_id:012d}.jpg"


class VqaTask(Task):
    kind = "vqa"
    default_encoder = ["question: {question}"]
    default_prompt = "answer:"
    default_label = "{answer}"
    generative = True

    def read(self, files, problems: Problems, *, demos: bool) -> list[Item]:
        if demos and files.path:
            return jsonl_items(self.path(files.path), "demonstrations", problems, images=True)
        return vqa_items(
            self.path(files.questions),
            self.path(files.annotations),
            self.path(files.images),
            files.image_name or COCO_IMAGE_NAME,
            problems,
        )

    def predict(self, runner) -> dict[int, str]:
        return {
            i: p["text"].splitlines()[0] if p["text"] else "" for i, p in self.generate_texts(runner).items()
        }

    def write_predictions(self, predictions: dict[int, str], path: Path) -> None:
        rows = [{"question_id": it.key, "answer": predictions[i]} for i, it in enumerate(self.items)]
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")

    def score(self, path: Path) -> tuple[dict[str, float], dict]:
        from evaluation.metrics.vqa import read_vqa_inputs, score_vqa

        d = self.cfg.data
        inputs = read_vqa_inputs(path, self.path(d.questions), self.path(d.annotations))
        scores = score_vqa(inputs.predictions, inputs.annotations)
        metrics = {"accuracy": scores["overall"]}
        metrics.update({f"accuracy/{t}": v for t, v in scores["per_answer_type"].items()})
        details = {k: scores[k] for k in ("per_answer_type", "per_question_type", "num_questions")}
        return metrics, {**details, "num_missing": inputs.num_missing}


def _answer(ann: dict) -> str:
    """The annotation's canonical answer (multiple_choice_answer, else the most common human answer)."""
    mca = ann.get("multiple_choice_answer")
    if isinstance(mca, str) and mca.strip():
        return mca
    answers = [a.get("answer") for a in ann.get("answers") or [] if isinstance(a, dict)]
    answers = [a for a in answers if isinstance(a, str) and a.strip()]
    return Counter(answers).most_common(1)[0][0] if answers else ""


def vqa_items(q_path: Path, a_path: Path, image_dir: Path, image_name: str, problems: Problems) -> list[Item]:
    """One item per question; every question annotated with the same image id (problems name file and id).
    The annotations' structure is checked by the scorer's own validation, here, before any generation."""
    from evaluation.metrics.vqa import check_vqa_inputs

    qdata = read_json(q_path, "questions (VQA)", problems)
    adata = read_json(a_path, "annotations (VQA)", problems)
    if qdata is None or adata is None:
        return []
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        problems.add(f"questions file {q_path} must be a VQA questions JSON object with a 'questions' list")
        return []
    if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
        problems.add(
            f"annotations file {a_path} must be a VQA annotations JSON object with an 'annotations' list"
        )
        return []
    if not image_dir.is_dir():
        problems.add(f"image folder {image_dir} (for {q_path}) does not exist")
    subtype = qdata.get("data_subtype", "")
    annotations = {
        a["question_id"]: a
        for a in adata["annotations"]
        if isinstance(a, dict) and is_id(a.get("question_id"))
    }
    items: list[Item] = []
    seen: set = set()
    for i, q in enumerate(qdata["questions"]):
        qid = q.get("question_id") if isinstance(q, dict) else None
        image_id = q.get("image_id") if isinstance(q, dict) else None
        question = q.get("question") if isinstance(q, dict) else None
        where = f"{q_path}, question_id {qid!r}"
        if not is_id(qid) or not is_id(image_id) or not isinstance(question, str):
            problems.add(
                f"{q_path}: questions[{i}] needs a 'question_id', an 'image_id' and a string 'question'"
            )
            continue
        if qid in seen:
            problems.add(f"{where}: listed twice (questions[{i}])")
            continue
        seen.add(qid)
        ann = annotations.get(qid)
        if ann is None:
            problems.add(f"{where}: no annotation for it in {a_path}; are the two files of the same split?")
            continue
        if ann.get("image_id") != image_id:
            problems.add(
                f"{where}: image_id {image_id!r} there but {ann.get('image_id')!r} in {a_path}: the files "
                "do not belong together"
            )
            continue
        try:
            name = image_name.format(image_id=image_id, data_subtype=subtype)
        except (KeyError, ValueError, IndexError) as e:
            raise UserError(
                f"image_name {image_name!r}: cannot be formatted ({e}); fields are {{image_id}}, {{data_subtype}}"
            ) from None
        fields = {"question_id": qid, "image_id": image_id, "question": question, "answer": _answer(ann)}
        items.append(Item(qid, where, fields, [image_dir / name]))
    if items and not problems:  # the annotations' own layout, as the scorer will check it
        try:
            check_vqa_inputs(
                [{"question_id": it.key, "answer": ""} for it in items],
                qdata,
                adata,
                "<questions>",
                str(q_path),
                str(a_path),
            )
        except UserError as e:
            problems.add(str(e))
    return items
