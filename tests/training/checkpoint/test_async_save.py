"""Non-blocking checkpoint saves (`checkpoint.async_save`): the host copy is a snapshot, the background
write commits through the same protocol (exact resume), a failed write is never committed, a SIGKILL
during the write leaves `latest` on the previous checkpoint (resume exact), and a preemption while a
save is in flight exits 75 with both checkpoints committed."""

from __future__ import annotations

import json
import os
import signal
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from common import exit_codes
from tests.distributed import run_ranks
from tests.paths import DEBUG_CONFIG
from tests.training.checkpoint.toy_engine import init_gloo, make_engine, train_steps
from tests.training.shards import config_overrides
from training.checkpoint import CheckpointConfig, CheckpointManager, CheckpointSaveError
from training.checkpoint.async_save import host_copy


def test_host_copy_is_a_snapshot_that_keeps_storage_sharing():
    flat = torch.arange(10, dtype=torch.float32)
    p = torch.nn.Parameter(torch.ones(3))
    sd = OrderedDict(a=flat[:4], b=flat[4:], p=p, step=torch.tensor(3), meta={"lr": [0.1, (1, 2)], "n": None})
    c = host_copy(sd)
    flat.add_(100.0)  # training goes on: the copy must not change
    p.data.mul_(5.0)
    assert type(c) is OrderedDict and c["meta"] == {"lr": [0.1, (1, 2)], "n": None}
    assert torch.equal(c["a"], torch.arange(4.0)) and torch.equal(c["b"], torch.arange(4.0, 10.0))
    assert c["a"].untyped_storage().data_ptr() == c["b"].untyped_storage().data_ptr()  # one storage, as saved
    assert c["b"].storage_offset() == 4
    assert isinstance(c["p"], torch.nn.Parameter) and torch.equal(c["p"], torch.ones(3))
    assert int(c["step"]) == 3 and c["meta"]["lr"] is not sd["meta"]["lr"]


def _async_resume(rank, world, run_dir):
    init_gloo(rank, world)
    mgr = CheckpointManager(CheckpointConfig(interval_steps=3, async_save=True), Path(run_dir))
    eng = make_engine(2)
    train_steps(eng, 1)
    mgr.save(eng, 1, {"step": 1})
    mgr.wait()
    pool_bytes = mgr._recorder.host_pool.nbytes  # the buffers of save 1, reused by save 3
    train_steps(eng, 2)
    path = mgr.save(eng, 3, {"step": 3, "mlflow_run_id": "abc"})
    in_flight = mgr.in_flight_step
    committed_early = (path / "COMPLETE").exists()
    straight = []
    for _ in range(3):  # training goes on (and changes the weights) while the files are written
        straight += train_steps(eng, 1)
        mgr.poll()
    mgr.wait()
    assert pool_bytes > 0 and mgr._recorder.host_pool.nbytes == pool_bytes  # no new host memory
    eng2 = make_engine(2, seed=123)  # different init: everything must come from the checkpoint
    state = CheckpointManager(CheckpointConfig(), Path(run_dir)).resume(eng2)
    return straight, train_steps(eng2, 3), state["step"], in_flight, committed_early


def test_async_save_commits_the_same_protocol_and_resumes_exactly(tmp_path):
    # each file write sleeps 0.3 s first: the steps after the save run while it is being written
    res = run_ranks(2, _async_resume, str(tmp_path), env={"METALM_TEST_CKPT_SLOW_WRITE": "0.3"})
    straight, resumed, step, in_flight, committed_early = res[0]
    assert in_flight == 3 and not committed_early  # save() returned before the write, nothing committed
    assert straight == resumed and step == 3  # bit-exact: the host copy was the state of step 3
    ckpt = tmp_path / "checkpoints" / "step_00000003"
    assert (ckpt / "COMPLETE").is_file() and (tmp_path / "checkpoints" / "latest").read_text() == ckpt.name
    files = json.loads((ckpt / "MANIFEST.json").read_text())["files"]
    assert "trainer_state.json" in files and sum(f.endswith("optim_states.pt") for f in files) == 2


def _async_enospc(rank, world, run_dir):
    init_gloo(rank, world)
    mgr = CheckpointManager(CheckpointConfig(async_save=True), Path(run_dir))
    eng = make_engine(1)
    train_steps(eng, 1)
    mgr.save(eng, 1, {"step": 1})
    mgr.wait()
    train_steps(eng, 1)
    mgr.save(eng, 2, {"step": 2})  # rank 1's background write hits a full disk
    train_steps(eng, 1)
    try:
        mgr.wait()
        failed = None
    except CheckpointSaveError as e:
        failed = str(e)
    mgr.save(eng, 3, {"step": 3})  # the next save works
    mgr.wait()
    return failed


