"""Write an output folder through a temporary sibling and move it into place only when complete.

An interrupted run (exception, Ctrl-C, SIGTERM) removes its temporary folder; a killed run
leaves `.NAME.tmp-PID`, which the next run removes. Neither is ever at the output path, so
`verify` and training never see a partial shard set.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(output: Path) -> None:
    """Remove `.NAME.tmp-PID` / `.NAME.old-PID` siblings left by runs that were killed."""
    if not output.parent.is_dir():
        return
    for p in output.parent.glob(f".{output.name}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if kind.endswith((".tmp", ".old")) and pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def check_output(output: Path, force: bool) -> None:
    """UserError if `output` exists and is not empty, unless `force`."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UserError(f"--output {output}: exists and is not empty; pass --force to replace it")


@contextmanager
def staged_output(output: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `output` atomically."""
    output = output.absolute()
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
