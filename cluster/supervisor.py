"""Run a launcher (torchrun, deepspeed, the MLflow server) as a child of `./launch.sh` and report its end.

Signals reaching `./launch.sh` (Ctrl-C, a scheduler's SIGTERM/SIGUSR1 preemption warning) go on to
the child. The job's exit code comes from the ranks' own records: torchrun reports a rank's 75
("preempted, checkpoint committed") as its own 1, so a 75 in any rank's exit file wins.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from common.exit_codes import OK, PREEMPTED
from training.run_dir import LaunchLogs, RunDir

from .commands import shell_join
from .worker import EXIT_DIR_ENV, read_exit_codes

logger = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def run_forwarding_signals(cmd: list[str], env: dict, group: bool = False, stop_timeout: float = 30) -> int:
    """Run cmd; pass SIGINT/SIGTERM/SIGUSR1/SIGUSR2 on to it (e.g. a scheduler's preemption warning).

    group=True: the child leads its own process group and signals go to the whole group (a server
    with worker processes); after SIGINT/SIGTERM, whatever is left of the group after
    `stop_timeout` seconds is killed.
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=group)
    stopping: list[float] = []

    def forward(signum, _frame):
        logger.warning("got %s: passing it on to %s", signal.Signals(signum).name, Path(cmd[0]).name)
        if signum in (signal.SIGINT, signal.SIGTERM):
            stopping.append(time.monotonic())
        try:
            if group:
                os.killpg(proc.pid, signum)
            elif proc.poll() is None:
                proc.send_signal(signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if group and stopping and time.monotonic() - stopping[0] > stop_timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
        if group:  # the leader is gone; its workers may not be
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return 128 - rc if rc < 0 else rc  # killed by signal N -> 128 + N, as a shell reports it
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def job_exit_code(launcher_rc: int, exit_dir: Path) -> int:
    """75 when any rank exited 75 (checkpoint committed), else the launcher's own code."""
    codes = read_exit_codes(exit_dir)
    if PREEMPTED in codes.values():
        return PREEMPTED
    return launcher_rc


def new_launch(run_dir: RunDir, tag: str) -> LaunchLogs:
    """A fresh folder for this launch's logs, with its (empty) folder for the ranks' exit codes."""
    logs = run_dir.resolved().launch(tag)
    logs.exit.mkdir(parents=True, exist_ok=True)
    return logs


def finish(rc: int, logs: LaunchLogs) -> int:
    """Say what the job's exit code means; return it."""
    if rc == PREEMPTED:
        logger.warning("preempted: a checkpoint was committed; run the same command again to resume")
    elif rc != OK:
        logger.error("training exited with %d; logs under %s", rc, logs.root)
    return rc


def supervise(cmd: list[str], logs: LaunchLogs, env: dict[str, str] | None = None) -> int:
    """Run a training launcher with the ranks' exit folder set; the job's exit code (75 = preempted)."""
    env = dict(os.environ if env is None else env, **{EXIT_DIR_ENV: str(logs.exit)})
    logger.info("running: %s", shell_join(cmd))
    return finish(job_exit_code(run_forwarding_signals(cmd, env), logs.exit), logs)
