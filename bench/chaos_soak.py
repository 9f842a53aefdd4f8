"""Chaos soak: a 2-rank debug MetaLM run hit by a seeded random sequence of faults, restarted after each one
(as a SLURM requeue would), must end with the per-step loss history of an uninterrupted run, bit for bit.

    OMP_NUM_THREADS=1 .venv/bin/python bench/chaos_soak.py --seconds 240 [--seed 0] [--work DIR] [--keep]

The job: `python -m training --config configs/debug.yaml` at TP=2 x DP=1, ZeRO-1, fp32, dropout 0.1 (the
e2e tests' layout, tests/training/checkpoint/jobs.py), on the tiny data of tests/training/shards.py,
--steps steps (64: the tiny data's epoch ends at step 40, a checkpoint step, so resumes near an epoch
boundary happen), a checkpoint every --interval steps (4), train.watchdog_timeout_s=10,
parallel.timeout_minutes=1, validation (2 batches) at the end only. Ranks are started as srun does (one
process per rank, RANK/WORLD_SIZE/MASTER_* in the environment) so each rank's PID and exit code are known:
torchrun would report every failing rank as exit 1 and hides the 75/76/77 codes checked here.
`--launcher fork` (default) forks each rank from this process after importing the training stack once and
calls `training.__main__.main` (the entry point `python -m training` runs), so a restart costs ~5 s
instead of ~40 s of imports on 2 cores; `--launcher exec` starts `python -m training` processes.

Faults (a deck of the restart kinds is shuffled per round by --seed, so every kind comes once before any
comes twice; where each lands is drawn from the step the job resumes at):
  kill    SIGKILL of one rank, after a random step (or during set-up) plus a random fraction of a step.
          Expect: that rank -9, the other non-zero (gloo error or watchdog), nothing committed half-way.
  usr1    SIGUSR1 to one rank at such a moment. Expect: both exit 75, `latest` = the last step run (0 lost).
  crash   METALM_TEST_CKPT_CRASH: every rank SIGKILLed while saving a checkpoint, after the shards or after
          MANIFEST+COMPLETE (before `latest`). Expect: -9 (rank 0; the other -9 or non-zero); `latest`
          unchanged; the folder partial (after_shards) or complete and valid (after_manifest).
  enospc  METALM_TEST_CKPT_ENOSPC on one or every rank. Expect: both exit 1, the partial folder removed,
          `latest` unchanged.
  stall   METALM_TEST_STALL_STEP: one rank sleeps at the start of a step. Expect: it exits 76 with its stacks
          in RUN_DIR/hangs/, the other 76 or 1. Never the first step of a launch: before its first step
          the watchdog waits `first_step_s` (600 s), not train.watchdog_timeout_s.
  nan     METALM_TEST_NAN_STEPS: isolated steps whose loss is NaN (DeepSpeed skips the update). No restart.
After each restart fault the supervisor starts the job again; it resumes from the newest valid checkpoint.
Faults are drawn while the --seconds budget leaves room for one more faulty launch plus a clean one to the
end (at least --min-faults, at most --max-faults); then a clean launch finishes the run.

How the loss histories are compared. NaN steps are part of the scenario, not of one launch: the baseline
(the uninterrupted run) and every launch of the faulty run poison the same steps. A skipped update
changes every later loss, so a baseline without those NaNs could not be equal; with them, the promise
checked is the protocol's: a skipped step leaves the weights unchanged in the same way whether or not the
run was interrupted and resumed around it, and a resume continues exactly. Per step, the final MLflow run
of the faulty job holds one value per time the step ran (redone steps are logged again); the last one
must equal the baseline's bit for bit (NaN steps: NaN in both), and so must every earlier value of a
redone step (a redo is deterministic). Every step 1..steps must be there, no other. Also compared: the
validation loss at the last step (the final weights) and the data loader's state in the last checkpoint.

Checks after every launch: it ended within 300 s (else it is killed and reported; --launcher fork dumps the
stacks of the ranks still running into their logs first); the exit codes and folders each fault kind must
leave (above); each `step_*` folder with COMPLETE verifies (manifest hash, sizes and content hashes:
training.checkpoint.manifest) and `latest` names such a folder. The final MLflow run is the one in
RUN_DIR/mlflow_run.json (a job resumed from a checkpoint continues the run whose id the checkpoint holds;
one killed before the first commit restarts from scratch in a new run). --launcher fork imports the
training code once: do not edit the working tree during a soak. A launch that fails before its first step
with no fault to blame is retried and printed as a NOTE (another job on the machine can take streaming's
shared-memory prefix at the same moment); three failed launches in a row without a fault are a problem.

Report: the LAST line of output, e.g.
  chaos soak: faults=7 (kill=2 usr1=1 crash=1 enospc=1 stall=1 nan=1) restarts=6 steps=64 redone=9
  lost_s=41.2 checks=OK history=EQUAL      (one line)
restarts = launches of the faulty run - 1; redone = steps run (rank 0's progress lines, all launches)
- steps; lost_s = the faulty run's launch time - the baseline's. Exit 0 only when the histories are
equal and every check passed; 1 otherwise (the first differing step and the failed checks are printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RESTART_KINDS = ("kill", "usr1", "crash", "enospc", "stall")
KINDS = (*RESTART_KINDS, "nan")
WATCHDOG_S = 10  # train.watchdog_timeout_s: steps take ~0.1 s; 10 s leaves room on a loaded machine
LAUNCH_TIMEOUT_S = 300  # a launch running longer is a hang nobody caught: killed and reported
STACKS_SIGNAL = signal.SIGRTMIN + 5  # --launcher fork: dumps a forked rank's stacks to its log (faulthandler)
PRELOAD = (  # imported once by the supervisor (--launcher fork); a missing one only costs time
    "deepspeed",
    "megatron.core.tensor_parallel",
    "mlflow",
    "parallel.groups",
    "training.config",
    "training.config.tokenizer",
    "training.data.loader",
    "training.data.held_out",
    "training.model.metalm",
    "training.tracking",
    "training.trainer",
)


# ---- the scenario -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Fault:
    kind: str
    rank: int | None = None  # the rank signalled / failing (None: every rank)
    step: int | None = None  # kill/usr1: after this step's line (None: during set-up); else the hook's step
    where: str = ""  # crash: after_shards | after_manifest
    delay: float = 0.0  # kill/usr1: fraction of a step waited after the trigger

    def env(self) -> dict[str, str]:
        if self.kind == "crash":
            return {"METALM_TEST_CKPT_CRASH": f"{self.step}:{self.where}"}
        if self.kind == "enospc":
            return {
                "METALM_TEST_CKPT_ENOSPC": f"{self.step}" + ("" if self.rank is None else f":{self.rank}")
            }
        if self.kind == "stall":
            return {"METALM_TEST_STALL_STEP": f"{self.step}:{self.rank}"}
        return {}

    def describe(self) -> str:
        who = "every rank" if self.rank is None else f"rank {self.rank}"
        if self.kind in ("kill", "usr1"):
            when = "during set-up" if self.step is None else f"after step {self.step}"
            sig = "SIGKILL" if self.kind == "kill" else "SIGUSR1"
            return f"{sig} to {who} {when} (+{self.delay:.2f} step)"
        if self.kind == "crash":
            return f"crash of every rank saving checkpoint {self.step} ({self.where})"
        if self.kind == "enospc":
            return f"ENOSPC on {who} saving checkpoint {self.step}"
        return f"stall of {who} at step {self.step}"


class Deck:
    """Restart-fault kinds: each round a seeded shuffle of all of them, so every kind comes once per round."""

    def __init__(self, kinds: list[str], rng: random.Random):
        self.kinds, self.rng, self.pending = list(kinds), rng, []

    def next_kinds(self) -> list[str]:
        """The next kind first, then the rest of the round (fallbacks when the next one has no room)."""
        if not self.pending:
            self.pending = self.rng.sample(self.kinds, len(self.kinds))
        return list(self.pending)

    def take(self, kind: str) -> None:
        self.pending.remove(kind)

    def put_back(self, kind: str) -> None:
        """A fault that did not happen (the job finished first) comes next again."""
        self.pending.insert(0, kind)


def draw_fault(kind: str, rng: random.Random, resumed: int, steps: int, interval: int) -> Fault | None:
    """Where a fault of `kind` lands for a launch resuming at step `resumed`; None when it has no room.

    Faults land within two checkpoint intervals of the resume point, so many of them fit in one run.
    """
    horizon = min(steps, resumed + 2 * interval)
    if kind in ("kill", "usr1"):  # 2 steps at least after the trigger: the signal lands before the end
        if resumed > steps - 3:
            return None
        rank = rng.randrange(2)
        if rng.random() < 0.2:
            return Fault(kind, rank=rank, step=None, delay=rng.random())
        return Fault(
            kind, rank=rank, step=rng.randint(resumed + 1, min(steps - 2, horizon)), delay=rng.random()
        )
    if kind in ("crash", "enospc"):
        saves = [s for s in range(resumed + 1, horizon + 1) if s % interval == 0]
        if not saves:
            return None
        step = rng.choice(saves)
        if kind == "crash":
            return Fault(kind, step=step, where=rng.choice(["after_shards", "after_manifest"]))
        return Fault(kind, rank=rng.choice([0, 1, None]), step=step)
    if kind == "stall":
        if resumed + 2 > steps:
            return None
        return Fault(kind, rank=rng.randrange(2), step=rng.randint(resumed + 2, horizon))
    raise ValueError(f"unknown fault kind {kind!r}")


def draw_nan_steps(rng: random.Random, steps: int, n: int) -> list[int]:
    """`n` isolated steps in 2..steps (never two in a row: train.max_bad_steps is never reached)."""
    out: list[int] = []
    candidates = list(range(2, steps + 1))
    rng.shuffle(candidates)
    for s in candidates:
        if len(out) == n:
            break
        if all(abs(s - o) > 1 for o in out):
            out.append(s)
    return sorted(out)


# ---- comparing histories and the report ---------------------------------------------------------------
def same_value(a: float, b: float) -> bool:
    """Bit-equal doubles; NaN equals NaN (MLflow's SQLite store keeps only an is_nan flag)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


def _show(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x!r} ({float(x).hex()})"


def compare_histories(
    baseline: dict[int, list[float]], chaos: dict[int, list[float]], steps: list[int], what: str = "loss"
) -> str | None:
    """None when equal, else the first difference. Values by step, in logging order (MLflow)."""
    for step in sorted(set(steps) | set(baseline) | set(chaos)):
        if step not in steps:
            return f"{what}: step {step} was logged but the run has no such step"
        b, c = baseline.get(step, []), chaos.get(step, [])
        if len(b) != 1:
            return f"{what}: step {step}: the baseline logged {len(b)} values, expected 1"
        if not c:
            return f"{what}: step {step}: missing from the faulty run"
        if not same_value(c[-1], b[0]):
            return f"{what}: first differing step {step}: baseline {_show(b[0])}, faulty run {_show(c[-1])}"
        for i, v in enumerate(c[:-1]):
            if not same_value(v, b[0]):
                return (
                    f"{what}: first differing step {step}: run {i + 1} of {len(c)} logged {_show(v)}, "
                    f"baseline {_show(b[0])} (a redone step must repeat exactly)"
                )
    return None


def report_line(
    counts: dict[str, int],
    restarts: int,
    steps: int,
    redone: int,
    lost_s: float,
    checks_ok: bool,
    equal: bool,
) -> str:
    per_kind = " ".join(f"{k}={counts.get(k, 0)}" for k in KINDS)
    return (
        f"chaos soak: faults={sum(counts.get(k, 0) for k in KINDS)} ({per_kind}) restarts={restarts} "
        f"steps={steps} redone={redone} lost_s={lost_s:.1f} checks={'OK' if checks_ok else 'FAILED'} "
        f"history={'EQUAL' if equal else 'DIFFERS'}"
    )


# ---- launching jobs -----------------------------------------------------------------------------------
class ForkedRank:
    """A rank forked from the supervisor: the part of subprocess.Popen the supervisor uses."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


def _rank_main(rank: int, world: int, port: int, args: list[str], env: dict, log: Path) -> None:
    """In a forked child: run the entry point of `python -m training` as this rank, then leave like Python."""
    import atexit
    import faulthandler
    import threading
    import traceback

    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        faulthandler.register(STACKS_SIGNAL, all_threads=True)  # where a hung rank is (wait_all)
        from parallel.local_ranks import local_rank_env

        os.environ.update({**local_rank_env(rank, world, port), "OMP_NUM_THREADS": "1", **env})
        sys.argv = ["python -m training", *args]
        from training.__main__ import main

        code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - an uncaught exception: traceback and exit 1, as python does
        traceback.print_exc()
        code = 1
    finally:
        try:  # what interpreter exit does: join non-daemon threads (checkpoint pruning), atexit handlers
            threading._shutdown()
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkJob:
    """The ranks of one launch, forked from this (pre-imported) process; same interface as jobs.Job."""

    def __init__(self, args: list[str], nproc: int = 2, env: dict | None = None, log_dir: Path | None = None):
        from parallel.local_ranks import free_port

        port = free_port()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.logs = [self.log_dir / f"job-{int(t0 * 1000)}-rank{r}.out" for r in range(nproc)]
        self.procs: list[ForkedRank] = []
        for r in range(nproc):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _rank_main(r, nproc, port, args, env or {}, self.logs[r])
            self.procs.append(ForkedRank(pid))

    def output(self, rank: int = 0) -> str:
        return self.logs[rank].read_text(errors="replace") if self.logs[rank].exists() else ""

    def signal(self, rank: int, sig: int) -> None:
        self.procs[rank].send_signal(sig)

    def dump_stacks(self, ranks: list[int]) -> None:
        for r in ranks:
            self.signal(r, STACKS_SIGNAL)
        time.sleep(1.0)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            while p.poll() is None:
                time.sleep(0.01)


def preload() -> None:
    """Import the training stack once (forked ranks inherit it). No threads may run when we fork."""
    import importlib
    import threading

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the rank imports it again and reports a real problem
            print(f"preload: {name} not imported ({e})", flush=True)
    if threading.active_count() != 1:
        raise RuntimeError(f"{threading.active_count()} threads after the imports: forking ranks is unsafe")


def wait_all(job, timeout: float) -> list[int] | None:
    """Every rank's exit code, or None when they are not all gone within `timeout`: then the ranks still
    running are in `job.hung`, their stacks in their logs (--launcher fork), and the job is killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in job.procs):
            return [p.returncode for p in job.procs]
        time.sleep(0.02)
    job.hung = [r for r, p in enumerate(job.procs) if p.poll() is None]
    if hasattr(job, "dump_stacks"):
        job.dump_stacks(job.hung)
    job.kill()
    return None


