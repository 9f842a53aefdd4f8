"""MLflow tracking from global rank 0 only (DESIGN.md 6); a tracking outage warns once and never stops training.

tracker = Tracker(cfg.tracking, uri, enabled=topology.is_main)
run_id = tracker.start(run_id_from_checkpoint_or_None, params={...}, tags={...})
tracker.log_metrics({"loss": 2.3, "lr": 1e-4}, step)     # buffered; sent with log_batch every flush()
tracker.log_artifact(path); tracker.log_text(text, "captions/step_100.txt"); tracker.finish()

events = EventLog(run_dir.events, tracker, enabled=topology.is_main)
events.record("loss_spike", step, loss=9.1, action="skip")   # RUN_DIR/events.jsonl, MLflow artifact events.jsonl
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# An unreachable server must fail fast instead of retrying for minutes: the client settings for that
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0, ...) are set by `common.process_setup.setup_process()`.

MAX_PARAMS_PER_CALL = 100  # MLflow log_batch limit
MAX_METRICS_PER_CALL = 1000
MAX_PARAM_VALUE = 6000


class Tracker:
    """A fail-soft MLflow client. Every method is a no-op when disabled or after the first failure."""

    def __init__(self, cfg, uri: str, enabled: bool, artifact_root: Path | None = None):
        """cfg: TrackingConfig. `artifact_root`: where a new experiment stores artifacts (local stores)."""
        self.cfg = cfg
        self.uri = uri
        self.enabled = enabled and cfg.enabled
        self.artifact_root = artifact_root
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client = None
        self._pending: list[Any] = []
        self._failed = False

    # -- failure handling ------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        if not self.enabled or self._failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any tracking failure must not stop training
            self._failed = True
            log.warning(
                "MLflow tracking failed while trying to %s (%s: %s); training continues without "
                "tracking (tracking.uri=%s)",
                what,
                type(e).__name__,
                str(e).splitlines()[0][:300],
                self.uri,
            )
            return None

    @property
    def active(self) -> bool:
        return self.enabled and not self._failed and self.run_id is not None

    # -- run lifecycle ---------------------------------------------------------------------------
    def start(self, run_id: str | None, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        """Continue `run_id` (a resumed job) or create a run; log params and tags. Returns the run id."""
        return self._call("start the run", self._start, run_id, params, tags)

    def _start(self, run_id: str | None, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=self.uri)
        exp = self._client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            loc = self.artifact_root.resolve().as_uri() if self.artifact_root is not None else None
            self.experiment_id = self._client.create_experiment(self.cfg.experiment, artifact_location=loc)
        else:
            self.experiment_id = exp.experiment_id
        resumed = False
        if run_id:
            try:
                self._client.get_run(run_id)
                self._client.update_run(run_id, status="RUNNING")
                resumed = True
            except Exception:  # noqa: BLE001 - run gone (other store): start a new one
                log.warning(
                    "MLflow run %s from the checkpoint was not found in %s; starting a new run",
                    run_id,
                    self.uri,
                )
        if not resumed:
            run = self._client.create_run(
                self.experiment_id,
                run_name=self.cfg.run_name or None,
                tags={k: str(v) for k, v in tags.items()},
            )
            run_id = run.info.run_id
            items = [Param(k, _param_value(v)) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                self._client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_CALL])
        else:
            self._client.log_batch(
                run_id,
                tags=[
                    RunTag(k, str(v))
                    for k, v in tags.items()
                    if k.startswith("slurm") or k.startswith("resume")
                ],
            )
        self.run_id = run_id
        log.info("MLflow run %s (%s) in %s", run_id, "resumed" if resumed else "new", self.uri)
        return run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer metrics (sent by flush(), in batches)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None)
        if len(self._pending) >= MAX_METRICS_PER_CALL:
            self.flush()

    def flush(self) -> None:
        if not self.active or not self._pending:
            self._pending.clear()
            return
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), MAX_METRICS_PER_CALL):
            self._call(
                "log metrics",
                self._client.log_batch,
                self.run_id,
                metrics=pending[i : i + MAX_METRICS_PER_CALL],
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            fn = self._client.log_artifacts if Path(path).is_dir() else self._client.log_artifact
            self._call(f"log artifact {path}", fn, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._call(f"log {artifact_file}", self._client.log_text, self.run_id, text, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            for k, v in tags.items():
                self._call(f"set tag {k}", self._client.set_tag, self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        """Flush and mark the run (FINISHED, FAILED, or KILLED for a preempted job that will resume)."""
        self.flush()
        if self.active:
            self._call("end the run", self._client.set_terminated, self.run_id, status)


class EventLog:
    """Notable events of a run (loss spikes, stragglers): one JSON object per line in RUN_DIR/events.jsonl
    (appended: a resumed job continues the file), re-logged as the MLflow artifact `events.jsonl` after
    each event. Rank 0 only; never raises."""

    def __init__(self, path: Path, tracker: Tracker, enabled: bool):
        self.path = Path(path)
        self.tracker = tracker
        self.enabled = enabled

    def record(self, kind: str, step: int, **fields: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps({"time": time.time(), "step": step, "kind": kind, **fields}, default=str)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            log.warning("could not append to %s: %s", self.path, e)
            return
        self.tracker.log_artifact(self.path)


def _param_value(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s if len(s) <= MAX_PARAM_VALUE else s[: MAX_PARAM_VALUE - 3] + "..."


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri {uri} --port 5000"