def test_failed_background_write_is_reported_on_every_rank_and_never_committed(tmp_path):
    res = run_ranks(2, _async_enospc, str(tmp_path), env={"METALM_TEST_CKPT_ENOSPC": "2:1"})
    assert all(r and "No space left on device" in r and "rank 1" in r for r in res), res
    ckpts = tmp_path / "checkpoints"
    assert not (ckpts / "step_00000002").exists()
    assert (ckpts / "step_00000001" / "COMPLETE").is_file() and (
        ckpts / "step_00000003" / "COMPLETE"
    ).is_file()
    assert (ckpts / "latest").read_text() == "step_00000003"


# ---- the real trainer (debug MetaLM, 2 forked ranks TP=1 x DP=2, ZeRO-1, fp32) ---------------------------


def _train(rank, world, data: Path, run_dir: Path, extra: list[str], preempt_at: int | None = None) -> dict:
    from data_prep.tokenizer import load_tokenizer
    from parallel.groups import init_distributed
    from training.config import load_config
    from training.trainer import Trainer

    cfg = load_config(
        DEBUG_CONFIG,
        config_overrides(
            data,
            run_dir,
            **{
                "tracking.enabled": "false",
                "eval.caption_samples": 0,
                "eval.batches": 0,
                "parallel.tp": 1,
                "train.precision": "fp32",
                "train.micro_batch_size": 4,
                "model.dropout": 0.1,  # an exact resume needs the RNG states of the async checkpoint
                "checkpoint.async_save": "true",
                "checkpoint.interval_steps": 3,
                "data.batching": "random",
            },
        )
        + extra,
    )
    cfg.validate(world)
    topo = init_distributed(cfg.parallel)
    trainer = Trainer(cfg, topo, load_tokenizer(cfg.data.tokenizer).sha256)
    seen = {}
    if preempt_at is not None:
        after_step = trainer.after_step

        def after_step_then_signal(m):
            after_step(m)
            if trainer.step == preempt_at:
                seen["in_flight"] = trainer.ckpt.in_flight_step
                if rank == 1:
                    os.kill(os.getpid(), signal.SIGUSR1)  # one rank is signalled, both must stop

        trainer.after_step = after_step_then_signal
    code = trainer.train()
    return {"code": code, "losses": trainer.losses, **seen}


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    """An uninterrupted async-saving run of 9 steps."""
    run_dir = tmp_path_factory.mktemp("async_straight") / "run"
    out = run_ranks(2, _train, tiny_data, run_dir, ["train.steps=9"])
    assert out[0]["code"] == 0 and len(out[0]["losses"]) == 9
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000009"
    return dict(out[0]["losses"])


def test_sigkill_during_the_background_write_keeps_latest_and_resume_is_exact(tiny_data, straight, tmp_path):
    run_dir = tmp_path / "run"
    env = {"METALM_TEST_CKPT_CRASH": "6:during_write", "METALM_TEST_CKPT_SLOW_WRITE": "0.2"}
    with pytest.raises(RuntimeError, match="exited with code -9"):
        run_ranks(2, _train, tiny_data, run_dir, ["train.steps=9"], env=env)
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000003"
    assert (ckpts / "step_00000006").is_dir() and not (ckpts / "step_00000006" / "COMPLETE").exists()

    out = run_ranks(2, _train, tiny_data, run_dir, ["train.steps=9"])
    assert out[0]["code"] == 0
    resumed = dict(out[0]["losses"])
    assert sorted(resumed) == list(range(4, 10))  # resumed from step 3; the partial 6 was skipped
    assert all(resumed[s] == straight[s] for s in resumed), (resumed, straight)  # bit-exact
    assert (ckpts / "latest").read_text() == "step_00000009"


def test_preemption_while_a_save_is_in_flight_exits_75_with_both_committed(tiny_data, straight, tmp_path):
    run_dir = tmp_path / "run"
    out = run_ranks(
        2,
        _train,
        tiny_data,
        run_dir,
        ["train.steps=9"],
        4,
        env={"METALM_TEST_CKPT_SLOW_WRITE": "0.5"},  # the save of step 3 is still being written at step 4
    )
    assert [o["code"] for o in out] == [exit_codes.PREEMPTED] * 2
    assert [o["in_flight"] for o in out] == [3, 3]  # the signal came while checkpoint 3 was in flight
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step_00000003" / "COMPLETE").is_file() and (
        ckpts / "step_00000004" / "COMPLETE"
    ).is_file()
    assert (ckpts / "latest").read_text() == "step_00000004"
    out = run_ranks(2, _train, tiny_data, run_dir, ["train.steps=9"])  # and the run goes on from there
    resumed = dict(out[0]["losses"])
    assert sorted(resumed) == list(range(5, 10)) and all(resumed[s] == straight[s] for s in resumed)