def wait_for_line(job, pattern: str, timeout: float) -> bool:
    """True once rank 0's output matches; False when the job ended (or the time ran out) first."""
    rx = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rx.search(job.output(0)):
            return True
        if all(p.poll() is not None for p in job.procs):
            return bool(rx.search(job.output(0)))
        time.sleep(0.01)
    return False


# ---- checks on the run folder ---------------------------------------------------------------------------
def checkpoint_problems(ckpt_root: Path) -> list[str]:
    """Every committed step_* folder must verify (hashes too) and `latest` must name one."""
    from training.checkpoint import manifest
    from training.checkpoint.layout import list_checkpoints

    problems: list[str] = []
    valid = set()
    for p in list_checkpoints(ckpt_root):
        if not (p / manifest.COMPLETE).is_file():
            continue
        mf, errs = manifest.read_manifest(p)
        errs = errs or manifest.verify_files(p, mf, check_hashes=True)
        problems += errs
        if not errs:
            valid.add(p.name)
    latest = ckpt_root / "latest"
    if latest.exists():
        name = latest.read_text().strip()
        if name not in valid:
            problems.append(f"`latest` names {name!r}, which is not a complete, valid checkpoint")
    return problems


def newest_valid_step(ckpt_root: Path) -> int:
    """The step the next launch resumes at (the newest committed checkpoint that verifies; 0 if none)."""
    from training.checkpoint import manifest
    from training.checkpoint.layout import list_checkpoints, step_of

    for p in list_checkpoints(ckpt_root):
        mf, errs = manifest.read_manifest(p)
        if mf is not None and not manifest.verify_files(p, mf, check_hashes=False):
            return step_of(p)
    return 0


