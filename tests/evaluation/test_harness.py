"""`python -m evaluation run` end to end on tiny data with an untrained debug MetaLM (`--model init`): every
task kind, metrics that are exactly what `python -m evaluation score` computes from the predictions files,
and bad inputs rejected before any model is built."""

from __future__ import annotations

import json
import math

import pytest

from common import exit_codes
from evaluation.cli import main
from tests.distributed import run_ranks
from tests.evaluation.test_harness_helpers import (
    EVAL_TASKS,
    write_eval_config,
    write_eval_data,
    write_train_config,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.training.shards import write_tokenizer

    root = tmp_path_factory.mktemp("harness")
    tok = write_tokenizer(root / "tokenizer")
    data = write_eval_data(root / "data", tok)
    train_cfg = write_train_config(root / "train.yaml", root / "tokenizer", root / "runs" / "r")
    eval_cfg = write_eval_config(root / "eval.yaml", data)
    return root, data, train_cfg, eval_cfg


def run_argv(eval_cfg, train_cfg, out, *extra) -> list[str]:
    return [
        "run",
        "--config",
        str(eval_cfg),
        "--model",
        "init",
        "--train-config",
        str(train_cfg),
        "--output",
        str(out),
        *extra,
    ]


def cli_rank(rank, world, argv):
    return main(argv)


def _score_cli(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["score", *argv]) == exit_codes.OK
    return json.loads(capsys.readouterr().out)


def test_every_task_kind_end_to_end(setup, capsys):
    root, data, train_cfg, eval_cfg = setup
    out = root / "out" / "results.json"
    assert run_ranks(1, cli_rank, run_argv(eval_cfg, train_cfg, out, "--no-mlflow")) == [exit_codes.OK]
    results = json.loads(out.read_text())
    tasks = results["tasks"]
    assert list(tasks) == [t["name"] for t in EVAL_TASKS]
    assert {n: t["num_examples"] for n, t in tasks.items()} == {
        "cap": 4,
        "vqa": 8,
        "vqa_1shot": 8,
        "mc": 6,
        "ppl": 6,
    }
    assert results["step"] == 0 and results["layout"] == {"tp": 1, "dp": 1, "world": 1}
    assert tasks["vqa_1shot"]["num_shots"] == 1 and tasks["vqa_1shot"]["config"]["num_beams"] == 2
    pred = {
        n: root / "out" / "results_predictions" / f"{n}{'.jsonl' if n in ('mc', 'ppl') else '.json'}"
        for n in tasks
    }
    assert all(tasks[n]["predictions"] == str(p) and p.is_file() for n, p in pred.items())

    # caption and VQA: the metrics are what `python -m evaluation score` computes from the predictions files
    ann = data / "caption" / "captions.json"
    captions = json.loads(pred["cap"].read_text())
    assert [c["image_id"] for c in captions] == [1, 2, 3, 4] and all(
        isinstance(c["caption"], str) for c in captions
    )
    scored = _score_cli(capsys, "coco-caption", "--predictions", str(pred["cap"]), "--annotations", str(ann))
    assert tasks["cap"]["metrics"] == {
        k: scored[k] for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D")
    }
    qs, anns = data / "vqa" / "questions.json", data / "vqa" / "annotations.json"
    for name in ("vqa", "vqa_1shot"):
        answers = json.loads(pred[name].read_text())
        assert [a["question_id"] for a in answers] == [10, 11, 20, 21, 30, 31, 40, 41]
        s = _score_cli(
            capsys,
            "vqa",
            "--predictions",
            str(pred[name]),
            "--questions",
            str(qs),
            "--annotations",
            str(anns),
        )
        m = tasks[name]["metrics"]
        assert m["accuracy"] == s["overall"] and m["accuracy/other"] == s["per_answer_type"]["other"]
        assert m["accuracy/size"] == s["per_answer_type"]["size"]
        assert tasks[name]["details"]["per_question_type"] == s["per_question_type"]
    # multiple choice: accuracy of the argmax of the log-likelihoods written to the file
    rows = [json.loads(line) for line in pred["mc"].read_text().splitlines()]
    from training.config.tokenizer import run_tokenizer

    n_tokens = [len(run_tokenizer(root / "tokenizer").encode(c)) for c in ("yes", "no")]
    assert len(rows) == 6 and all(len(r["loglikelihoods"]) == 2 and r["num_tokens"] == n_tokens for r in rows)
    acc = sum(max(range(2), key=lambda j: r["loglikelihoods"][j]) == r["label"] for r in rows) / 6
    assert tasks["mc"]["metrics"]["accuracy"] == pytest.approx(acc)
    # perplexity: summed loss / loss tokens of the rows (causal rows: every target after the first)
    rows = [json.loads(line) for line in pred["ppl"].read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [31] * 6
    loss = sum(r["loss_sum"] for r in rows) / sum(r["tokens"] for r in rows)
    assert tasks["ppl"]["metrics"]["loss"] == pytest.approx(loss)
    assert tasks["ppl"]["metrics"]["perplexity"] == pytest.approx(math.exp(loss))
    assert 2.0 < loss < 8.0  # an untrained 64-token model: about ln(64) = 4.2

    # a known predictions file injected into the scoring step gives the scorer's numbers
    from evaluation.harness_config import load_eval_config

    by = _loaded(load_eval_config(eval_cfg))
    known = root / "known_captions.json"
    known.write_text(
        json.dumps([{"image_id": i, "caption": c} for i, c in [(1, "a small red square"), (2, "a blue")]])
    )
    metrics, details = by["cap"].score(known)
    scored = _score_cli(capsys, "coco-caption", "--predictions", str(known), "--annotations", str(ann))
    assert metrics == {k: scored[k] for k in metrics} and details == {"num_images": 2, "num_missing": 2}
    assert metrics["BLEU-1"] > 0.5 and metrics["CIDEr-D"] > 0
    perfect = root / "perfect_answers.json"
    perfect.write_text(
        json.dumps(
            [
                {"question_id": a["question_id"], "answer": a["multiple_choice_answer"]}
                for a in json.loads(anns.read_text())["annotations"]
            ]
        )
    )
    metrics, _ = by["vqa"].score(perfect)
    assert metrics == {"accuracy": 100.0, "accuracy/other": 100.0, "accuracy/size": 100.0}

    # perplexity rows: causal by default; span_sampling lays them out as training does (no loss inside spans)
    from streaming.base.local import LocalDataset

    from training.data.loader import RowSpec

    spec = RowSpec(16, 32, 128, 4, 8, 0.25, 0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    shards = LocalDataset(local=str(data / "text"))
    assert all(not r.spans and r.loss.sum() == 31 for r in by["ppl"]._rows([0, 1, 2], shards, spec))
    by["ppl"].cfg.span_sampling = True
    spanned = by["ppl"]._rows([0, 1, 2], shards, spec)
    assert all(r.spans and r.loss.sum() == 31 - sum(n for _, n in r.spans) for r in spanned)


def _loaded(cfg) -> dict:
    from evaluation.inputs import Problems
    from evaluation.tasks import make_task

    problems = Problems()
    tasks = {t.name: make_task(t, cfg) for t in cfg.tasks}
    for t in tasks.values():
        t.load(problems)
    problems.raise_if_any()
    return tasks


def test_bad_inputs_fail_before_the_model_is_built(setup, tmp_path, monkeypatch, caplog):
    import shutil

    import evaluation.run_cli as run_cli

    root, data, train_cfg, _ = setup

    def no_model(*a, **k):
        raise AssertionError("the model was built before the inputs were checked")

    monkeypatch.setattr(run_cli, "build_model", no_model)
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    (bad / "vqa" / "images" / "COCO_tiny_000000000002.jpg").unlink()
    q = json.loads((bad / "vqa" / "questions.json").read_text())
    q["questions"][3]["image_id"] = 3  # question 21 is about image 2 in the annotations
    (bad / "vqa" / "questions.json").write_text(json.dumps(q))
    (bad / "mc.jsonl").write_text((bad / "mc.jsonl").read_text() + '{"premise": "p", "hypothesis": "h"\n')
    out = tmp_path / "r.json"
    argv = run_argv(write_eval_config(tmp_path / "e.yaml", bad), train_cfg, out)
    caplog.clear()
    assert main(argv) == exit_codes.USER_ERROR and not out.exists()
    log = caplog.text
    qfile = bad / "vqa" / "questions.json"
    assert (
        f"{qfile}, question_id 20: image {bad / 'vqa' / 'images' / 'COCO_tiny_000000000002.jpg'} does not exist"
        in log
    )
    assert f"{qfile}, question_id 21: image_id 3 there but 2 in {bad / 'vqa' / 'annotations.json'}" in log
    assert f"{bad / 'mc.jsonl'}:7: not valid JSON" in log
    # a prefix that cannot fit the model (too many demonstrations) is found before generating too
    caplog.clear()
    argv = run_argv(write_eval_config(tmp_path / "e2.yaml", data), train_cfg, out, "tasks.mc.num_shots=3")
    assert main(argv + ["tasks.mc.prompt=" + "Label " * 60]) == exit_codes.USER_ERROR
    assert "task mc:" in caplog.text and "max_seq_len is 128" in caplog.text and not out.exists()
    # flags: init needs its training config; a typo in an override is named
    caplog.clear()
    argv = ["run", "--config", str(tmp_path / "e2.yaml"), "--model", "init"]
    assert main(argv) == exit_codes.USER_ERROR and "--train-config" in caplog.text
    caplog.clear()
    assert (
        main(argv + ["tasks.cap.num_beam=2"]) == exit_codes.USER_ERROR
        and "did you mean 'num_beams'" in caplog.text
    )
