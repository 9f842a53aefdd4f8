"""What every launcher starts on each rank: `python -m training ...`, plus two things launchers lack.

    python -m cluster.worker training --config configs/debug.yaml train.steps=10
    python cluster/worker.py training ...          # same, as a file (DeepSpeed's slurm launcher needs a path)

1. It records this rank's exit code in `$METALM_EXIT_DIR/rank-<RANK>.exit`. torchrun reports every
   worker failure, including the "preempted, checkpoint committed" code 75, as its own exit code 1;
   the SLURM script and `launch.sh local` read these files to tell a preemption (requeue) from a crash.
2. SLURM's preemption warning SIGUSR1 kills a Python process that has no handler for it yet; one
   arriving while the rank is still starting (imports, process groups, data: a minute on a big
   job) would lose the checkpoint-and-exit-75 path. The worker holds it and delivers it again the
   moment the training has installed its own handler (the training then saves at its first step
   boundary). If nothing takes it over within METALM_EARLY_SIGNAL_GRACE_S (default 300 s), the
   rank exits 128 + 10 as if the signal had killed it. SIGTERM is left alone: launchers use it to
   stop ranks after a failure, which must stay immediate.
3. Under `srun` without torchrun (DeepSpeed's `--launcher slurm`) it fills RANK / WORLD_SIZE /
   LOCAL_RANK / LOCAL_WORLD_SIZE from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, which DeepSpeed does not.

The module runs in this same process (runpy), so signals reach the training code directly.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

EXIT_DIR_ENV = "METALM_EXIT_DIR"
GRACE_ENV = "METALM_EARLY_SIGNAL_GRACE_S"
EARLY_SIGNALS = (signal.SIGUSR1,)


class EarlySignals:
    """Hold SIGUSR1 until the program installs its own handler for it, then deliver it again."""

    def __init__(self, grace_s: float = 300.0, poll_s: float = 0.1):
        self.grace_s, self.poll_s = grace_s, poll_s
        self.pending: int | None = None
        self.since = 0.0
        self._thread: threading.Thread | None = None

    def _handle(self, signum, _frame) -> None:  # main thread, async: only remember it
        if self.pending is None:
            self.since = time.monotonic()
            self.pending = signum

    def _owned(self) -> list[int]:
        return [s for s in EARLY_SIGNALS if signal.getsignal(s) == self._handle]

    def install(self) -> None:
        for s in EARLY_SIGNALS:
            signal.signal(s, self._handle)
        self._thread = threading.Thread(target=self._watch, name="early-signals", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll_s)
            owned = self._owned()
            sig = self.pending
            if sig is not None and sig not in owned:  # the program handles it now: deliver it again
                self.pending = None
                os.kill(os.getpid(), sig)
            elif sig is not None and time.monotonic() - self.since > self.grace_s:
                record_exit(128 + sig)  # nobody took it over: behave as if it had killed us
                os._exit(128 + sig)
            if not owned and self.pending is None:
                return

    def uninstall(self) -> None:
        """Back to the default action for the signals still held by us (main thread)."""
        for s in self._owned():
            signal.signal(s, signal.SIG_DFL)


def exit_file(exit_dir: str | os.PathLike, rank: int | str) -> Path:
    return Path(exit_dir) / f"rank-{rank}.exit"


def fill_rank_env_from_slurm(env: dict) -> None:
    """RANK & co from SLURM task variables when no launcher set them (srun starting every rank)."""
    if "RANK" in env or "SLURM_PROCID" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # may read "2(x4)"
    if per_node.isdigit():
        env["LOCAL_WORLD_SIZE"] = per_node


def _code(exc: BaseException | None) -> int:
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def record_exit(code: int, env: dict | None = None) -> Path | None:
    """Write this rank's exit code (atomic replace) when METALM_EXIT_DIR is set."""
    env = os.environ if env is None else env
    exit_dir = env.get(EXIT_DIR_ENV)
    if not exit_dir:
        return None
    path = exit_file(exit_dir, env.get("RANK", "0"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{code}\n")
    os.replace(tmp, path)
    return path


def read_exit_codes(exit_dir: str | os.PathLike) -> dict[int, int]:
    """{rank: exit code} of the ranks that recorded one."""
    out: dict[int, int] = {}
    for p in Path(exit_dir).glob("rank-*.exit"):
        try:
            out[int(p.stem.split("-", 1)[1])] = int(p.read_text().strip())
        except ValueError:
            continue
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python -m cluster.worker MODULE [ARGS...]   (e.g. training --config FILE)")
    module, rest = argv[0], argv[1:]
    fill_rank_env_from_slurm(os.environ)
    here, root = Path(__file__).resolve().parent, str(Path(__file__).resolve().parent.parent)
    # run as a file, sys.path[0] is cluster/: replace it by the repo root so `training` imports
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if root not in sys.path:
        sys.path.insert(0, root)
    sys.argv = [module, *rest]
    early = EarlySignals(grace_s=float(os.environ.get(GRACE_ENV, "300")))
    early.install()
    exc: BaseException | None = None
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised unchanged
        exc = e
        raise
    finally:
        early.uninstall()
        record_exit(_code(exc))


if __name__ == "__main__":
    main()
