"""The DeepSpeed training loop in forked gloo ranks (no launcher): TP=2 == TP=1, resume == uninterrupted,
a 4-process TP=2 x DP=2 run, and the bf16 / fp16 (dynamic loss scale) paths on tiny shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed import run_ranks
from tests.paths import DEBUG_CONFIG
from tests.training.shards import config_overrides

CONFIG = DEBUG_CONFIG


def _train(rank, world, data: Path, run_dir: Path, extra: list[str], fp16_on_cpu: bool = False) -> dict:
    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from training.config import load_config
    from training.trainer import Trainer

    cfg = load_config(
        CONFIG,
        config_overrides(
            data,
            run_dir,
            **{"tracking.enabled": "false", "checkpoint.interval_steps": 0, "eval.caption_samples": 0},
        )
        + extra,
    )
    if fp16_on_cpu:
        from parallel.cpu_compat import allow_fp16_on_cpu

        allow_fp16_on_cpu()
    cfg.validate(world)
    topo = init_distributed(cfg.parallel)
    trainer = Trainer(cfg, topo, load_tokenizer(cfg.data.tokenizer).sha256)
    code = trainer.train()
    m = trainer.last_metrics
    return {
        "code": code,
        "losses": trainer.losses,
        "loss_scale": m["loss_scale"],
        "grad_norm": m["grad_norm"],
        "tp": topo.tp_size,
        "dp": topo.dp_size,
        "optimizer_steps": trainer.engine.global_steps,
        "micro_steps": trainer.engine.micro_steps,
    }


def test_tp2_loss_equals_tp1_for_10_steps(tiny_data, tmp_path):
    common = ["train.steps=10", "train.precision=fp32", "model.dropout=0.0", "data.batching=random"]
    [one] = run_ranks(1, _train, tiny_data, tmp_path / "tp1", common + ["parallel.tp=1"])
    two = run_ranks(2, _train, tiny_data, tmp_path / "tp2", common + ["parallel.tp=2"])
    assert two[0]["tp"] == 2 and two[0]["dp"] == 1
    a = [loss for _, loss in one["losses"]]
    b = [loss for _, loss in two[0]["losses"]]
    assert len(a) == len(b) == 10 and a[-1] < a[0]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, list(zip(a, b))


def test_resume_equals_uninterrupted_dp2_zero2(tiny_data, tmp_path):
    common = [
        "parallel.tp=1",
        "train.zero_stage=2",
        "train.micro_batch_size=4",
        "train.global_batch_size=8",
        "checkpoint.interval_steps=3",
        "optim.warmup_steps=5",
        "optim.decay=constant",
    ]
    # (a schedule that does not depend on train.steps: the two halves are launched with different steps)
    full = run_ranks(2, _train, tiny_data, tmp_path / "full", common + ["train.steps=6"])
    first = run_ranks(2, _train, tiny_data, tmp_path / "split", common + ["train.steps=3"])
    assert (tmp_path / "split" / "checkpoints" / "step_00000003" / "COMPLETE").is_file()
    second = run_ranks(2, _train, tiny_data, tmp_path / "split", common + ["train.steps=6"])
    assert [s for s, _ in second[0]["losses"]] == [4, 5, 6]  # resumed after step 3
    assert first[0]["losses"] == full[0]["losses"][:3]
    assert second[0]["losses"] == full[0]["losses"][3:], "fp32 resume must be exact"
    assert full[0]["losses"] == full[1]["losses"]  # DP-reduced loss: the same on both ranks


def test_gradient_accumulation_updates_once_per_global_batch(tiny_data, tmp_path):
    extra = ["parallel.tp=1", "train.micro_batch_size=2", "train.global_batch_size=8", "train.steps=3"]
    [r] = run_ranks(1, _train, tiny_data, tmp_path / "acc", extra)
    assert (
        r["code"] == 0 and r["optimizer_steps"] == 3 and r["micro_steps"] == 12
    )  # 8 = 2 x 4 accumulation x 1


def test_unreachable_tracking_server_does_not_stop_training(tiny_data, tmp_path):
    from tests.distributed import free_port

    extra = [
        "parallel.tp=1",
        "train.steps=2",
        "tracking.enabled=true",
        f"tracking.uri=http://127.0.0.1:{free_port()}",
    ]
    [r] = run_ranks(1, _train, tiny_data, tmp_path / "down", extra)
    assert r["code"] == 0 and [s for s, _ in r["losses"]] == [1, 2]


def test_zero3_at_tp1_trains_and_captions(tiny_data, tmp_path):
    extra = [
        "parallel.tp=1",
        "train.zero_stage=3",
        "train.micro_batch_size=4",
        "train.global_batch_size=8",
        "train.steps=3",
        "eval.caption_samples=1",
    ]
    out = run_ranks(2, _train, tiny_data, tmp_path / "z3", extra)
    assert all(o["code"] == 0 and o["dp"] == 2 for o in out) and out[0]["losses"] == out[1]["losses"]


def test_four_processes_tp2_dp2(tiny_data, tmp_path):
    out = run_ranks(
        4,
        _train,
        tiny_data,
        tmp_path / "r",
        ["parallel.tp=2", "train.micro_batch_size=4", "train.global_batch_size=8", "train.steps=3"],
    )
    assert [(o["tp"], o["dp"]) for o in out] == [(2, 2)] * 4
    assert all(o["code"] == 0 and o["losses"] == out[0]["losses"] for o in out)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_paths(tiny_data, tmp_path, precision):
    # correctness of the code path only (bf16/fp16 matmuls are >100x slower on this CPU): 2 tiny steps
    [r] = run_ranks(
        1,
        _train,
        tiny_data,
        tmp_path / precision,
        [
            f"train.precision={precision}",
            "parallel.tp=1",
            "train.steps=2",
            "train.micro_batch_size=2",
            "train.global_batch_size=2",
            "eval.batches=0",
        ],
        precision == "fp16",
    )
    assert r["code"] == 0 and all(loss == loss for _, loss in r["losses"])
    if precision == "fp16":
        assert r["loss_scale"] is not None and r["loss_scale"] > 1  # dynamic loss scaling is on
    else:
        assert r["loss_scale"] is None


def test_resume_exactly_at_the_end_of_an_epoch(tiny_data, tmp_path):
    """Found by the chaos soak: a checkpoint at the last step of an epoch left a loader with nothing
    left to give, and every restart failed. The resumed run must go on with the next epoch, exactly."""
    # tiny_data: 256 pairs + 64 text samples = 320 samples = 40 steps of 8 at world size 1
    common = [
        "parallel.tp=1",
        "train.micro_batch_size=8",
        "train.global_batch_size=8",
        "train.precision=fp32",
        "data.batching=random",
        "checkpoint.interval_steps=40",
        "optim.decay=constant",
        "optim.warmup_steps=0",
    ]
    [full] = run_ranks(1, _train, tiny_data, tmp_path / "full", common + ["train.steps=42"])
    run_ranks(1, _train, tiny_data, tmp_path / "split", common + ["train.steps=40"])
    [second] = run_ranks(1, _train, tiny_data, tmp_path / "split", common + ["train.steps=42"])
    assert second["code"] == 0 and [s for s, _ in second["losses"]] == [41, 42]
    assert second["losses"] == full["losses"][40:]
