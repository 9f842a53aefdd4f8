"""MLflow tracking: params/metrics/artifacts readable through the client, same run on resume, an
unreachable server warns once and never raises."""

from __future__ import annotations

import logging
import time

from tests.distributed import free_port
from training.config import TrackingConfig
from training.tracking import Tracker


def test_sqlite_run_params_metrics_artifacts_and_resume(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrackingConfig(experiment="exp", run_name="r1")
    art = tmp_path / "config.yaml"
    art.write_text("train: {steps: 3}\n")
    t = Tracker(cfg, uri, enabled=True, artifact_root=tmp_path / "artifacts")
    params = {f"p.{i}": i for i in range(150)} | {"long": "x" * 7000}  # > 100 params: several log_batch calls
    run_id = t.start(None, params, {"parallel.layout": "tp2xdp1"})
    for step in range(1, 4):
        t.log_metrics({"loss": 4.0 - step, "lr": 1e-3, "mfu": None}, step)
    t.log_artifact(art)
    t.log_text("a caption\n", "captions/step_00000003.txt")
    t.finish("KILLED")

    c = MlflowClient(uri)
    run = c.get_run(run_id)
    assert run.data.params["p.149"] == "149" and run.data.params["long"].endswith("...")
    assert run.data.tags["parallel.layout"] == "tp2xdp1" and run.info.status == "KILLED"
    assert [m.value for m in c.get_metric_history(run_id, "loss")] == [3.0, 2.0, 1.0]
    assert "mfu" not in run.data.metrics  # None values are skipped
    names = {f.path for f in c.list_artifacts(run_id)} | {
        f.path for f in c.list_artifacts(run_id, "captions")
    }
    assert {"config.yaml", "captions/step_00000003.txt"} <= names

    t2 = Tracker(cfg, uri, enabled=True)  # a resumed job continues the same run
    assert t2.start(run_id, params, {}) == run_id
    t2.log_metrics({"loss": 0.5}, 4)
    t2.finish()
    assert len(c.get_metric_history(run_id, "loss")) == 4 and c.get_run(run_id).info.status == "FINISHED"


def test_unreachable_server_warns_once_and_training_goes_on(caplog):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t = Tracker(TrackingConfig(), uri, enabled=True)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="training.tracking"):
        assert t.start(None, {"a": 1}, {}) is None
        for step in range(5):
            t.log_metrics({"loss": 1.0}, step)
        t.flush()
        t.log_text("x", "y.txt")
        t.finish()
    warnings = [r for r in caplog.records if "MLflow tracking failed" in r.getMessage()]
    assert len(warnings) == 1 and uri in warnings[0].getMessage()
    assert time.monotonic() - t0 < 30  # no minutes of retries


def test_disabled_on_other_ranks(tmp_path):
    t = Tracker(TrackingConfig(), f"sqlite:///{tmp_path / 'db'}", enabled=False)
    assert t.start(None, {"a": 1}, {}) is None and not (tmp_path / "db").exists()
