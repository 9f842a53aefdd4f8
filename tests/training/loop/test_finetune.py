"""Finetuning stages through the real loop (forked gloo ranks): start from a pretraining checkpoint at
another TP (weights only, fresh optimizer), packed task rows, the decoder frozen, an exact resume, and an
honest learning check (held-out target loss falls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed import run_ranks
from tests.paths import CONFIGS
from tests.training.shards import config_overrides

FINETUNE = CONFIGS / "finetune" / "debug-shapes.yaml"


def _overrides(data: Path, run_dir: Path, extra: list[str]) -> list[str]:
    return (
        config_overrides(
            data,
            run_dir,
            **{"tracking.enabled": "false", "eval.caption_samples": 0, "train.precision": "fp32"},
        )
        + extra
    )


def _pretrain(rank, world, data: Path, run_dir: Path) -> str:
    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from training.config import load_config
    from training.trainer import Trainer

    cfg = load_config(
        CONFIGS / "debug.yaml", _overrides(data, run_dir, ["train.steps=4", "checkpoint.interval_steps=4"])
    )
    cfg.validate(world)
    trainer = Trainer(cfg, init_distributed(cfg.parallel), load_tokenizer(cfg.data.tokenizer).sha256)
    assert trainer.train() == 0
    return str(run_dir)


def _finetune(rank, world, data: Path, run_dir: Path, start: str, extra: list[str]) -> dict:
    import torch

    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from training.config import load_config
    from training.trainer import Trainer

    ov = _overrides(
        data,
        run_dir,
        [
            f"data.train=[{{path: {data / 'tasks-train'}}}]",
            f"data.val=[{{path: {data / 'tasks-val'}}}]",
            f"checkpoint.load_weights_from={start}",
            "eval.interval_steps=0",
            "eval.batches=8",
        ]
        + extra,
    )
    cfg = load_config(FINETUNE, ov)
    cfg.validate(world)
    trainer = Trainer(cfg, init_distributed(cfg.parallel), load_tokenizer(cfg.data.tokenizer).sha256)
    module = trainer.engine.module
    before_val = trainer.validate()
    decoder0 = {n: p.detach().clone() for n, p in module.named_parameters() if n.startswith("decoder.")}
    code = trainer.train()
    after_val = trainer.validate()
    unchanged = all(torch.equal(p, decoder0[n]) for n, p in module.named_parameters() if n in decoder0)
    batch = next(trainer.batches())
    return {
        "code": code,
        "losses": trainer.losses,
        "val": (before_val, after_val),
        "decoder_unchanged": unchanged,
        "packed": batch.packed,
        "rows": batch.batch_size,
        "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain") / "run"
    run_ranks(2, _pretrain, tiny_data, run)  # TP=2 (debug.yaml)
    return run


def test_finetune_from_a_tp2_checkpoint_at_tp1_learns_the_task(tiny_data, tmp_path, pretrained):
    extra = ["parallel.tp=1", "train.steps=40", "optim.warmup_steps=5", "checkpoint.interval_steps=0"]
    [r] = run_ranks(1, _finetune, tiny_data, tmp_path / "ft", str(pretrained), extra)
    assert r["code"] == 0 and r["packed"] and r["rows"] < 32  # 32 examples packed into fewer rows
    before, after = r["val"]
    assert after < 0.5 * before, r["val"]  # held-out target loss (answers only) falls: the task is learnt


def test_frozen_decoder_stays_bit_identical(tiny_data, tmp_path, pretrained):
    extra = ["train.steps=3", "model.freeze.decoder=true", "checkpoint.interval_steps=0"]
    r = run_ranks(2, _finetune, tiny_data, tmp_path / "frozen", str(pretrained), extra)[0]
    assert r["code"] == 0 and r["decoder_unchanged"]
    free = run_ranks(2, _finetune, tiny_data, tmp_path / "free", str(pretrained), extra[:1] + extra[2:])[0]
    assert r["trainable"] < free["trainable"]


def test_finetune_resume_equals_uninterrupted(tiny_data, tmp_path, pretrained):
    common = ["checkpoint.interval_steps=3", "optim.decay=constant", "optim.warmup_steps=2"]
    full = run_ranks(2, _finetune, tiny_data, tmp_path / "full", str(pretrained), common + ["train.steps=6"])
    run_ranks(2, _finetune, tiny_data, tmp_path / "split", str(pretrained), common + ["train.steps=3"])
    second = run_ranks(
        2, _finetune, tiny_data, tmp_path / "split", str(pretrained), common + ["train.steps=6"]
    )
    assert [s for s, _ in second[0]["losses"]] == [4, 5, 6]  # resumed from its own checkpoint, not the parent
    assert second[0]["losses"] == full[0]["losses"][3:]
