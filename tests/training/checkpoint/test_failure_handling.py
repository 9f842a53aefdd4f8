"""Preemption agreement, the hang watchdog and the non-finite-step guard (with a real DeepSpeed engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from common.exit_codes import HANG
from tests.distributed import run_ranks
from tests.paths import REPO as REPO_PATH
from tests.training.checkpoint.toy_engine import init_gloo, make_engine
from training.resilience.bad_steps import OK, ROLLBACK, SKIP, BadStepGuard, TooManyBadSteps
from training.resilience.preemption import PreemptionHandler

REPO = str(REPO_PATH)


def _preempt(rank, world):
    init_gloo(rank, world)
    pre = PreemptionHandler()
    pre.install()
    before = [pre.should_stop() for _ in range(2)]
    if rank == 1:
        os.kill(os.getpid(), signal.SIGUSR1)  # only one rank is signalled
        time.sleep(0.1)
    after = pre.should_stop()
    pre.uninstall()
    return before, after, pre.requested


def test_one_signalled_rank_stops_every_rank():
    res = run_ranks(2, _preempt)
    assert [r[0] for r in res] == [[False, False], [False, False]]
    assert [r[1] for r in res] == [True, True]
    assert [r[2] for r in res] == [False, True]


def _run_script(body: str, tmp_path, timeout=60) -> subprocess.CompletedProcess:
    code = f"import sys, time\nsys.path.insert(0, {REPO!r})\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RANK": "3"},
    )


def test_watchdog_dumps_stacks_and_exits_on_hang(tmp_path):
    t0 = time.monotonic()
    r = _run_script(
        f"""
        from training.resilience.watchdog import Watchdog
        wd = Watchdog(0.6, {str(tmp_path / "hangs")!r}, first_step_s=0.6); wd.start()
        for step in range(3):
            time.sleep(0.1); wd.beat(step)
        def stuck_in_collective():
            time.sleep(60)
        stuck_in_collective()
    """,
        tmp_path,
    )
    assert r.returncode == HANG, r.stderr
    assert time.monotonic() - t0 < 20
    dump = (tmp_path / "hangs" / "rank3.txt").read_text()
    assert "last completed step: 2" in dump and "stuck_in_collective" in dump
    assert "HANG" in r.stderr


def test_watchdog_quiet_while_steps_complete_or_paused(tmp_path):
    r = _run_script(
        f"""
        from training.resilience.watchdog import Watchdog
        wd = Watchdog(0.5, {str(tmp_path / "hangs")!r}); wd.start()
        time.sleep(1.0)   # start-up before the first step has its own, longer limit
        for step in range(8):
            time.sleep(0.2); wd.beat(step)
        with wd.paused():
            time.sleep(1.5)   # a long checkpoint save
        wd.beat(9); wd.stop(); print("done")
    """,
        tmp_path,
    )
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    assert not (tmp_path / "hangs").exists()


def test_guard_policy_skip_rollback_stop():
    g = BadStepGuard(max_consecutive=2)
    assert g.after_step(1, 1.0, 0.5) == OK
    assert g.after_step(2, float("nan")) == SKIP
    assert g.after_step(3, 1.0, float("inf")) == SKIP
    assert g.after_step(4, 1.0, 0.3) == OK  # the run recovers: the count restarts
    assert [g.after_step(s, float("nan")) for s in (5, 6, 7)] == [SKIP, SKIP, ROLLBACK]
    assert g.after_step(8, 1.0, 0.2, engine_skipped=1) == SKIP  # fp16 loss-scaler skip counted too
    assert g.after_step(9, float("inf")) == SKIP
    with pytest.raises(TooManyBadSteps, match="again after rolling back"):
        g.after_step(10, float("nan"))
    assert g.metrics()["bad_steps_total"] == 8 and g.scaler_skips == 2 and g.rollbacks == 1


def _nan_steps(rank, world, zero_stage):
    import torch

    init_gloo(rank, world)
    os.environ["METALM_TEST_NAN_STEPS"] = "2,3"
    eng = make_engine(zero_stage)
    guard = BadStepGuard(max_consecutive=3)
    out = []
    for step in range(1, 5):
        before = [p.detach().clone() for p in eng.module.parameters()]
        skipped = eng.skipped_steps
        x, y = torch.randn(4, 16), torch.randn(4, 4)
        loss = guard.poison(step, ((eng(x) - y) ** 2).mean())
        eng.backward(loss)
        eng.step()
        action = guard.after_step(step, loss.item(), eng.get_global_grad_norm(), eng.skipped_steps - skipped)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, eng.module.parameters()))
        finite = all(torch.isfinite(p).all().item() for p in eng.module.parameters())
        out.append((action, unchanged, finite))
    return out, guard.total_skipped


def test_nan_loss_skips_the_update_in_deepspeed():
    steps, total = run_ranks(2, _nan_steps, 1)[0]
    assert steps == [(OK, False, True), (SKIP, True, True), (SKIP, True, True), (OK, False, True)]
    assert total == 2


def _fp16_overflows(rank, world):
    import torch

    from parallel.cpu_compat import allow_fp16_on_cpu

    init_gloo(rank, world)
    allow_fp16_on_cpu()
    # a loss scale of 2^40 overflows fp16 gradients: DeepSpeed halves it and skips the step each time
    eng = make_engine(1, extra={"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 40}})
    guard = BadStepGuard(max_consecutive=100)
    actions = []
    for step in range(1, 4):
        skipped = eng.skipped_steps
        x, y = torch.randn(4, 16).half(), torch.randn(4, 4).half()
        loss = ((eng(x) - y) ** 2).mean()
        eng.backward(loss)
        eng.step()
        actions.append(guard.after_step(step, loss.item(), None, eng.skipped_steps - skipped))
    return actions, guard.scaler_skips, eng.skipped_steps


def test_fp16_loss_scaler_skips_are_counted():
    actions, scaler_skips, engine_skips = run_ranks(2, _fp16_overflows)[0]
    assert actions == [SKIP, SKIP, SKIP] and scaler_skips == 3 == engine_skips
