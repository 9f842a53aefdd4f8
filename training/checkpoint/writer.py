"""The checkpoint file writer: every shard fsynced and hashed as it is written, errors recorded, never raised.

DeepSpeed's checkpoint engine is wrapped (`install_recorder`) so that each file it writes is
flushed to disk while torch serializes it, then fsynced and hashed read back from the page cache in
worker threads; the manager collects the sizes and hashes for the MANIFEST.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import manifest
from training.resilience import fault_injection

logger = logging.getLogger(__name__)


class RecordingCheckpointEngine:
    """Wraps DeepSpeed's checkpoint engine: records every file's size + hash, fsyncs them all, records errors.

    DeepSpeed's own engine writes each file natively (torch.save to the path: C++ writes straight
    to the file descriptor) while a `_Flusher` thread writes it back to disk. Once the file is
    closed, worker threads fsync it and hash it by reading it back (from the page cache, xxh3-128
    at ~10 GB/s), overlapping the serialization of the next file; the recorded size and hash are
    thus those of the bytes on disk. `sync` waits for them.

    An exception inside DeepSpeed's save would leave this rank out of step with the collectives of
    the others (a hang); instead the first error is recorded here, the remaining writes of this save
    are skipped, and CheckpointManager.save turns it into a CheckpointSaveError on every rank.
    """

    def __init__(self, inner, rank: int = 0):
        self.inner = inner
        self.rank = rank
        self.records: dict[str, dict[str, Any]] = {}
        self.error: str | None = None
        self.step = -1
        self._pool = None
        self._pending: dict[str, Any] = {}
        self._flushers: list[_Flusher] = []
        self.capture = False  # async save: keep (host copy of state_dict, path) instead of writing
        self.captured: list[tuple[Any, str]] = []
        self.host_pool = None  # async_save.HostBufferPool, made by the first capture

    def reset(self, step: int, capture: bool = False) -> None:
        """Start recording the files of checkpoint `step` (`capture`: copy them to host memory only)."""
        self.records, self.error, self.step = {}, None, step
        self._pending.clear()
        self._flushers.clear()
        self.capture, self.captured = capture, []

    def save(self, state_dict, path: str) -> None:
        if self.error is not None:
            return
        if self.capture:  # async save: the background writer writes it (async_save.AsyncCheckpointWrite)
            try:
                from training.checkpoint.async_save import HostBufferPool, host_copy

                if self.host_pool is None:
                    self.host_pool = HostBufferPool()
                self.captured.append((host_copy(state_dict, self.host_pool), path))
            except Exception as e:  # noqa: BLE001 - see class docstring
                self.error = f"rank {self.rank}: copying the state of {path} to host memory: {e}"
                logger.error("checkpoint capture failed: %s", self.error)
            return
        try:
            fault_injection.ckpt_enospc(self.step)
            fault_injection.ckpt_slow_write()
            from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

            if type(self.inner) is not TorchCheckpointEngine:
                # async / fast writer, maybe still writing: its files are hashed at commit time
                self.inner.save(state_dict, path)
                return
            flusher = _Flusher(path)  # writes back the file while it is being written
            self._flushers.append(flusher)
            try:
                self.inner.save(state_dict, path)
            except Exception as e:  # noqa: BLE001
                # torch's C++ file writer reports an OS write error (ENOSPC, EDQUOT, EIO) only as
                # "unexpected pos ...": write once more through a Python file object, which raises the
                # OSError itself (or succeeds if the problem was transient).
                logger.warning("writing %s failed (%s); writing it again to get the OS error", path, e)
                _torch_save_via_python(state_dict, path, self.inner.zipfile_serialization)
            finally:
                flusher.stop.set()
            self._start_seal(os.path.abspath(path))  # synchronous engine: the file is complete now
            fault_injection.ckpt_crash(self.step, "during_write")
        except Exception as e:  # noqa: BLE001 - see class docstring
            self.error = f"rank {self.rank}: writing {path}: {e}"
            logger.error("checkpoint write failed: %s", self.error)

    def _start_seal(self, path: str) -> None:
        """fsync + hash `path` in a worker thread, overlapping the serialization of the next file."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ckpt-seal")
        # the fsync and the read-back hash run side by side (the file is closed: its bytes are final)
        self._pending[path] = (self._pool.submit(_fsync_path, path), self._pool.submit(_hash_path, path))

    def sync(self) -> None:
        """Wait until every file of this save is durable and hashed (where a full disk may first report)."""
        for path, (synced, hashed) in self._pending.items():
            try:
                synced.result()
                self.records[path] = hashed.result()
            except Exception as e:  # noqa: BLE001 - recorded, turned into CheckpointSaveError on every rank
                if self.error is None:
                    self.error = f"rank {self.rank}: fsync/hash of {path}: {e}"
                    logger.error("checkpoint write failed: %s", self.error)
        self._pending.clear()
        for flusher in self._flushers:
            flusher.join()
            if flusher.error is not None and self.error is None:  # seen by its fd only: report it here
                self.error = f"rank {self.rank}: writing back {flusher.path}: {flusher.error}"
                logger.error("checkpoint write failed: %s", self.error)
        self._flushers.clear()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Flusher(threading.Thread):
    """Flushes `path` to disk (fdatasync every FLUSH_INTERVAL_S) while another thread writes it.

    The fsync after the write then has only the tail left: the disk works while torch serializes.
    A write-back error is kept in `error` (an fd that saw it reports it once, so the final fsync
    on another fd may not).
    """

    FLUSH_INTERVAL_S = 0.05

    def __init__(self, path: str):
        super().__init__(name="ckpt-flush", daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.error: OSError | None = None
        self.start()

    def run(self) -> None:
        fd = None
        try:
            while not self.stop.wait(self.FLUSH_INTERVAL_S):
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY)
                    except FileNotFoundError:
                        continue
                os.fdatasync(fd)
        except OSError as e:
            self.error = e
        finally:
            if fd is not None:
                os.close(fd)


def _torch_save_via_python(state_dict, path: str, zipfile_serialization: bool) -> None:
    """torch.save through a Python file object, so that a write error surfaces as its OSError."""
    with open(path, "wb") as f:
        w = manifest.HashingWriter(f)
        try:
            torch.save(state_dict, w, _use_new_zipfile_serialization=zipfile_serialization)
        except RuntimeError as e:
            raise (w.error or e) from e  # the OSError (e.g. ENOSPC), not torch's "unexpected pos"


def _hash_path(path: str) -> dict[str, Any]:
    """{"size", "hash"} of the bytes of `path` (read back, from the page cache)."""
    size, digest = manifest.hash_file(Path(path))
    return {"size": size, "hash": digest}


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_hashed(path: Path, data: bytes) -> dict[str, Any]:
    """Write `data` to `path`, fsync it; its {"size", "hash"} for the manifest."""
    with open(path, "wb") as f:
        w = manifest.HashingWriter(f)
        w.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": w.size, "hash": w.hexdigest()}


def install_recorder(engine, rank: int) -> RecordingCheckpointEngine:
    """Wrap `engine`'s checkpoint engine (once); `rank` names this process in error messages."""
    ce = engine.checkpoint_engine
    if not isinstance(ce, RecordingCheckpointEngine):
        ce = RecordingCheckpointEngine(ce, rank)
        engine.checkpoint_engine = ce
    ce.rank = rank
    return ce
