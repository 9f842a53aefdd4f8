"""Fork gloo ranks from the pytest process (fast: no re-import of torch/deepspeed/megatron).

    results = run_ranks(2, fn, arg1, arg2)   # fn(rank, world_size, *args) -> picklable

Each child sets MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK (as torchrun would) and one
torch thread; it does NOT create the process group: `fn` does that through the code under test
(e.g. `parallel.init_distributed`) so the real initialization path is exercised. A child's
exception is re-raised in the parent with the child's traceback; a hung child fails the test
after `timeout` seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from typing import Any

from parallel.local_ranks import free_port, local_rank_env


def _child(rank: int, world: int, port: int, fn: Callable, args: tuple, env: dict, q) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.update(local_rank_env(rank, world, port), **env)
    try:
        q.put((rank, True, fn(rank, world, *args)))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        q.put((rank, False, traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def run_ranks(
    world_size: int, fn: Callable, *args: Any, timeout: float = 300, env: dict | None = None
) -> list:
    """Run fn(rank, world_size, *args) in `world_size` forked processes; return results by rank."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(r, world_size, port, fn, args, env or {}, q), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    import queue as _queue
    import time

    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ranks did not finish within {timeout}s (got {sorted(results)})")
            try:
                rank, ok, value = q.get(timeout=min(left, 1.0))
            except _queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and q.empty():
                    # a child died without reporting (segfault, os._exit): give others a moment, then fail
                    time.sleep(0.5)
                    if q.empty():
                        raise RuntimeError(
                            f"rank process exited with code {dead[0].exitcode} without a result"
                        ) from None
                continue
            if ok:
                results[rank] = value
            else:
                errors.append(f"--- rank {rank} ---\n{value}")
                break  # the other ranks are likely blocked in a collective: fail fast
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.5)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("a rank failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
