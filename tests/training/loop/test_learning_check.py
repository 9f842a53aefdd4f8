"""The learning check measures image use: ~0 gap for an untrained model, >= 0.5 nats/token once trained
on image-determined captions (tiny model, forked rank, a few seconds)."""

from __future__ import annotations

from pathlib import Path

from tests.distributed import run_ranks
from tests.paths import DEBUG_CONFIG
from tests.training.shards import config_overrides

CONFIG = DEBUG_CONFIG


def _gap_before_after(rank, world, data: Path, run_dir: Path, steps: int):
    from parallel.groups import init_distributed
    from training.config import load_config
    from training.learning_check import caption_loss_gap, held_out_pairs
    from training.trainer import Trainer

    cfg = load_config(
        CONFIG,
        config_overrides(
            data,
            run_dir,
            **{
                "tracking.enabled": "false",
                "checkpoint.interval_steps": 0,
                "eval.caption_samples": 0,
                "eval.batches": 0,
                "parallel.tp": 1,
                "train.steps": steps,
                "optim.lr": 3e-3,
                "optim.warmup_steps": 5,
                "train.global_batch_size": 16,
                "train.micro_batch_size": 16,
            },
        )
        + [f"data.train=[{{path: {data / 'pairs-train'}}}]"],
    )
    topo = init_distributed(cfg.parallel)
    trainer = Trainer(cfg, topo)
    pairs = held_out_pairs(cfg, 64)
    before = caption_loss_gap(trainer.engine.module, cfg, pairs, 16, topo.device)
    trainer.engine.train()
    trainer.train()
    after = caption_loss_gap(trainer.engine.module, cfg, pairs, 16, topo.device)
    return before, after


def test_gap_is_zero_untrained_and_large_after_training(tiny_data, tmp_path):
    [(before, after)] = run_ranks(1, _gap_before_after, tiny_data, tmp_path / "run", 250)
    assert before["pairs"] == 64 and before["caption_tokens"] > 64
    assert abs(before["gap"]) < 0.2, before  # random weights barely use the image
    assert after["true_image_loss"] < before["true_image_loss"]
    assert after["gap"] >= 0.5, after  # captions are determined by the image: the trained model uses it
