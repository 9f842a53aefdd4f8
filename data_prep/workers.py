"""An ordered, bounded parallel map over worker processes (results come back in input order).

Ordered results make the output identical for any `--workers`; the bound keeps memory flat
(`Pool.imap` would read the whole input ahead). With one worker everything runs in-process.
`ProcessPoolExecutor` is used rather than `multiprocessing.Pool` because it reports a worker
that died (a crash in a native image decoder, the OOM killer) instead of waiting forever.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class WorkerDied(RuntimeError):
    """A worker process exited abnormally; the run is abandoned (nothing is left at --output)."""


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # Only the parent reacts to Ctrl-C: it stops the workers and cleans up its temp output.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def ordered_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    window_per_worker: int = 4,
) -> Iterator[Any]:
    """Yield fn(item) for each item, in order, computed by `workers` processes."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(initializer, initargs)
    )
    finished = False
    try:
        pending: deque = deque()
        limit = workers * window_per_worker
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as e:
            raise WorkerDied(
                "a worker process died (killed, out of memory, or a crash in a native library); "
                "re-run with --workers 1 to see which input causes it"
            ) from e
        finished = True
    finally:
        if not finished:  # interrupted or failed: stop the workers now, do not drain the queue
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
