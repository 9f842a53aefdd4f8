"""Observability and the loss-spike policy on the real trainer (debug MetaLM, forked gloo ranks) and in
unit tests: profiler trace (ProfilerStep#N spans, MLflow artifact), per-phase `time/*` metrics summing to
about the step time, stragglers named (or not), each loss-spike response, the OOM snapshot wrapper."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import pytest
import torch

from common import exit_codes
from tests.distributed import run_ranks
from tests.paths import DEBUG_CONFIG
from tests.training.shards import config_overrides
from training.observability.profiler import MemorySnapshots, snapshot_on_oom
from training.observability.stragglers import StragglerMonitor
from training.resilience.loss_spike import LossSpikeConfig, LossSpikeDetector

# ---- units ---------------------------------------------------------------------------------------------


def test_oom_wrapper_names_the_snapshot_and_keeps_the_cause(tmp_path):
    snap = tmp_path / "memory_rank0_step7_oom.pickle"
    with pytest.raises(torch.OutOfMemoryError) as info:
        with snapshot_on_oom(lambda: snap):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "Tried to allocate 2.00 GiB" in str(info.value) and str(snap) in str(info.value)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    with pytest.raises(torch.OutOfMemoryError, match=r"^boom$"):  # no snapshot: the error unchanged
        with snapshot_on_oom(lambda: None):
            raise torch.OutOfMemoryError("boom")
    with pytest.raises(ValueError):  # other errors pass through untouched
        with snapshot_on_oom(lambda: pytest.fail("no snapshot for other errors")):
            raise ValueError("x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour")
def test_memory_snapshots_are_cuda_only(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.observability.profiler"):
        m = MemorySnapshots(True, 0, tmp_path)
    assert not m.enabled and "CUDA-only" in caplog.text
    m.start()
    assert m.dump(3, "requested") is None and m.maybe_dump_requested(3) is None
    with pytest.raises(torch.OutOfMemoryError, match="^x$"), m.on_oom(3):
        raise torch.OutOfMemoryError("x")


def test_straggler_monitor_names_a_persistently_slow_rank_once():
    rows = {}  # rank -> (step_time, data_wait, local_time) of the current window
    mon = StragglerMonitor(
        10, 1.3, 2, lambda v: [list(rows[r]) for r in sorted(rows)], lambda h: ["a", "b", "c"], "a"
    )
    mon.add(1.0, 0.0, 0.1)
    rows.update({0: (1.0, 0.01, 0.2), 1: (1.0, 0.01, 0.21), 2: (1.0, 0.3, 0.7)})  # rank 2: +0.5 s local
    assert mon.check(5) is None  # not a window boundary
    first = mon.check(10)
    assert [round(r.ratio, 3) for r in first.ranks] == [0.745, 0.76, 1.495] and not first.named
    second = mon.check(20)
    assert [f.rank for f in second.named] == [2] and second.named[0].host == "c"
    assert second.metrics()["straggler/rank"] == 2.0 and second.metrics()["ranks/slowest"] == 2.0
    assert not mon.check(30).named  # still slow: already named
    rows[2] = (1.0, 0.01, 0.2)
    assert not mon.check(40).slow  # recovered
    rows[2] = (1.0, 0.3, 0.7)
    mon.check(50)
    assert [f.rank for f in mon.check(60).named] == [2]  # slow again: named again
    rows.update({0: (1.0, 0.001, 0.2), 1: (1.0, 0.002, 0.2), 2: (1.0, 0.004, 0.2)})  # jitter: nobody
    assert all(r.ratio < 1.01 for r in mon.check(70).ranks)


def test_loss_spike_detector_warmup_threshold_consecutive_and_state():
    det = LossSpikeDetector(LossSpikeConfig(warmup_steps=5, consecutive=2, sigmas=4.0, min_ratio=1.5))
    for step, loss in enumerate([3.0, 2.9, 2.95, 2.8, 2.85], start=1):
        assert det.observe(step, loss) is None
    assert det.observe(6, 2.7) is None
    assert not det.would_confirm(10.0)  # one spiking step does not confirm with consecutive=2
    s = det.observe(7, 10.0)
    assert s is not None and not s.confirmed and s.run == 1
    assert det.would_confirm(9.0)
    state = det.state_dict()
    s = det.observe(8, 9.0)
    assert s.confirmed and s.first_step == 7 and s.threshold == pytest.approx(1.5 * s.mean)
    assert det.observe(9, float("nan")) is None  # non-finite: the bad-step guard's business
    det.load_state_dict(state)
    assert det.run == 1 and det.events == 1  # statistics restored, the process's counts kept
    assert det.observe(10, 2.75) is None and det.run == 0


# ---- the real trainer ----------------------------------------------------------------------------------


def _train(rank, world, data: Path, run_dir: Path, extra: list[str], probe: bool = False) -> dict:
    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from training.config import load_config
    from training.resilience.bad_steps import BadStepGuard
    from training.trainer import Trainer

    cfg = load_config(
        DEBUG_CONFIG,
        config_overrides(
            data,
            run_dir,
            **{
                "tracking.enabled": "true",
                "eval.caption_samples": 0,
                "eval.batches": 0,
                "parallel.tp": 1,
                "train.precision": "fp32",
                "checkpoint.interval_steps": 0,
                "data.batching": "random",
                "train.loss_spike.warmup_steps": 3,
            },
        )
        + extra,
    )
    cfg.validate(world)
    run_dir.mkdir(parents=True, exist_ok=True)  # (`python -m training` makes it)
    topo = init_distributed(cfg.parallel)
    trainer = Trainer(cfg, topo, load_tokenizer(cfg.data.tokenizer).sha256)
    weights = {}
    if probe:  # a checksum of the weights after every step (is an update dropped?)
        after_step = trainer.after_step

        def probed(m):
            weights[trainer.step] = sum(float(p.double().sum()) for p in trainer.engine.module.parameters())
            after_step(m)

        trainer.after_step = probed
    guard_counts = {}
    orig_metrics = BadStepGuard.metrics

    def counted(self):
        guard_counts.update(orig_metrics(self))
        return guard_counts

    BadStepGuard.metrics = counted  # (forked child: patched in this process only)
    code = trainer.train()
    return {
        "bad_steps": guard_counts.get("bad_steps_total", 0),
        "code": code,
        "losses": trainer.losses,
        "weights": weights,
        "engine_skips": trainer.engine.skipped_steps,
        "consumed": trainer.consumed_samples,
        "tracker_run": trainer.tracker.run_id,
    }


def _mlflow(run_dir: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{run_dir.parent / 'mlflow.db'}"), run_id


def _events(run_dir: Path) -> list[dict]:
    p = run_dir / "events.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


def test_profiler_trace_and_phase_metrics(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    extra = [
        "train.steps=6",
        "profile.enabled=true",
        "profile.start_step=2",
        "profile.steps=2",
        "eval.batches=1",
        "eval.interval_steps=3",
        "checkpoint.interval_steps=4",
        "train.micro_batch_size=4",  # 2 micro-batches per step: the phases sum over them
    ]
    [r] = run_ranks(1, _train, tiny_data, run_dir, extra)
    assert r["code"] == 0
    trace = run_dir / "profile" / "rank0_steps2-3.json"
    events = json.loads(trace.read_text())["traceEvents"]
    names = [e.get("name") for e in events]
    assert "ProfilerStep#2" in names and "ProfilerStep#3" in names and "ProfilerStep#4" not in names
    assert {"data_wait", "forward", "backward", "optimizer"} <= set(names)
    assert names.count("forward") == 4  # 2 steps x 2 micro-batches
    assert [p.name for p in (run_dir / "profile").iterdir()] == [trace.name]

    client, run_id = _mlflow(run_dir, r["tracker_run"])
    assert "profile/rank0_steps2-3.json" in {f.path for f in client.list_artifacts(run_id, "profile")}

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    step_time = history("step_time")
    phases = {k: history(f"time/{k}") for k in ("data_wait", "forward", "backward", "optimizer")}
    assert all(sorted(v) == list(range(1, 7)) for v in phases.values())
    shares = [sum(phases[k][s] for k in phases) / step_time[s] for s in range(2, 7)]
    assert 0.8 < statistics.median(shares) <= 1.0, shares  # the rest: token counts, loss copy, DP all-reduce
    assert sorted(history("time/eval")) == [3] and sorted(history("time/checkpoint")) == [4]


def test_a_slow_rank_is_named_and_a_normal_run_names_none(tiny_data, tmp_path):
    extra = [
        "train.steps=8",
        "train.micro_batch_size=4",
        "train.straggler_interval=2",
        "train.straggler_windows=2",
        "train.straggler_factor=1.3",
    ]
    normal = run_ranks(2, _train, tiny_data, tmp_path / "normal", extra)
    assert normal[0]["code"] == 0 and not _events(tmp_path / "normal")
    client, run_id = _mlflow(tmp_path / "normal", normal[0]["tracker_run"])
    ratios = [
        m.value
        for m in sorted(client.get_metric_history(run_id, "ranks/slowest_ratio"), key=lambda m: m.step)
    ]
    assert len(ratios) == 4 and statistics.median(ratios) < 1.3, ratios  # (a busy machine: one may jump)
    assert "straggler/rank" not in client.get_run(run_id).data.metrics

    slow = run_ranks(2, _train, tiny_data, tmp_path / "slow", extra, env={"METALM_TEST_SLOW_RANK": "1:0.4"})
    assert slow[0]["code"] == 0
    [ev] = _events(tmp_path / "slow")
    assert ev["kind"] == "straggler" and ev["rank"] == 1 and ev["step"] == 4 and ev["ratio"] > 1.3
    client, run_id = _mlflow(tmp_path / "slow", slow[0]["tracker_run"])
    run = client.get_run(run_id)
    assert run.data.metrics["straggler/rank"] == 1.0 and run.data.metrics["straggler/ratio"] > 1.3
    assert run.data.tags["straggler.rank"] == "1" and run.data.tags["straggler.host"] == ev["host"]
    assert "stragglers/step_00000004.txt" in {f.path for f in client.list_artifacts(run_id, "stragglers")}


SPIKE = {"METALM_TEST_LOSS_SPIKE": "6:30"}  # the batch of step 6 gets a 30x loss
NO_MLFLOW = "tracking.enabled=false"  # (events.jsonl is written all the same; creating the store takes ~5 s)


def test_loss_spike_log(tiny_data, tmp_path):
    [r] = run_ranks(1, _train, tiny_data, tmp_path / "run", ["train.steps=8"], env=SPIKE)
    assert r["code"] == 0
    [ev] = _events(tmp_path / "run")
    assert ev["kind"] == "loss_spike" and ev["step"] == 6 and ev["action"] == "log" and ev["ratio"] > 10
    losses = dict(r["losses"])
    assert losses[6] > 10 * losses[5]
    client, run_id = _mlflow(tmp_path / "run", r["tracker_run"])
    assert [m.step for m in client.get_metric_history(run_id, "loss_spike/loss")] == [6]
    assert "events.jsonl" in {f.path for f in client.list_artifacts(run_id)}


def test_loss_spike_skip_drops_the_update(tiny_data, tmp_path):
    extra = ["train.steps=8", "train.loss_spike.action=skip", "train.micro_batch_size=4", NO_MLFLOW]
    [r] = run_ranks(1, _train, tiny_data, tmp_path / "run", extra, True, env=SPIKE)
    assert r["code"] == 0 and r["engine_skips"] == 1  # DeepSpeed refused exactly that update
    w = r["weights"]
    assert w[6] == w[5] and w[5] != w[4] and w[7] != w[6]  # weights unchanged by step 6 only
    [ev] = _events(tmp_path / "run")
    assert ev["step"] == 6 and ev["action"] == "skip" and ev["skipped_update"] is True
    assert r["bad_steps"] == 0  # not counted as a non-finite step


def test_loss_spike_rollback_reloads_and_skips_the_bad_data(tiny_data, tmp_path):
    extra = [
        "train.steps=9",
        "train.loss_spike.action=rollback",
        "train.loss_spike.consecutive=2",
        "checkpoint.interval_steps=2",
        NO_MLFLOW,
    ]
    env = {"METALM_TEST_LOSS_SPIKE": "6-7:30"}  # the data of steps 6 and 7 is bad
    [r] = run_ranks(1, _train, tiny_data, tmp_path / "run", extra, env=env)
    assert r["code"] == 0
    steps = [s for s, _ in r["losses"]]
    # spikes at 6 and 7 -> step 7 is not kept: back to checkpoint 4 (the newest before the window),
    # step 5 redone, then steps 6.. train on the data after the window
    assert steps == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8, 9]
    first, second = dict(r["losses"][:6]), dict(r["losses"][6:])
    assert second[5] == first[5]  # the replayed step is exact
    assert all(v < 2 * first[5] for v in second.values())  # the bad data is not met again
    assert r["consumed"] == 11 * 8  # 9 steps trained + 2 steps of data skipped
    kinds = [(e["kind"], e["step"]) for e in _events(tmp_path / "run")]
    assert kinds == [("loss_spike", 7), ("loss_spike_rollback", 7)]
    rb = _events(tmp_path / "run")[1]
    assert rb["to_step"] == 4 and rb["skip_data_of_steps"] == [6, 7]


def test_loss_spike_stop_exits_78(tiny_data, tmp_path):
    extra = ["train.steps=8", "train.loss_spike.action=stop", NO_MLFLOW]
    [r] = run_ranks(1, _train, tiny_data, tmp_path / "run", extra, env=SPIKE)
    assert r["code"] == exit_codes.LOSS_SPIKE == 78
    assert [s for s, _ in r["losses"]] == [1, 2, 3, 4, 5]  # step 6 spiked: stopped before logging it
    [ev] = _events(tmp_path / "run")
    assert ev["action"] == "stop" and ev["step"] == 6 and math.isfinite(ev["loss"])
