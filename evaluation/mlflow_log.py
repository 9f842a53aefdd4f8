"""Harness results to MLflow (global rank 0), through training's fail-soft `Tracker`: a tracking failure
warns and never fails an evaluation.

Into an existing run (the training run: `--mlflow-run-id`, or the `mlflow_run_id` a checkpoint or export
records): metrics `eval/<task>/<metric>` at the model's step, the results JSON and predictions as artifacts
under `eval/<results name>/`; the run's status is left as it was (a finished run stays FINISHED, a
running one RUNNING). Otherwise a new run (params: the flattened EVAL config and the model; tags
`eval.model`, `eval.step`, `eval.parent_run_id`), FINISHED at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _run_status(uri: str, run_id: str) -> str | None:
    """The run's status (FINISHED, RUNNING, ...), or None when it cannot be read."""
    try:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri).get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - the Tracker reports tracking problems; this is only a hint
        return None


def log_results(
    results: dict,
    results_path: Path,
    *,
    tracking,
    uri: str,
    run_id: str | None,
    step: int,
    params: dict[str, Any],
    tags: dict[str, str],
    artifact_root: Path | None = None,
) -> str | None:
    """Log `results` (evaluation.harness) to `run_id` or a new run; returns the run id (None: not logged).

    tracking: an object with enabled, experiment, run_name (training.config.TrackingConfig)."""
    from evaluation.harness import flat_metrics, predictions_dir
    from training.tracking import Tracker

    if not tracking.enabled:
        return None
    prior = _run_status(uri, run_id) if run_id else None
    tracker = Tracker(tracking, uri, enabled=True, artifact_root=artifact_root)
    got = tracker.start(run_id, params, tags)
    if got is None:
        return None
    tracker.log_metrics(flat_metrics(results), step)
    tracker.flush()
    where = f"eval/{Path(results_path).stem}"
    tracker.log_artifact(results_path, where)
    if predictions_dir(results_path).is_dir():
        tracker.log_artifact(predictions_dir(results_path), f"{where}/predictions")
    if got == run_id:  # an existing run: leave its status as it was
        if prior not in (None, "RUNNING"):
            tracker.finish(prior)
    else:
        tracker.finish("FINISHED")
    log.info("MLflow: %d eval metrics at step %d in run %s (%s)", len(flat_metrics(results)), step, got, uri)
    return got
