"""The training hook of the harness: `eval.harness: EVAL.yaml` in a training config runs its benchmarks on
the weights being trained every `eval.harness_interval_steps` steps and at the end, logged in the
training run as MLflow metrics `eval/<task>/<metric>` at the step (results JSON and predictions:
RUN_DIR/eval/step_NNNNNNNN.json and ..._predictions/, also MLflow artifacts).

The training loop reaches this module in ONE place, `Trainer.eval_harness` (training/trainer.py), through
a late `importlib.import_module("evaluation.hook")`: training never imports evaluation at module level.

    hook = TrainingHook(cfg, topology)           # at Trainer construction: every input checked (UserError)
    metrics = hook.run(model, step, tracker)     # COLLECTIVE at a step boundary: all ranks, any TP/DP

The model is the engine's module (TP-sharded; under ZeRO-3 the trainer runs the hook inside its parameter
gather, and every DP rank makes the same model calls with the same batch sizes: tasks/base.py `dp_share`).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class TrainingHook:
    """Loaded once per training job: the EVAL config, the run's tokenizer, every task's checked inputs."""

    def __init__(self, cfg, topology):
        """cfg: the TrainingConfig (eval.harness + harness_overrides, data.tokenizer, model, run_dir)."""
        from evaluation.harness import prepare_tasks
        from evaluation.harness_config import load_eval_config
        from training.config.tokenizer import run_tokenizer

        self.cfg, self.topology = cfg, topology
        self.eval_cfg = load_eval_config(cfg.eval.harness, cfg.eval.harness_overrides)
        self.tokenizer = run_tokenizer(cfg.data.tokenizer)
        self.tasks = prepare_tasks(self.eval_cfg, self.tokenizer, cfg)
        log.info("eval.harness %s: tasks %s", cfg.eval.harness, ", ".join(t.name for t in self.tasks))

    def output(self, step: int) -> Path:
        return self.cfg.run_dir.eval_dir / f"step_{step:08d}.json"

    def run(self, model, step: int, tracker=None) -> dict[str, float]:
        """COLLECTIVE. Every task on the current weights; rank 0 writes the results and logs them to
        `tracker` (the training run's); returns {eval/<task>/<metric>: value} on rank 0 ({} elsewhere)."""
        from evaluation.harness import flat_metrics, predictions_dir, run_tasks

        path = self.output(step)
        info = {"model": f"training run {self.cfg.run_dir.root} at step {step}", "step": step}
        results = run_tasks(self.tasks, model, self.tokenizer, self.cfg, self.topology, path, info)
        if results is None:
            return {}
        metrics = flat_metrics(results)
        log.info(
            "step %d eval harness (%.1fs): %s",
            step,
            results["seconds"],
            ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
        )
        if tracker is not None:
            tracker.log_metrics(metrics, step)
            tracker.log_metrics({"time/eval_harness": results["seconds"]}, step)
            tracker.flush()
            tracker.log_artifact(path, f"eval/{path.stem}")
            tracker.log_artifact(predictions_dir(path), f"eval/{path.stem}/predictions")
        return metrics
