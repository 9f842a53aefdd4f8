"""Fault-tolerant checkpoints: the commit protocol of DESIGN.md 5 around DeepSpeed's own save/load.

Layout (one directory per checkpoint, named by optimizer step):

    RUN_DIR/checkpoints/step_00001200/   DeepSpeed shards + trainer_state.json + MANIFEST.json + COMPLETE
    RUN_DIR/checkpoints/latest           name of the newest committed checkpoint (atomic replace)

Save (collective): every rank's DeepSpeed engine writes its shards natively (a flusher thread
writes each file back to disk while it is being written); as each file is closed, worker threads
fsync it and hash it read back from the page cache; rank 0 writes trainer_state.json (with every
rank's RNG states); the ranks agree that all writes succeeded; rank 0 writes MANIFEST.json, then
COMPLETE, then replaces `latest`, then deletes checkpoints beyond `keep_last`; every rank learns
rank 0's result, so no rank goes on believing a failed save succeeded. A failed save raises
`CheckpointSaveError` on every rank and leaves the previous checkpoints untouched. DeepSpeed's own
`latest` file is never written (it is written before DeepSpeed's final barrier) and the tag is
always passed explicitly.

Resume (collective): the newest checkpoint directory with COMPLETE whose manifest verifies (sizes
always, content hashes unless `verify_hashes` is off; the ranks share the hashing) is loaded;
damaged ones are reported by name and skipped. A checkpoint whose model shapes differ, or whose
tokenizer / vocabulary differs from what the caller expects, is refused with a `UserError`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from common.errors import UserError
from training.checkpoint import manifest
from training.resilience import fault_injection

logger = logging.getLogger(__name__)

CKPT_PREFIX = "step_"
CKPT_RE = re.compile(r"^step_(\d{8,})$")
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"  # deepspeed.checkpoint.constants key
CONFIG = "config.yaml"  # copied from RUN_DIR/config.yaml (the trainer's resolved config)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written on some rank; nothing was committed and older ones are intact."""


@dataclass
class CheckpointConfig:
    interval_steps: int = 100  # save every N optimizer steps (0 = off)
    interval_minutes: float = 0.0  # also save after this much wall-clock time since the last save (0 = off)
    keep_last: int = 2  # complete checkpoints kept (>= 2); older ones are deleted after a new commit
    verify_hashes: bool = True  # hash-check files against the manifest on resume (sizes always checked)
    resume: str = "auto"  # "auto" (newest valid under RUN_DIR/checkpoints), "none", or a checkpoint directory
    load_weights_from: str = ""  # exported .safetensors to initialize weights from (any TP/DP; fresh runs)

    def problems(self) -> list[str]:
        out = []
        if self.interval_steps < 0:
            out.append(f"checkpoint.interval_steps={self.interval_steps}: must be >= 0 (0 = off)")
        if self.interval_minutes < 0 or not math.isfinite(self.interval_minutes):
            out.append(
                f"checkpoint.interval_minutes={self.interval_minutes}: must be a number >= 0 (0 = off)"
            )
        if self.keep_last < 2:
            out.append(
                f"checkpoint.keep_last={self.keep_last}: must be >= 2 so a damaged newest checkpoint "
                "still leaves one to resume from"
            )
        if self.resume not in ("auto", "none"):
            p = Path(self.resume)
            if not (p / manifest.COMPLETE).is_file() and not p.is_dir():
                out.append(
                    f"checkpoint.resume={self.resume!r}: not 'auto', 'none' or an existing checkpoint "
                    "directory (e.g. RUN_DIR/checkpoints/step_00001200)"
                )
        if self.load_weights_from:
            p = Path(self.load_weights_from)
            if not p.is_file():
                out.append(
                    f"checkpoint.load_weights_from={self.load_weights_from!r}: file not found "
                    "(write one with `python -m training.export`)"
                )
            elif p.suffix != ".safetensors":
                out.append(
                    f"checkpoint.load_weights_from={self.load_weights_from!r}: expected a .safetensors "
                    "file written by `python -m training.export`"
                )
        return out


