"""Install the Debian packages the testbed needs, idempotently (nothing to do when present)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

SLURM_PACKAGES = {"slurm-wlm": ["slurmctld", "slurmd", "sbatch", "scontrol"], "munge": ["munged"]}
SSH_PACKAGES = {"openssh-server": ["sshd"], "openssh-client": ["ssh", "ssh-keygen"], "pdsh": ["pdsh"]}

_LOCK = Path("/tmp/metalm-testbed-apt.lock")
_SBIN = ("/usr/sbin", "/sbin")


class TestbedUnavailable(RuntimeError):
    """The testbed cannot run on this machine (not root, no apt, install failed); message says why."""

    __test__ = False  # not a pytest test class


def which(binary: str) -> str | None:
    """shutil.which that also looks in sbin folders (often missing from a non-login PATH)."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN)
    return shutil.which(binary, path=path)


def _missing(packages: dict[str, list[str]]) -> list[str]:
    return [pkg for pkg, binaries in packages.items() if any(which(b) is None for b in binaries)]


def ensure_packages(packages: dict[str, list[str]], timeout: float = 600) -> None:
    """Make sure every package's binaries exist; install the missing packages with apt-get.

    Raises TestbedUnavailable (with the reason) when that is impossible here.
    """
    if not _missing(packages):
        return
    if os.geteuid() != 0:
        raise TestbedUnavailable(f"packages {_missing(packages)} are missing and installing them needs root")
    apt = which("apt-get")
    if apt is None:
        raise TestbedUnavailable(f"packages {_missing(packages)} are missing and apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(_LOCK, "w") as lock:  # one installer at a time (parallel test sessions)
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = _missing(packages)
        if not missing:
            return
        cmd = [apt, "install", "-y", "--no-install-recommends", *missing]
        logger.info("installing %s", " ".join(missing))
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:  # stale package lists on a fresh machine: update once and retry
            subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=timeout)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0 or _missing(packages):
            tail = (res.stdout + res.stderr)[-1500:]
            raise TestbedUnavailable(f"`{' '.join(cmd)}` failed (exit {res.returncode}):\n{tail}")
