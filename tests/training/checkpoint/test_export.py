"""Export a TP=2 ZeRO-1 checkpoint of the debug MetaLM, reload it at TP=1 and TP=2: same loss on a fixed batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import UserError
from tests.batches import make_batch
from tests.distributed import run_ranks

MODEL_OVERRIDES = {"vocab_size": 500}  # 500 -> padded vocab rows that the export must drop


def _model_cfg():
    from training.model import model_config_from_preset

    return model_config_from_preset("debug", **MODEL_OVERRIDES)


def _fixed_loss(model) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return sum(
            model(make_batch(model.cfg, kind, seed=10 + i)).item() for i, kind in enumerate(("text", "image"))
        )


def _train_and_save(rank, world, run_dir):
    import deepspeed
    import torch

    from parallel import ParallelConfig, init_distributed
    from parallel.mpu import TopologyMPU
    from training.checkpoint import CheckpointConfig, CheckpointManager
    from training.model import MetaLM

    topo = init_distributed(ParallelConfig(tp=2))
    model = MetaLM(_model_cfg(), topo)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 1},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=opt, config=ds, mpu=TopologyMPU(topo), dist_init_required=False
    )
    for i in range(2):
        loss = engine(make_batch(model.cfg, "mixed", seed=i))
        engine.backward(loss)
        engine.step()
    path = CheckpointManager(CheckpointConfig(), Path(run_dir), topo).save(
        engine, 2, {"step": 2, "parallel": {"tp": 2, "dp": 1, "world": 2}}
    )
    return _fixed_loss(engine.module), str(path)


def _reload(rank, world, tp, file):
    from parallel import ParallelConfig, init_distributed
    from training.checkpoint.exported_weights import load_exported_weights
    from training.model import MetaLM

    topo = init_distributed(ParallelConfig(tp=tp))
    model = MetaLM(_model_cfg(), topo)
    before = _fixed_loss(model)
    load_exported_weights(model, file, topo)
    return before, _fixed_loss(model)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from training.config import TrainingConfig
    from training.export import export_checkpoint

    root = tmp_path_factory.mktemp("export")
    run_dir = root / "run"
    run_dir.mkdir()
    tok = root / "tok"
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes(b"not a real model")
    cfg = TrainingConfig(model=_model_cfg())
    cfg.data.tokenizer = str(tok)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    loss, ckpt = run_ranks(2, _train_and_save, str(run_dir))[0]
    out = root / "out" / "metalm.safetensors"
    info = export_checkpoint(ckpt, out)
    return loss, Path(ckpt), out, info


def test_export_writes_full_tensors_config_and_tokenizer(exported):
    from safetensors import safe_open

    _, ckpt, out, info = exported
    assert info["step"] == 2 and (out.parent / "config.yaml").is_file()
    assert (out.parent / "tokenizer" / "tokenizer.model").read_bytes() == b"not a real model"
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["saved_tp"] == "2"
        emb = f.get_tensor("embedding.weight")
    assert emb.shape[0] == 500  # TP shards gathered, vocab padding removed


@pytest.mark.parametrize("tp", [1, 2])
def test_exported_weights_give_the_same_loss_at_another_tp(exported, tp):
    loss, _, out, _ = exported
    before, after = run_ranks(tp, _reload, tp, str(out))[0]
    assert abs(before - loss) > 1e-3  # a fresh model differs, so the load is what makes them equal
    assert after == pytest.approx(loss, abs=1e-5)


def test_damaged_checkpoint_is_not_exported(exported, tmp_path):
    import shutil

    from training.export import export_checkpoint

    _, ckpt, _, _ = exported
    bad = tmp_path / "checkpoints" / ckpt.name
    shutil.copytree(ckpt, bad)
    shard = bad / "mp_rank_01_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match="mp_rank_01_model_states.pt: size"):
        export_checkpoint(bad, tmp_path / "x.safetensors")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["parallel"]["tp"] == 2


@pytest.mark.parametrize("tp", [1, 2])
def test_a_checkpoint_folder_starts_a_run_at_another_tp(exported, tp):
    """A finetuning stage starts from a pretraining checkpoint folder directly (weights only)."""
    from training.checkpoint.exported_weights import describe_source

    loss, ckpt, _, _ = exported
    info = describe_source(ckpt)
    assert (info["kind"], info["step"], info["saved_tp"]) == ("checkpoint", 2, 2)
    before, after = run_ranks(tp, _reload, tp, str(ckpt))[0]
    assert abs(before - loss) > 1e-3
    assert after == pytest.approx(loss, abs=1e-5)


def test_bad_starting_sources_are_named(exported, tmp_path):
    from training.checkpoint.exported_weights import describe_source

    _, ckpt, out, _ = exported
    assert describe_source(out)["kind"] == "export"
    with pytest.raises(UserError, match="no such file"):
        describe_source(tmp_path / "nope.safetensors")
    (tmp_path / "partial").mkdir()
    with pytest.raises(UserError, match="not a committed checkpoint"):
        describe_source(tmp_path / "partial")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a safetensors file"):
        describe_source(tmp_path / "junk.safetensors")
