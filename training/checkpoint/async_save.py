"""Non-blocking checkpoint saves (`checkpoint.async_save: true`): host copy at the step, write in a thread.

At the step boundary DeepSpeed's `save_checkpoint` runs as usual (its collectives included), but our
checkpoint engine wrapper (writer.RecordingCheckpointEngine in capture mode) keeps a host-memory copy
of each state dict it is handed (`host_copy`) instead of writing it. An `AsyncCheckpointWrite` thread
then writes those files (torch.save through a Python file object, so the GIL is released during the
disk writes, hashed while written, fsynced) plus rank 0's trainer_state.json and config.yaml, while
training goes on. The commit protocol is the blocking save's (manager.py): it needs collectives, so
it never runs in the thread: at each later step boundary the ranks all-reduce "my writer is done"
(`CheckpointManager.poll`, one number, only while a save is in flight) and, once every rank is done,
gather errors and file records and commit (MANIFEST, COMPLETE, `latest`) exactly as a blocking save
does. A failed write is gathered there and raises CheckpointSaveError on every rank; nothing is
committed. Host memory: one copy of this rank's checkpointed state, kept from the first async save on
(`HostBufferPool`: the next save copies into the same buffers: no allocation or page faults while
training waits; pinned on CUDA, so the device-to-host copies run at full speed).
"""

from __future__ import annotations

import copy
import enum
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import manifest
from training.checkpoint.writer import write_hashed
from training.resilience import fault_injection

logger = logging.getLogger(__name__)

_ATOMS = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size, enum.Enum)


class HostBufferPool:
    """Host storages reused by the async saves of one engine (one save's buffers are free again once its
    write is done: `give_back` after the writer thread finished)."""

    def __init__(self):
        self._free: dict[tuple[int, bool], list[torch.UntypedStorage]] = {}
        self._leased: list[tuple[torch.UntypedStorage, bool]] = []

    def take(self, nbytes: int, pinned: bool) -> torch.UntypedStorage:
        free = self._free.get((nbytes, pinned))
        if free:
            st = free.pop()
        elif pinned:
            st = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).untyped_storage()
        else:
            st = torch.UntypedStorage(nbytes, device="cpu")
        self._leased.append((st, pinned))
        return st

    def lease(self) -> list[tuple[torch.UntypedStorage, bool]]:
        """The storages taken since the last call (one save's), to give back when it is written."""
        out, self._leased = self._leased, []
        return out

    def give_back(self, storages: list[tuple[torch.UntypedStorage, bool]]) -> None:
        for st, pinned in storages:
            self._free.setdefault((st.nbytes(), pinned), []).append(st)

    @property
    def nbytes(self) -> int:
        return sum(st.nbytes() for sts in self._free.values() for st in sts)


def host_copy(obj: Any, pool: HostBufferPool | None = None) -> Any:
    """A copy of a state dict whose tensors are host-memory copies, as torch.save would see them now.

    Tensors sharing a storage (views, DeepSpeed's flat buffers) share one copied storage, so the file
    written later has the same layout; parameters stay parameters, requires_grad is kept. Containers
    are rebuilt; other objects (numbers, strings, DeepSpeed's config) are deep-copied, or kept as they
    are when they cannot be. `pool`: where the host storages come from (fresh ones without).
    """
    storages: dict[tuple[str, int], torch.UntypedStorage] = {}
    on_gpu = False

    def tensor(t: torch.Tensor) -> torch.Tensor:
        nonlocal on_gpu
        if t.layout != torch.strided or t.is_quantized:
            return t.detach().to("cpu", copy=True)
        st = t.untyped_storage()
        key = (str(st.device), st.data_ptr())
        host = storages.get(key)
        if host is None:
            cuda = st.device.type == "cuda"
            if pool is not None:
                host = pool.take(st.nbytes(), pinned=cuda)
            else:
                host = torch.UntypedStorage(st.nbytes(), device="cpu")
            on_gpu |= cuda
            host.copy_(st, non_blocking=cuda)
            storages[key] = host
        out = torch.empty((0,), dtype=t.dtype).set_(host, t.storage_offset(), t.size(), t.stride())
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(out, requires_grad=t.requires_grad)
        if t.requires_grad:
            out.requires_grad_(True)
        return out

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return tensor(x)
        if isinstance(x, _ATOMS):
            return x
        if isinstance(x, dict):
            y = copy.copy(x)  # keeps the type (OrderedDict, defaultdict's factory)
            for k, v in x.items():
                y[k] = walk(v)
            return y
        if isinstance(x, list):
            return type(x)(walk(v) for v in x) if type(x) is not list else [walk(v) for v in x]
        if isinstance(x, tuple):
            items = [walk(v) for v in x]
            return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
        try:
            return copy.deepcopy(x)
        except Exception:  # noqa: BLE001 - e.g. an object holding a lock: saved as it is at write time
            return x

    out = walk(obj)
    if on_gpu:
        torch.cuda.synchronize()  # the non-blocking device-to-host copies have landed
    return out


