"""Start daemons as child processes, stop them by PID, find free ports."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from parallel.local_ranks import free_port  # noqa: F401  (re-exported for the testbed and its tests)

logger = logging.getLogger(__name__)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    detail = on_timeout() if on_timeout else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")


def private_shm(cmd: Sequence[str], size: str = "4g") -> list[str]:
    """Run cmd in its own mount namespace with a private /dev/shm, as on a separate machine.

    Simulated nodes on one host otherwise share /dev/shm, and mosaicml-streaming's per-node shared
    memory (named from a counter and the local shard folders) collides across them.
    """
    script = f'mount -t tmpfs -o size={size} metalm-node-shm /dev/shm && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "node-shm", *cmd]


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return f"--- {path} (tail) ---\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"--- {path}: not readable ---"


class Daemon:
    """One foreground daemon process; output to a log file; stopped by PID (TERM, then KILL)."""

    def __init__(
        self, name: str, cmd: Sequence[str], log: Path, env: dict | None = None, user: str | None = None
    ):
        self.name, self.cmd, self.log = name, list(cmd), log
        self._log_fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        # own session: a Ctrl-C in the terminal does not reach it; stop() is the only way it ends
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            user=user,
            start_new_session=True,
        )
        logger.info("started %s (pid %d): %s", name, self.proc.pid, " ".join(self.cmd))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log_fh.close()

    def __repr__(self) -> str:
        return f"Daemon({self.name}, pid={self.pid}, alive={self.alive()})"


def kill_pidfile(path: Path) -> None:
    """Stop a process that daemonized itself and wrote a pidfile (best effort)."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
