"""An ordered, bounded parallel map over worker processes (results come back in input order).

Ordered results make the output identical for any `--workers`; the bound keeps memory flat
(`Pool.imap` would read the whole input ahead). With one worker everything runs in-process.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # Only the parent reacts to Ctrl-C: it terminates the pool and cleans up its temp output.
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
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(initializer, initargs))
    try:
        pending: deque = deque()
        limit = workers * window_per_worker
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()
