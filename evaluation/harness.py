"""The benchmark harness: the tasks of an EVAL.yaml -> predictions -> metrics, at any TP/DP layout.

    tasks = prepare_tasks(cfg, tokenizer, train_cfg)    # every input checked, prompts rendered: no model yet
    results = run_tasks(tasks, model, tokenizer, train_cfg, topology, Path("runs/x/eval/step_00000300.json"))

Used by `python -m evaluation run` (evaluation/run_cli.py) and by training's `eval.harness` hook
(evaluation/hook.py). `run_tasks` is COLLECTIVE: every rank calls it; each task's examples are split over
the data-parallel ranks (the ranks of a TP group compute together), the predictions gathered, and global
rank 0 writes one predictions file per task beside the results JSON, scores each file with the metric code
`python -m evaluation score` uses, and writes the results JSON:

    {"model": ..., "step": ..., "layout": {"tp", "dp", "world"}, "seconds": ...,
     "tasks": {NAME: {"kind", "metrics": {...}, "details": {...}, "num_examples", "num_shots",
                      "seconds", "predictions": PATH, "config": {the task's config}}}}

Predictions of task NAME: `<results file without .json>_predictions/NAME.json` (or `.jsonl`).
MLflow names (`flat_metrics`): eval/<task>/<metric>, e.g. eval/shapes_vqa/accuracy.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from evaluation.harness_config import HarnessConfig
from evaluation.inputs import Problems
from evaluation.tasks import Task, make_task
from evaluation.tasks.base import Runner, gather
from training.config import loader as config_io

log = logging.getLogger(__name__)

PREDICTION_SUFFIX = {"caption": ".json", "vqa": ".json", "multiple_choice": ".jsonl", "perplexity": ".jsonl"}


class _Problems(Problems):
    """Problems without repeats (two tasks reading the same file find the same ones)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def add(self, message: str) -> None:
        if message not in self._seen:
            self._seen.add(message)
            super().add(message)


def prepare_tasks(cfg: HarnessConfig, tokenizer, train_cfg) -> list[Task]:
    """Read and check every task's inputs, then that every prefix fits the model: one UserError listing
    all problems (file and example id) before any model is built or any generation starts."""
    problems = _Problems()
    tasks = [make_task(t, cfg) for t in cfg.tasks]
    for task in tasks:
        task.load(problems)
    problems.raise_if_any()
    for task in tasks:
        task.check_fit(tokenizer, train_cfg, problems)
    problems.raise_if_any()
    return tasks


def predictions_dir(results_path: Path) -> Path:
    p = Path(results_path)
    return p.with_name((p.name[: -len(".json")] if p.name.endswith(".json") else p.name) + "_predictions")


def run_tasks(
    tasks: list[Task],
    model,
    tokenizer,
    train_cfg,
    topology,
    output: Path,
    info: dict[str, Any] | None = None,
) -> dict | None:
    """COLLECTIVE. Run every task; global rank 0 writes predictions + the results JSON at `output` and returns
    the results; other ranks return None. `info` (model, step, ...) goes into the results as it is."""
    from evaluation.generate_cli import ExampleBuilder

    runner = Runner(model, tokenizer, ExampleBuilder(tokenizer, train_cfg), topology)
    t_start = time.monotonic()
    gathered: list[tuple[Task, dict, float]] = []
    for task in tasks:  # every rank: predictions of its share, then all of them (one all-gather per task)
        t0 = time.monotonic()
        predictions = gather(task.predict(runner), topology)
        gathered.append((task, predictions, time.monotonic() - t0))
        log.info("task %s: %d examples in %.1fs", task.name, task.num_examples(), gathered[-1][2])
    if topology.rank != 0:
        return None
    # rank 0 only, after the last collective: a failure here cannot leave other ranks waiting
    pred_dir = predictions_dir(output)
    pred_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        **(info or {}),
        "layout": {"tp": topology.tp_size, "dp": topology.dp_size, "world": topology.world_size},
        "tasks": {},
    }
    for task, predictions, seconds in gathered:
        path = pred_dir / f"{task.name}{PREDICTION_SUFFIX[task.kind]}"
        tmp = path.with_name(f".{path.name}.tmp")
        task.write_predictions(predictions, tmp)
        os.replace(tmp, path)
        metrics, details = task.score(path)
        results["tasks"][task.name] = {
            "kind": task.kind,
            "metrics": metrics,
            "details": details,
            "num_examples": task.num_examples(),
            "num_shots": task.cfg.num_shots,
            "seconds": round(seconds, 3),
            "predictions": str(path),
            "config": config_io.to_dict(task.cfg),
        }
        log.info("task %s: %s", task.name, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    results["seconds"] = round(time.monotonic() - t_start, 3)
    write_json(Path(output), results)
    return results


def flat_metrics(results: dict) -> dict[str, float]:
    """{"eval/<task>/<metric>": value} of a results dict (what goes to MLflow)."""
    return {
        f"eval/{name}/{metric}": float(value)
        for name, task in results["tasks"].items()
        for metric, value in task["metrics"].items()
    }


def write_json(path: Path, obj: Any) -> None:
    """Atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)
