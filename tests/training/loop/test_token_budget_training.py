"""The training loop with token-budget micro-batches and token loss weighting (forked gloo ranks, DP=2):
a run resumed from its step-3 checkpoint equals the uninterrupted run, step for step."""

from __future__ import annotations

from tests.training.loop.test_trainer import _train

BUDGET = [
    "parallel.tp=1",
    "data.micro_batch_tokens=256",  # image-text rows (<= 128 positions) 2 per micro-batch, text rows (63) 4
    "data.batching=per_stream",
    "data.train.0.proportion=0.5",  # samples half/half: every third micro-batch is text (2 vs 4 rows)
    "data.train.1.proportion=0.5",
    "train.loss_weighting=token",
    "train.micro_batch_size=2",
    "train.global_batch_size=8",  # 2 accumulation steps x DP 2 micro-batches per step
    "checkpoint.interval_steps=3",
    "optim.warmup_steps=5",
    "optim.decay=constant",
    "model.dropout=0.1",
]


def test_resume_equals_uninterrupted_with_token_budget(tiny_data, tmp_path):
    full = _run(tiny_data, tmp_path / "full", 6)
    first = _run(tiny_data, tmp_path / "split", 3)
    second = _run(tiny_data, tmp_path / "split", 6)
    assert [s for s, _ in second[0]["losses"]] == [4, 5, 6]
    assert first[0]["losses"] == full[0]["losses"][:3]
    assert second[0]["losses"] == full[0]["losses"][3:], "resume with the token budget must be exact"
    assert full[0]["losses"] == full[1]["losses"]  # the DP-reduced token-mean loss: the same on both ranks
    assert all(o["code"] == 0 and o["optimizer_steps"] == 6 and o["micro_steps"] == 12 for o in full)


def _run(data, run_dir, steps):
    from tests.distributed import run_ranks

    return run_ranks(2, _train, data, run_dir, BUDGET + [f"train.steps={steps}"])