def latest_step(ckpt_root: Path) -> int | None:
    from training.checkpoint.layout import step_of

    latest = ckpt_root / "latest"
    return step_of(Path(latest.read_text().strip())) if latest.exists() else None


def steps_run(output: str, steps: int) -> list[int]:
    """Steps whose progress line rank 0 printed (train.log_interval=1)."""
    return [int(s) for s in re.findall(rf"\bstep (\d+)/{steps} \|", output)]


def expectation_problems(
    fault: Fault | None,
    codes: list[int],
    run_dir: Path,
    resumed: int,
    latest_before: int | None,
    ran: list[int],
    interval: int,
) -> list[str]:
    """What this kind of fault must leave behind (exit codes, `latest`, folders), as problems."""
    from common import exit_codes

    ckpts = run_dir / "checkpoints"
    latest = latest_step(ckpts)
    folder = ckpts / f"step_{(fault.step or 0):08d}" if fault else None
    bad: list[str] = []
    if fault is not None and fault.kind in ("crash", "enospc"):  # the saves before the failing one committed
        before = (fault.step - 1) // interval * interval
        latest_before = before if before > resumed else latest_before

    def want(cond: bool, what: str) -> None:
        if not cond:
            bad.append(f"{fault.describe() if fault else 'clean launch'}: {what} (exit codes {codes})")

    if fault is None:
        want(codes == [0, 0], "expected [0, 0]")
    elif fault.kind == "kill":
        want(codes[fault.rank] == -signal.SIGKILL, "the killed rank should show -9")
        want(codes[1 - fault.rank] != 0, "the surviving rank should fail, not finish")
    elif fault.kind == "usr1":
        want(codes == [exit_codes.PREEMPTED] * 2, "expected exit 75 on both ranks")
        want(
            bool(ran) and latest == max(ran), f"`latest` should be the last step run ({latest} vs {ran[-1:]})"
        )
    elif fault.kind == "crash":
        want(codes[0] == -signal.SIGKILL and codes[1] != 0, "expected rank 0 -9 and rank 1 non-zero")
        want(latest == latest_before, f"`latest` should stay at {latest_before}, not {latest}")
        complete = (folder / "COMPLETE").is_file()
        if fault.where == "after_shards":
            want(folder.is_dir() and not complete, f"{folder.name} should be left partial")
        else:
            want(complete, f"{folder.name} should be complete (MANIFEST+COMPLETE written)")
    elif fault.kind == "enospc":
        want(codes == [exit_codes.FAILURE] * 2, "expected exit 1 on both ranks")
        want(latest == latest_before, f"`latest` should stay at {latest_before}, not {latest}")
        want(not folder.exists(), f"the partial {folder.name} should be removed")
    elif fault.kind == "stall":
        other = codes[1 - fault.rank]
        want(codes[fault.rank] == exit_codes.HANG, "the stalled rank should exit 76")
        want(other in (exit_codes.HANG, exit_codes.FAILURE), "the other rank should exit 76 or 1")
        dump = run_dir / "hangs" / f"rank{fault.rank}.txt"
        text = dump.read_text(errors="replace") if dump.is_file() else ""
        want(f"last completed step: {fault.step - 1}" in text, f"{dump} should name step {fault.step - 1}")
        if dump.is_file():  # kept under another name: the next stall writes its own
            dump.rename(dump.with_name(f"rank{fault.rank}.step{fault.step}.txt"))
    return bad