# ----------------------------------------------------------------------------------------------
# small distributed helpers (also work without a process group, as one rank)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gather(obj: Any) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------------------
# RNG states (JSON-able)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode())


def _tensor_state(t: torch.Tensor) -> str:
    return _b64(t.cpu().contiguous().numpy().tobytes())


def _to_state_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(_unb64(s)), dtype=torch.uint8).clone()


def _megatron_tracker():
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        return get_cuda_rng_tracker()
    except Exception:  # noqa: BLE001 - megatron absent or its tracker not set up
        return None


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (CPU, CUDA) and Megatron tracker RNG states, JSON-able."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, _b64(np.asarray(mt, dtype=np.uint32).tobytes()), gauss],
        "numpy": [
            np_name,
            _b64(np.asarray(np_keys, dtype=np.uint32).tobytes()),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": _tensor_state(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_tensor_state(s) for s in torch.cuda.get_rng_state_all()]
    tracker = _megatron_tracker()
    if tracker is not None:
        try:
            states = tracker.get_states()
            if states:
                state["megatron"] = {k: _tensor_state(v) for k, v in states.items()}
        except Exception as e:  # noqa: BLE001
            logger.debug("megatron RNG tracker states not captured: %s", e)
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in np.frombuffer(_unb64(mt), dtype=np.uint32)), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(_unb64(keys), dtype=np.uint32).copy(), pos, has_gauss, cached))
    torch.set_rng_state(_to_state_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_to_state_tensor(s) for s in state["cuda"]])
    if "megatron" in state:
        tracker = _megatron_tracker()
        if tracker is not None:
            tracker.set_states({k: _to_state_tensor(v) for k, v in state["megatron"].items()})


# ----------------------------------------------------------------------------------------------
# the DeepSpeed checkpoint-engine wrapper that seals (fsync + hash) each file and never raises mid-save


class _RecordingCheckpointEngine:
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

    def __init__(self, inner):
        self.inner = inner
        self.records: dict[str, dict[str, Any]] = {}
        self.error: str | None = None
        self.step = -1
        self._pool = None
        self._pending: dict[str, Any] = {}
        self._flushers: list[_Flusher] = []

    def reset(self, step: int) -> None:
        """Start recording the files of checkpoint `step`."""
        self.records, self.error, self.step = {}, None, step
        self._pending.clear()
        self._flushers.clear()

    def save(self, state_dict, path: str) -> None:
        if self.error is not None:
            return
        try:
            fault_injection.ckpt_enospc(self.step)
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
        except Exception as e:  # noqa: BLE001 - see class docstring
            self.error = f"rank {_rank()}: writing {path}: {e}"
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
                    self.error = f"rank {_rank()}: fsync/hash of {path}: {e}"
                    logger.error("checkpoint write failed: %s", self.error)
        self._pending.clear()
        for flusher in self._flushers:
            flusher.join()
            if flusher.error is not None and self.error is None:  # seen by its fd only: report it here
                self.error = f"rank {_rank()}: writing back {flusher.path}: {flusher.error}"
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