def save_hashed(state_dict: Any, path: str, zipfile_serialization: bool) -> dict[str, Any]:
    """torch.save `state_dict` to `path` through a hashing Python file object, fsync; its {"size", "hash"}.

    A write error surfaces as its OSError (e.g. ENOSPC), not torch's "unexpected pos".
    """
    with open(path, "wb") as f:
        w = manifest.HashingWriter(f)
        try:
            torch.save(state_dict, w, _use_new_zipfile_serialization=zipfile_serialization)
        except RuntimeError as e:
            raise (w.error or e) from e
        f.flush()
        os.fsync(f.fileno())
    return {"size": w.size, "hash": w.hexdigest()}


def _lower_priority() -> None:
    """Make this thread yield the CPU to training (Linux: a thread's nice value is its own)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


WRITER_NICE = 10  # niceness of the background writer thread: where cores are short, training goes first


class AsyncCheckpointWrite(threading.Thread):
    """Writes one checkpoint's files on this rank in the background; `records` / `error` once `done`.

    `captured`: (host state dict, path) pairs from the capture; `small`: path -> bytes (rank 0's
    trainer_state.json and config.yaml). Daemon thread: a job that dies with a save in flight leaves a
    partial folder that is never committed (and is removed by a later save).
    """

    def __init__(
        self,
        step: int,
        path: Path,
        captured: list[tuple[Any, str]],
        small: dict[Path, bytes],
        zipfile_serialization: bool,
        rank: int,
        t0: float,
        buffers: list | None = None,
    ):
        """`t0`: when the save began (time.monotonic), for the save's total duration; `buffers`: the
        pool's storages holding `captured` (given back by the manager once this thread is done)."""
        super().__init__(name=f"ckpt-async-{step}", daemon=True)
        self.step, self.path, self.rank, self.t0 = step, path, rank, t0
        self.buffers = buffers or []
        self._captured, self._small = captured, small
        self.zipfile_serialization = zipfile_serialization
        self.records: dict[str, dict[str, Any]] = {}
        self.error: str | None = None
        self.seconds: float | None = None
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def run(self) -> None:
        t0 = time.monotonic()
        what = str(self.path)
        _lower_priority()
        try:
            for sd, path in self._captured:
                what = path
                fault_injection.ckpt_enospc(self.step)
                fault_injection.ckpt_slow_write()
                self.records[os.path.abspath(path)] = save_hashed(sd, path, self.zipfile_serialization)
                fault_injection.ckpt_crash(self.step, "during_write")
            for path, data in self._small.items():
                what = str(path)
                self.records[os.path.abspath(path)] = write_hashed(path, data)
        except Exception as e:  # noqa: BLE001 - gathered at the commit, raised there on every rank
            self.error = f"rank {self.rank}: writing {what}: {e}"
            logger.error("checkpoint write failed (async): %s", self.error)
        finally:
            self._captured, self._small = [], {}  # free the host copies now
            self.seconds = time.monotonic() - t0
            self._done.set()