# ---- the soak -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Launch:
    fault: Fault | None
    codes: list[int] | None
    seconds: float
    ran: list[int]
    fired: bool  # the fault happened (a signal may come too late: the job had finished)
    error: list[str]  # rank 0's last error line, if any
    hung: str = ""  # the ranks still running at LAUNCH_TIMEOUT_S, and their logs


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, data: Path, say: Callable[[str], None]):
        self.a, self.work, self.data, self.say = args, work, data, say
        self.t0 = time.monotonic()
        self.rng = random.Random(args.seed)
        kinds = args.kinds.split(",")
        self.deck = Deck([k for k in RESTART_KINDS if k in kinds], random.Random(args.seed))
        self.nan_steps = (
            draw_nan_steps(random.Random(args.seed + 1), args.steps, args.nan) if "nan" in kinds else []
        )
        self.step_s = 0.2
        self.problems: list[str] = []  # failed checks: exit 1
        self.notes: list[str] = []  # retried failures not caused by a fault

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def overrides(self, run_dir: Path) -> list[str]:
        from tests.training.checkpoint.jobs import overrides

        return overrides(
            self.data,
            run_dir,
            **{
                "train.steps": self.a.steps,
                "checkpoint.interval_steps": self.a.interval,
                "checkpoint.keep_last": 2,
                "train.watchdog_timeout_s": WATCHDOG_S,
                "parallel.timeout_minutes": 1,
                "eval.batches": 2,  # validation at the last step only (eval.interval_steps=0): the final weights
            },
        )

    def env(self, fault: Fault | None) -> dict[str, str]:
        env = {"METALM_TEST_NAN_STEPS": ",".join(map(str, self.nan_steps))} if self.nan_steps else {}
        return {**env, **(fault.env() if fault else {})}

    def job(self, run_dir: Path, fault: Fault | None):
        if self.a.launcher == "fork":
            job_cls = ForkJob
        else:
            from tests.training.checkpoint.jobs import Job as job_cls
        return job_cls(self.overrides(run_dir), env=self.env(fault), log_dir=run_dir.parent / "logs")

    def launch(self, run_dir: Path, fault: Fault | None) -> Launch:
        t0 = time.monotonic()
        job = self.job(run_dir, fault)
        fired = fault is None or fault.kind not in ("kill", "usr1")
        if not fired:
            pattern = (
                r"distributed initialized"
                if fault.step is None
                else rf"\bstep {fault.step}/{self.a.steps} \|"
            )
            if wait_for_line(job, pattern, LAUNCH_TIMEOUT_S):
                time.sleep(fault.delay * (2.0 if fault.step is None else self.step_s))
                if job.procs[fault.rank].poll() is None:
                    job.signal(fault.rank, signal.SIGKILL if fault.kind == "kill" else signal.SIGUSR1)
                    fired = True
        codes = wait_all(job, max(1.0, LAUNCH_TIMEOUT_S - (time.monotonic() - t0)))
        out = job.output(0)
        ran = steps_run(out, self.a.steps)
        if fault is not None and fault.kind in ("crash", "enospc", "stall"):  # did the job reach the hook?
            fired = (fault.step - (fault.kind == "stall")) in ran
        errors = re.findall(r"^\w*(?:Error|Exception)\b.*$", out, re.M)
        hung = ", ".join(f"rank {r} ({job.logs[r]})" for r in getattr(job, "hung", []))
        return Launch(fault, codes, time.monotonic() - t0, ran, fired, errors[-1:], hung)

    def baseline(self) -> tuple[Path, float]:
        run_dir = self.work / "baseline" / "run"
        self.say(f"baseline: {self.a.steps} uninterrupted steps, NaN at steps {self.nan_steps or 'none'}")
        for _ in range(3):  # a failed start (see chaos) is retried
            got = self.launch(run_dir, None)
            if got.codes == [0, 0] or got.ran:
                break
            self.say(f"baseline: failed before its first step ({', '.join(got.error)}): retried")
        if got.codes != [0, 0]:
            raise SystemExit(
                f"the baseline run failed (exit codes {got.codes}); logs in {run_dir.parent / 'logs'}"
            )
        times = [
            float(x)
            for x in re.findall(r"([\d.]+) s/step", (run_dir / "logs" / "train_rank0.log").read_text())
        ]
        if times:
            self.step_s = sorted(times)[len(times) // 2]
        self.say(f"baseline: {got.seconds:.1f}s, {self.step_s:.3f} s/step")
        return run_dir, got.seconds

    def next_fault(self, resumed: int, n_faults: int, fault_cost: float, clean_cost: float) -> Fault | None:
        a = self.a
        if n_faults >= a.max_faults or self.problems:  # after a failed check: only clean launches
            return None
        if n_faults >= a.min_faults and self.elapsed() + fault_cost + clean_cost > a.seconds:
            return None
        for kind in self.deck.next_kinds():
            fault = draw_fault(kind, self.rng, resumed, a.steps, a.interval)
            if fault is not None:
                self.deck.take(kind)
                return fault
        return None

    def chaos(self, clean_cost: float) -> tuple[Path, list[Launch]]:
        run_dir = self.work / "chaos" / "run"
        ckpts = run_dir / "checkpoints"
        launches: list[Launch] = []
        fault_costs: list[float] = []
        failures = 0  # launches in a row that failed without a fault to blame
        while True:
            resumed = newest_valid_step(ckpts)
            n_faults = sum(1 for la in launches if la.fault is not None)
            cost = sum(fault_costs) / len(fault_costs) if fault_costs else clean_cost
            fault = self.next_fault(resumed, n_faults, cost, clean_cost)
            latest_before = latest_step(ckpts)
            t = time.monotonic()
            got = self.launch(run_dir, fault)
            launches.append(got)
            n = len(launches)
            if got.codes is None:
                self.problems.append(
                    f"launch {n} did not end within {LAUNCH_TIMEOUT_S}s, a hang neither the watchdog nor "
                    f"parallel.timeout_minutes ended; still running: {got.hung}"
                )
                got.codes = [-signal.SIGKILL] * 2
            if fault is not None and not got.fired:
                self.say(f"launch {n}: {fault.describe()}: did not happen (the job ended first)")
                self.deck.put_back(fault.kind)
                fault = got.fault = None
            # A start that fails before any step with no fault to blame is retried, as a requeue would, and
            # noted (e.g. another job on the machine took streaming's shared-memory prefix at the same moment:
            # FileExistsError .../NNNNNN_locals); three in a row are a problem (a checkpoint that cannot resume).
            failures = failures + 1 if fault is None and got.codes != [0, 0] else 0
            failed_start = (
                failures < 3 and fault is None and got.codes != [0, 0] and not got.ran and not got.hung
            )
            if failed_start:
                problems = []
                self.notes.append(
                    f"launch {n} failed before its first step ({', '.join(got.error)}): retried"
                )
            else:
                problems = expectation_problems(
                    fault, got.codes, run_dir, resumed, latest_before, got.ran, self.a.interval
                )
            problems += checkpoint_problems(ckpts)
            if failures >= 3:
                problems.append(f"{failures} launches in a row failed without a fault; rank 0: {got.error}")
            self.problems += problems
            ran = f"{got.ran[0]}..{got.ran[-1]}" if got.ran else "none"
            self.say(
                f"launch {n} (resumed at {resumed}): {fault.describe() if fault else 'no fault'} -> exit codes "
                f"{got.codes}, steps {ran}, latest={latest_step(ckpts)}, {got.seconds:.1f}s"
                + (" PROBLEMS" if problems else " FAILED START (retried)" if failed_start else "")
            )
            if (problems or failed_start) and got.error:
                self.say(f"  rank 0: {got.error[0]}")
            if fault is not None:
                fault_costs.append(time.monotonic() - t)
            elif got.codes == [0, 0] or failures >= 3:
                return run_dir, launches


def _metric(run_dir: Path, key: str) -> dict[int, list[float]]:
    from tests.training.checkpoint.jobs import logged_losses, run_id

    if not (run_dir / "mlflow_run.json").is_file():  # no launch got as far as tracking
        return {}
    return logged_losses(run_dir.parent / "mlflow.db", run_id(run_dir), key)


def _loader_state(run_dir: Path, steps: int) -> tuple | None:
    import json

    path = run_dir / "checkpoints" / f"step_{steps:08d}" / "trainer_state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state.get("dataloader"), state.get("consumed_samples")


def _print(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace, say: Callable[[str], None] = _print) -> int:
    """The whole soak; prints the report as its last line and returns the exit code."""
    soak_t0 = time.monotonic()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="chaos_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else None
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)  # the ranks read configs/debug.yaml
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from common.process_setup import setup_process

    setup_process()
    if data is None:
        from tests.training.checkpoint.jobs import make_data

        data = make_data(work / "data")
    if args.launcher == "fork":
        preload()
    soak = Soak(args, work, data, lambda m: say(f"[{time.monotonic() - soak_t0:6.1f}s] {m}"))
    soak.t0 = soak_t0  # the budget counts from the start (data, imports)
    base_dir, base_s = soak.baseline()
    chaos_dir, launches = soak.chaos(base_s)

    steps = list(range(1, args.steps + 1))
    baseline_loss = _metric(base_dir, "loss")
    diff = compare_histories(baseline_loss, _metric(chaos_dir, "loss"), steps)
    diff = diff or compare_histories(
        _metric(base_dir, "val_loss"), _metric(chaos_dir, "val_loss"), [args.steps], "val_loss"
    )
    if not diff and _loader_state(base_dir, args.steps) != _loader_state(chaos_dir, args.steps):
        diff = f"data loader state in step_{args.steps:08d} differs from the baseline's"
    for s in soak.nan_steps:
        if not math.isnan(baseline_loss.get(s, [0.0])[0]):
            soak.problems.append(
                f"NaN step {s}: the baseline's loss is finite (METALM_TEST_NAN_STEPS not applied)"
            )

    counts = {k: 0 for k in KINDS}
    for la in launches:
        if la.fault is not None:
            counts[la.fault.kind] += 1
    counts["nan"] = len(soak.nan_steps)
    redone = max(0, sum(len(la.ran) for la in launches) - args.steps)
    lost = sum(la.seconds for la in launches) - base_s
    for note in soak.notes:
        say(f"NOTE: {note}")
    for p in soak.problems:
        say(f"PROBLEM: {p}")
    if diff:
        say(f"history differs: {diff}")
    ok = not diff and not soak.problems
    if ok and not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"run folders and logs kept in {work}")
    say(report_line(counts, len(launches) - 1, args.steps, redone, lost, not soak.problems, not diff))
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=240, help="time budget: faults are drawn while it lasts")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fault sequence and NaN steps")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"fault kinds to draw from ({','.join(KINDS)})")
    ap.add_argument("--min-faults", type=int, default=0, help="restart faults drawn even past the budget")
    ap.add_argument("--max-faults", type=int, default=24, help="at most this many restart faults")
    ap.add_argument("--nan", type=int, default=2, help="NaN steps (when `nan` is among --kinds)")
    ap.add_argument("--steps", type=int, default=64, help="train.steps")
    ap.add_argument("--interval", type=int, default=4, help="checkpoint.interval_steps")
    ap.add_argument(
        "--launcher", choices=["fork", "exec"], default="fork", help="fork ranks (fast) or exec python"
    )
    ap.add_argument(
        "--data", help="a tests/training/shards.py make_dataset() folder (default: made in --work)"
    )
    ap.add_argument(
        "--work", help="folder for data, runs and logs (default: a temp folder, removed if all passed)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.kinds.split(",")) - set(KINDS))
    if unknown:
        ap.error(f"--kinds: unknown {unknown}; choose among {','.join(KINDS)}")
    if args.steps % args.interval or args.steps < 3 * args.interval:
        ap.error(
            f"--steps {args.steps} must be a multiple of --interval {args.interval}, at least 3 intervals"
        )
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