def _rmtrees(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_hashed(path: Path, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        w = manifest.HashingWriter(f)
        w.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": w.size, "hash": w.hexdigest()}


def _install_recorder(engine) -> _RecordingCheckpointEngine:
    ce = engine.checkpoint_engine
    if not isinstance(ce, _RecordingCheckpointEngine):
        ce = _RecordingCheckpointEngine(ce)
        engine.checkpoint_engine = ce
    return ce


# ----------------------------------------------------------------------------------------------


def step_of(path: Path) -> int | None:
    m = CKPT_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoint directories under `ckpt_root`, newest (highest step) first, committed or not."""
    if not ckpt_root.is_dir():
        return []
    dirs = [p for p in ckpt_root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(dirs, key=step_of, reverse=True)


def saved_zero_dp_size(ckpt_dir: Path) -> int | None:
    """DP size a ZeRO-1/2 checkpoint was saved with (its optimizer shards of TP rank 0), None without ZeRO shards."""
    n = len(list(ckpt_dir.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt")))
    return n or None


def universal_checkpoint_info(module: torch.nn.Module) -> dict[str, Any]:
    """How DeepSpeed's universal-checkpoint converter merges TP slices, from the Megatron parameter attributes.

    Replicated parameters (no `tensor_model_parallel`) are taken from TP rank 0, row-parallel ones
    (`partition_dim` 1) are concatenated along dim 1, the rest along dim 0 (column / vocab parallel).
    Used to re-partition ZeRO optimizer state across DP sizes (the TP size stays the same).
    """
    from deepspeed.checkpoint import constants as C

    replicated, row = [], []
    for name, p in module.named_parameters():
        if not getattr(p, "tensor_model_parallel", False):
            replicated.append(f"^{re.escape(name)}$")
        elif getattr(p, "partition_dim", 0) == 1:
            row.append(f"^{re.escape(name)}$")
    return {
        C.UNIVERSAL_CHECKPOINT_VERSION_KEY: C.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        C.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
        C.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: row,
    }


def convert_to_universal(ckpt_dir: Path, out_dir: Path) -> None:
    """Run DeepSpeed's ds_to_universal on one checkpoint folder (in this process, no worker pool)."""
    import argparse

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The converter copies every entry of the module state dict as a tensor (`tensor.float()`);
    # Megatron layers add `*._extra_state` entries that are None. Mark them as done beforehand
    # (the converter skips names whose fp32.pt exists; the loader only reads real parameters).
    for f in sorted(ckpt_dir.glob("mp_rank_*_model_states.pt")):
        module = torch.load(f, map_location="cpu", weights_only=False).get("module") or {}
        for name, value in module.items():
            if not torch.is_tensor(value):
                (out_dir / "zero" / name).mkdir(parents=True, exist_ok=True)
                torch.save({"param": torch.zeros(0)}, out_dir / "zero" / name / "fp32.pt")
    args = argparse.Namespace(
        input_folder=str(ckpt_dir),
        output_folder=str(out_dir),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    ds_to_universal(args)


def model_signature(module: torch.nn.Module) -> dict[str, list[int]]:
    """Parameter name -> shape (of this rank's TP shard; ZeRO-3 partitioned params by their full shape)."""
    return {n: list(getattr(p, "ds_shape", p.shape)) for n, p in module.named_parameters()}


class CheckpointManager:
    def __init__(self, cfg: CheckpointConfig, run_dir: Path, topology: Any = None):
        problems = cfg.problems()
        if problems:
            raise UserError(problems)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.topology = topology
        self._last_save_time = time.monotonic()
        self.last_saved_step: int | None = None
        self.last_save_seconds: float | None = None
        self.last_save_phases: dict[str, float] = {}  # seconds per phase of the last save (rank-local)
        self._deleter: threading.Thread | None = None  # background deletion of pruned checkpoints
        self.loaded_path: Path | None = None

    # -- when -----------------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """True at every `interval_steps` step, or when `interval_minutes` passed since the last save.

        The wall-clock answer is rank 0's, broadcast, so it is the same on all ranks (collective
        only when interval_minutes is set).
        """
        due = self.cfg.interval_steps > 0 and step > 0 and step % self.cfg.interval_steps == 0
        if self.cfg.interval_minutes > 0:
            elapsed = time.monotonic() - self._last_save_time
            due = bool(_broadcast(due or elapsed >= 60.0 * self.cfg.interval_minutes))
        return due and step != self.last_saved_step

    # -- save -----------------------------------------------------------------------------------

    def save(self, engine, step: int, trainer_state: dict) -> Path:
        """COLLECTIVE. Write and commit checkpoint `step`; return its directory.

        Raises CheckpointSaveError on every rank when any rank failed to write; the partial
        directory is removed and `latest` and older checkpoints are untouched.
        """
        t0 = time.monotonic()
        tag = f"{CKPT_PREFIX}{step:08d}"
        path = self.root / tag
        rank = _rank()

        if step == self.last_saved_step:  # saved (or resumed from) by this process already: same on all ranks
            logger.info("checkpoint %s already committed; not saving it again", path)
            return path
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            self._clear_way(step)
        _barrier()

        recorder = _install_recorder(engine)
        recorder.reset(step)
        client_state = {UNIVERSAL_CHECKPOINT_INFO: universal_checkpoint_info(engine.module)}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        t_written = time.monotonic()
        recorder.sync()
        self.last_save_phases = {"write_s": t_written - t0, "fsync_and_hash_s": time.monotonic() - t_written}

        rng_states = _gather(capture_rng_state())
        error = recorder.error
        if rank == 0 and error is None:
            state = dict(trainer_state)
            state.setdefault("step", step)
            state["rng"] = rng_states
            state["world_size"] = _world()
            state["model_signature"] = model_signature(engine.module)
            state["saved_at"] = time.time()
            files = {TRAINER_STATE: json.dumps(state, indent=1).encode()}
            run_config = self.run_dir / CONFIG
            if run_config.is_file():  # the resolved config travels with the checkpoint (export, audits)
                files[CONFIG] = run_config.read_bytes()
            for name, data in files.items():
                try:
                    recorder.records[os.path.abspath(path / name)] = _write_hashed(path / name, data)
                except Exception as e:  # noqa: BLE001
                    error = f"rank 0: writing {path / name}: {e}"
                    break
        errors = [e for e in _gather(error) if e]
        records = _gather(recorder.records) if not errors else []
        fault_injection.ckpt_crash(step, "after_shards")

        result = None
        if rank == 0:
            t_commit = time.monotonic()
            result = self._commit(path, step, errors, records)
            self.last_save_phases["commit_and_prune_s"] = time.monotonic() - t_commit
        result = _broadcast(result)
        if result is not None:
            raise CheckpointSaveError(
                f"checkpoint {tag} was not saved; previous checkpoints are intact: {result}"
            )
        self._saved(step, t0)
        logger.info("checkpoint %s committed in %.2fs", path, self.last_save_seconds)
        return path

    def _clear_way(self, step: int) -> None:
        """Rank 0, before writing checkpoint `step`: move aside what is in its way or now stale.

        A folder of the same step is a partial save, a damaged checkpoint skipped on resume, or one
        of an abandoned trajectory (resumed from an older checkpoint): it is deleted. Committed
        checkpoints of later steps belong to an abandoned trajectory: they are renamed
        `.superseded.step_*` (kept for the user, never resumed).
        """
        doomed = []
        for p in list_checkpoints(self.root):
            s = step_of(p)
            if s == step:
                logger.warning("replacing %s (partial, damaged or from an abandoned run)", p.name)
                target = self.root / f".deleting.{p.name}.{os.getpid()}"
                os.replace(p, target)
                doomed.append(target)
            elif s > step:
                target = self.root / f".superseded.{p.name}"
                shutil.rmtree(target, ignore_errors=True)
                logger.warning(
                    "checkpoint %s is newer than this run's step %d (an abandoned trajectory): "
                    "renamed to %s; delete it when not needed",
                    p.name,
                    step,
                    target.name,
                )
                os.replace(p, target)
        _rmtrees(doomed)

    def _saved(self, step: int, t0: float) -> None:
        self.last_saved_step = step
        self._last_save_time = time.monotonic()
        self.last_save_seconds = time.monotonic() - t0

    def _commit(self, path: Path, step: int, errors: list[str], records: list[dict]) -> str | None:
        """Rank 0: manifest, COMPLETE, latest, pruning. Returns an error message or None."""
        if errors:
            logger.error(
                "checkpoint %s failed; removing the partial directory:\n  %s", path.name, "\n  ".join(errors)
            )
            shutil.rmtree(path, ignore_errors=True)
            return "; ".join(errors)
        try:
            files: dict[str, dict[str, Any]] = {}
            for rec in records:
                for abspath, entry in rec.items():
                    files[os.path.relpath(abspath, path)] = entry
            for p in sorted(path.rglob("*")):  # files DeepSpeed wrote without the engine (recovery script)
                rel = str(p.relative_to(path))
                if p.is_file() and rel not in files and rel not in (manifest.MANIFEST, manifest.COMPLETE):
                    size, digest = manifest.hash_file(p)
                    files[rel] = {"size": size, "hash": digest}
            for rel, entry in files.items():  # the bytes hashed are the bytes on disk (size at least)
                if (path / rel).stat().st_size != entry["size"]:
                    raise OSError(f"{rel}: size on disk differs from the bytes written")
            manifest.commit(path, files, manifest.DEFAULT_ALGO, {"step": step})
            fault_injection.ckpt_crash(step, "after_manifest")
            manifest.atomic_write_text(self.root / LATEST, path.name)
        except Exception as e:  # noqa: BLE001
            logger.error("committing checkpoint %s failed (%s); removing it", path.name, e)
            shutil.rmtree(path, ignore_errors=True)
            return f"rank 0: committing {path.name}: {e}"
        self._prune(step)
        return None

    def _prune(self, newest: int) -> None:
        """Rank 0: keep the newest `keep_last` committed checkpoints; remove older ones and stale partials.

        Each is first renamed out of the `step_*` namespace (atomic: never seen half-deleted), then
        deleted in a background thread so the training goes on meanwhile.
        """
        doomed = [p for p in self.root.glob(".deleting.*") if p.is_dir()]  # left by an earlier process
        kept = 0
        for p in list_checkpoints(self.root):
            if (p / manifest.COMPLETE).is_file():
                kept += 1
                if kept <= self.cfg.keep_last:
                    continue
            elif step_of(p) >= newest:
                continue
            logger.info("deleting old checkpoint %s", p.name)
            target = self.root / f".deleting.{p.name}"
            try:
                os.replace(p, target)
                doomed.append(target)
            except OSError:
                shutil.rmtree(p, ignore_errors=True)
        if doomed:
            if self._deleter is not None:
                self._deleter.join()
            # not a daemon: the interpreter waits for it at exit, so no half-deleted folder is left behind
            self._deleter = threading.Thread(target=_rmtrees, args=(doomed,), name="ckpt-prune")
            self._deleter.start()

    # -- resume ---------------------------------------------------------------------------------

    def find_valid(self, candidates: list[Path]) -> tuple[Path | None, list[str]]:
        """COLLECTIVE. The first candidate that verifies, and the problems of those skipped."""
        skipped: list[str] = []
        for path in candidates:
            problems = self.verify(path)
            if not problems:
                return path, skipped
            skipped.extend(problems)
            logger.warning("skipping damaged or incomplete checkpoint %s:\n  %s", path, "\n  ".join(problems))
        return None, skipped

    def verify(self, path: Path) -> list[str]:
        """COLLECTIVE. Problems of checkpoint `path` (empty = valid); every rank hashes a share of the files."""
        mf, problems = manifest.read_manifest(path)
        if mf is None:
            return problems
        mine = manifest.verify_files(path, mf, self.cfg.verify_hashes, _rank(), _world())
        return sorted(p for part in _gather(mine) for p in part)

    def resume(self, engine, expect: dict[str, Any] | None = None, newest: bool = False) -> dict | None:
        """COLLECTIVE. Load the newest valid checkpoint into `engine`; return its trainer_state, or None.

        `expect` (optional): trainer_state entries that must match the checkpoint's where both have
        them (e.g. {"tokenizer": <hash>, "vocab_size": 32000}); a mismatch is a UserError.
        `newest=True` (rollback after bad steps): the newest valid one under RUN_DIR/checkpoints,
        whatever `resume` says.
        """
        mode = "auto" if newest else self.cfg.resume
        if mode == "none":
            return None
        if mode == "auto":
            candidates = list_checkpoints(self.root)
            if not candidates:
                logger.info("no checkpoint under %s: starting from scratch", self.root)
                return None
            path, skipped = self.find_valid(candidates)
            if path is None:
                logger.error(
                    "no valid checkpoint under %s (all %d skipped): starting from scratch",
                    self.root,
                    len(candidates),
                )
                return None
        else:
            path = Path(self.cfg.resume)
            problems = self.verify(path)
            if problems:
                raise UserError([f"checkpoint.resume={self.cfg.resume!r} cannot be used:"] + problems)
        return self.load(engine, path, expect)

    def load(self, engine, path: Path, expect: dict[str, Any] | None = None) -> dict:
        """COLLECTIVE. Load a verified checkpoint directory into `engine`; restore RNG states."""
        t0 = time.monotonic()
        state = json.loads((path / TRAINER_STATE).read_text())
        self._check_compatible(path, state, engine, expect or {})
        saved_dp = saved_zero_dp_size(path)
        now_dp = getattr(engine, "seq_dp_world_size", None) or getattr(engine, "dp_world_size", 1)
        if saved_dp and saved_dp != now_dp:
            self._load_universal(engine, path, saved_dp, now_dp)
        else:
            load_path, _ = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
        rngs = state.pop("rng", None)
        if rngs is not None and len(rngs) == _world():
            restore_rng_state(rngs[_rank()])
        else:
            logger.warning(
                "checkpoint %s was saved by %s ranks, this job has %d: RNG states not restored",
                path.name,
                len(rngs) if rngs else "?",
                _world(),
            )
        self.loaded_path = path
        self.last_saved_step = state.get("step")
        self._last_save_time = time.monotonic()
        logger.info("resumed from %s (step %s) in %.2fs", path, state.get("step"), time.monotonic() - t0)
        return state

    def _load_universal(self, engine, path: Path, saved_dp: int, now_dp: int) -> None:
        """COLLECTIVE. Resume at another DP size with the optimizer state: DeepSpeed universal checkpoint.

        Rank 0 converts the checkpoint (ds_to_universal) into RUN_DIR/checkpoints/.universal/<name>;
        every rank loads its new ZeRO partition from there; the converted copy is then deleted.
        """
        out = self.root / ".universal" / path.name
        error = None
        if _rank() == 0:
            logger.warning(
                "checkpoint %s was saved at DP=%d, this job has DP=%d: converting it to a DeepSpeed "
                "universal checkpoint to re-partition the optimizer state",
                path.name,
                saved_dp,
                now_dp,
            )
            try:
                convert_to_universal(path, out)
            except Exception as e:  # noqa: BLE001 - reported on every rank below
                error = f"converting {path} to a universal checkpoint failed: {e}"
        error = _broadcast(error)
        if error:
            raise RuntimeError(error)
        cfg = engine._config
        before = cfg.load_universal_checkpoint
        cfg.load_universal_checkpoint = True
        try:
            load_path, _ = engine.load_checkpoint(
                str(out.parent), tag=out.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        finally:
            cfg.load_universal_checkpoint = before
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {out}")
        _barrier()
        if _rank() == 0:
            shutil.rmtree(out.parent, ignore_errors=True)

    def _check_compatible(self, path: Path, state: dict, engine, expect: dict[str, Any]) -> None:
        problems = []
        saved_tp = (state.get("parallel") or {}).get("tp")
        now_tp = getattr(self.topology, "tp_size", None)
        if saved_tp is not None and now_tp is not None and saved_tp != now_tp:
            raise UserError(
                f"checkpoint {path} was saved with parallel.tp={saved_tp}, this run has parallel.tp={now_tp}. "
                "Resume it with the same TP size (the DP size may differ), or export it with "
                "`python -m training.export` and start with checkpoint.load_weights_from=FILE "
                "(weights only; the optimizer restarts)."
            )
        saved_sig = state.get("model_signature")
        if saved_sig is not None:
            now = model_signature(engine.module)
            missing = sorted(set(saved_sig) - set(now))
            extra = sorted(set(now) - set(saved_sig))
            differ = [
                f"{n}: checkpoint {saved_sig[n]} vs model {now[n]}"
                for n in sorted(set(saved_sig) & set(now))
                if list(saved_sig[n]) != list(now[n])
            ]
            if missing:
                problems.append(f"parameters in the checkpoint but not in the model: {missing[:5]}")
            if extra:
                problems.append(f"parameters in the model but not in the checkpoint: {extra[:5]}")
            if differ:
                problems.append(f"parameter shapes differ ({len(differ)}): {differ[:5]}")
        for key, want in expect.items():
            if key in state and state[key] != want:
                problems.append(f"{key} differs: checkpoint has {state[key]!r}, this run has {want!r}")
        if problems:
            raise UserError(
                [
                    f"checkpoint {path} does not match this run's model/tokenizer "
                    "(use checkpoint.resume=none or a new run directory, or fix the config):"
                ]
                + problems
            )
