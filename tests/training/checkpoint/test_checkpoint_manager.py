"""CheckpointManager with a real DeepSpeed engine in 2 forked gloo ranks: commit protocol, exact resume,
damaged / partial checkpoints skipped by name, disk-full saves, pruning, refusal of mismatched models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.errors import UserError
from tests.distributed import run_ranks
from tests.training.checkpoint.toy_engine import init_gloo, make_engine, train_steps
from training.checkpoint import CheckpointConfig, CheckpointManager, CheckpointSaveError, list_checkpoints


def _exact_resume(rank, world, run_dir, zero_stage):
    init_gloo(rank, world)
    mgr = CheckpointManager(CheckpointConfig(interval_steps=3), Path(run_dir))
    eng = make_engine(zero_stage)
    first = train_steps(eng, 3)
    assert mgr.should_save(3) and not mgr.should_save(4)
    path = mgr.save(eng, 3, {"step": 3, "consumed_samples": 24, "mlflow_run_id": "abc"})
    straight = train_steps(eng, 3)

    eng2 = make_engine(zero_stage, seed=123)  # different init: everything must come from the checkpoint
    mgr2 = CheckpointManager(CheckpointConfig(), Path(run_dir))
    state = mgr2.resume(eng2)
    resumed = train_steps(eng2, 3)
    return first, straight, resumed, state["step"], state["mlflow_run_id"], str(path)


@pytest.mark.parametrize("zero_stage", [2, 3])  # ZeRO-1 (TP=2): the end-to-end test
def test_resume_is_exact(tmp_path, zero_stage):
    res = run_ranks(2, _exact_resume, str(tmp_path), zero_stage)
    first, straight, resumed, step, run_id, path = res[0]
    assert straight == resumed  # bit-exact: weights, Adam moments, LR schedule, RNG of every rank
    assert step == 3 and run_id == "abc"
    ckpt = Path(path)
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "MANIFEST.json").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text() == ckpt.name
    files = json.loads((ckpt / "MANIFEST.json").read_text())["files"]
    assert "trainer_state.json" in files and any(f.endswith("optim_states.pt") for f in files)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert len(state["rng"]) == 2 and state["rng"][0]["torch"] != state["rng"][1]["torch"]


def _damage(ckpt: Path, how: str) -> str:
    """Damage checkpoint `ckpt`; return the file name the report must mention."""
    shard = sorted(ckpt.glob("*optim_states.pt"))[-1]
    if how == "truncated":
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
        return shard.name
    if how == "flipped_byte":
        with open(shard, "r+b") as f:
            f.seek(shard.stat().st_size // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0x40]))
        return shard.name
    if how == "missing_shard":
        shard.unlink()
        return shard.name
    if how == "missing_manifest":
        (ckpt / "MANIFEST.json").unlink()
        return "MANIFEST.json"
    if how == "edited_manifest":
        p = ckpt / "MANIFEST.json"
        p.write_text(p.read_text().replace('"step": 4', '"step": 5'))
        return "MANIFEST.json"
    if how == "no_complete":
        (ckpt / "COMPLETE").unlink()
        return "COMPLETE"
    raise ValueError(how)


DAMAGES = ["truncated", "flipped_byte", "missing_shard", "missing_manifest", "edited_manifest", "no_complete"]


def _damaged(rank, world, run_dir):
    import torch.distributed as dist

    init_gloo(rank, world)
    root = Path(run_dir) / "checkpoints"
    mgr = CheckpointManager(CheckpointConfig(interval_steps=2, keep_last=3), Path(run_dir))
    eng = make_engine(1)
    train_steps(eng, 2)
    mgr.save(eng, 2, {"step": 2})
    after2 = train_steps(eng, 1)
    train_steps(eng, 1)
    reports = {}
    for how in DAMAGES:
        mgr.save(eng, 4, {"step": 4})
        dist.barrier()
        name = _damage(root / "step_00000004", how) if rank == 0 else None
        dist.barrier()
        eng2 = make_engine(1, seed=7)
        mgr2 = CheckpointManager(CheckpointConfig(), Path(run_dir))
        path, skipped = mgr2.find_valid(list_checkpoints(root))
        state = mgr2.load(eng2, path)
        same = train_steps(eng2, 1) == after2
        train_steps(eng2, 1)
        mgr2.save(eng2, 4, {"step": 4})  # the run reaches step 4 again: the damaged folder is replaced
        reports[how] = (name, skipped, state["step"], same, mgr2.verify(root / "step_00000004"))
        if rank == 0:
            import shutil

            shutil.rmtree(root / "step_00000004")
        dist.barrier()
        mgr.last_saved_step = None
    return reports


def test_damaged_checkpoints_are_reported_and_skipped(tmp_path):
    reports = run_ranks(2, _damaged, str(tmp_path))[0]
    for how, (name, skipped, step, same, problems_after_resave) in reports.items():
        assert step == 2, how  # the previous checkpoint was used ...
        assert same, how  # ... and resumed exactly
        assert any(name in s and "step_00000004" in s for s in skipped), (how, skipped)
        assert problems_after_resave == [], (how, problems_after_resave)


def _disk_full(rank, world, run_dir):
    init_gloo(rank, world)
    os.environ["METALM_TEST_CKPT_ENOSPC"] = "4:1"  # rank 1's shard writes of step 4 fail
    root = Path(run_dir) / "checkpoints"
    mgr = CheckpointManager(CheckpointConfig(interval_steps=2), Path(run_dir))
    eng = make_engine(1)
    train_steps(eng, 2)
    mgr.save(eng, 2, {"step": 2})
    train_steps(eng, 2)
    err = None
    try:
        mgr.save(eng, 4, {"step": 4})
    except CheckpointSaveError as e:
        err = str(e)
    after_failure = [p.name for p in list_checkpoints(root)]
    latest = (root / "latest").read_text()
    losses = train_steps(eng, 2)  # training state not corrupted: steps go on
    mgr.save(eng, 6, {"step": 6})  # and the next save works
    return err, after_failure, latest, losses, [p.name for p in list_checkpoints(root)]


def test_disk_full_save_fails_cleanly_on_every_rank(tmp_path):
    for err, after_failure, latest, losses, final in run_ranks(2, _disk_full, str(tmp_path)):
        assert err is not None and "No space left on device" in err and "rank 1" in err
        assert after_failure == ["step_00000002"] and latest == "step_00000002"
        assert all(x == x and x < 1e6 for x in losses)
        assert final == ["step_00000006", "step_00000002"]


def _partial_and_prune(rank, world, run_dir):
    import torch.distributed as dist

    init_gloo(rank, world)
    root = Path(run_dir) / "checkpoints"
    mgr = CheckpointManager(CheckpointConfig(interval_steps=1, keep_last=2), Path(run_dir))
    eng = make_engine(1)
    seen = []
    for step in (1, 2, 3):
        train_steps(eng, 1)
        mgr.save(eng, step, {"step": step})
        seen.append([p.name for p in list_checkpoints(root)])
    # a save that crashed after the shards were written: DeepSpeed files, no MANIFEST/COMPLETE
    train_steps(eng, 1)
    eng.save_checkpoint(str(root), tag="step_00000004", save_latest=False)
    dist.barrier()
    latest = (root / "latest").read_text()
    mgr2 = CheckpointManager(CheckpointConfig(), Path(run_dir))
    state = mgr2.resume(make_engine(1, seed=5))
    again = mgr.save(eng, 3, {"step": 3})  # same step already committed: no-op
    return seen, latest, state["step"], again.name


def test_partial_checkpoint_ignored_and_old_ones_pruned(tmp_path):
    seen, latest, step, again = run_ranks(2, _partial_and_prune, str(tmp_path))[0]
    assert seen == [["step_00000001"], ["step_00000002", "step_00000001"], ["step_00000003", "step_00000002"]]
    assert latest == "step_00000003" and step == 3 and again == "step_00000003"


def _mismatch(rank, world, run_dir):
    init_gloo(rank, world)
    mgr = CheckpointManager(CheckpointConfig(), Path(run_dir))
    eng = make_engine(1)
    train_steps(eng, 1)
    mgr.save(eng, 1, {"step": 1, "tokenizer": "aaa"})
    out = []
    for hidden, expect in [(48, None), (32, {"tokenizer": "bbb"})]:
        try:
            mgr.resume(make_engine(1, hidden=hidden), expect=expect)
            out.append("")
        except UserError as e:
            out.append(str(e))
    return out


def test_mismatched_model_or_tokenizer_refused(tmp_path):
    shape_err, tok_err = run_ranks(2, _mismatch, str(tmp_path))[0]
    assert "parameter shapes differ" in shape_err and "0.weight" in shape_err
    assert "tokenizer differs" in tok_err


def test_config_problems_named():
    problems = CheckpointConfig(
        interval_steps=-1, keep_last=1, resume="/nope", load_weights_from="/x.bin"
    ).problems()
    text = "\n".join(problems)
    for key in ("interval_steps", "keep_last", "checkpoint.resume"):
        assert key in text
    assert CheckpointConfig().problems() == []
    # load_weights_from is checked with the data (it must exist and match the run): see
    # training/config/checks.py::starting_model_problems
    from training.checkpoint.exported_weights import describe_source

    with pytest.raises(UserError, match="load_weights_from='/x.bin': no such file"):
        describe_source("/x.bin")


def _full_optimizer_state(eng) -> dict:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    return {
        n: [safe_get_full_fp32_param(p).numpy().copy()]
        + [safe_get_full_optimizer_state(p, k).numpy().copy() for k in ("exp_avg", "exp_avg_sq")]
        for n, p in eng.module.named_parameters()
    }


def _save_dp(rank, world, run_dir, zero_stage):
    init_gloo(rank, world)
    eng = make_engine(zero_stage)
    train_steps(eng, 3)
    CheckpointManager(CheckpointConfig(), Path(run_dir)).save(eng, 3, {"step": 3})
    return _full_optimizer_state(eng), eng.lr_scheduler.get_last_lr()


def _resume_dp(rank, world, run_dir, zero_stage):
    init_gloo(rank, world)
    eng = make_engine(zero_stage, seed=9)
    state = CheckpointManager(CheckpointConfig(), Path(run_dir)).resume(eng)
    full, lr, global_steps = _full_optimizer_state(eng), eng.lr_scheduler.get_last_lr(), eng.global_steps
    losses = train_steps(eng, 1)
    return full, lr, global_steps, state["step"], losses


@pytest.mark.parametrize("zero_stage", [2])
def test_resume_at_another_dp_size_keeps_optimizer_state(tmp_path, zero_stage):
    import numpy as np

    saved, lr = run_ranks(2, _save_dp, str(tmp_path), zero_stage)[0]  # DP=2
    full, lr2, global_steps, step, losses = run_ranks(1, _resume_dp, str(tmp_path), zero_stage)[0]  # DP=1
    assert step == 3 and global_steps == 3 and lr2 == lr
    for name, (w, m, v) in saved.items():
        np.testing.assert_array_equal(full[name][0], w, err_msg=name)
        np.testing.assert_array_equal(full[name][1], m, err_msg=name)
        np.testing.assert_array_equal(full[name][2], v, err_msg=name)
    assert all(np.isfinite(losses))
    assert not (tmp_path / "checkpoints" / ".universal").exists()  # the converted copy is removed


def _real_disk_full(rank, world, run_dir):
    import subprocess

    import torch.distributed as dist

    init_gloo(rank, world)
    root = Path(run_dir) / "checkpoints"
    mgr = CheckpointManager(CheckpointConfig(interval_steps=2), Path(run_dir))
    eng = make_engine(1, hidden=512)
    train_steps(eng, 2)
    mgr.save(eng, 2, {"step": 2})
    dist.barrier()
    if rank == 0:  # shrink the file system: room for about half of another checkpoint
        used = sum(p.stat().st_size for p in Path(run_dir).rglob("*") if p.is_file())
        size_kb = (used + used // 2) // 1024 + 64
        subprocess.run(["mount", "-o", f"remount,size={size_kb}k", run_dir], check=True)
    dist.barrier()
    train_steps(eng, 2)
    err = None
    try:
        mgr.save(eng, 4, {"step": 4})
    except CheckpointSaveError as e:
        err = str(e)
    names = [p.name for p in list_checkpoints(root)]
    state = CheckpointManager(CheckpointConfig(), Path(run_dir)).resume(make_engine(1, hidden=512, seed=3))
    return err, names, (root / "latest").read_text(), state["step"]


def test_real_disk_full_on_a_small_tmpfs(tmp_path):
    import subprocess

    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]).returncode
    ):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        for err, names, latest, step in run_ranks(2, _real_disk_full, str(mnt)):
            assert err is not None and "No space left on device" in err
            assert names == ["step_00000002"] and latest == "step_00000002" and step == 2
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
