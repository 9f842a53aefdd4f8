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
always passed explicitly. The collectives run on the topology's world group (collectives.py); the
paths come from the run's `RunDir`.

Async save (`checkpoint.async_save`, async_save.py): the same steps, but the shards are copied to host
memory during DeepSpeed's save and written (with trainer_state.json) by a background thread; the
agreement + commit runs later on the main thread of every rank: `poll()` at each step boundary (one
all-reduce while a save is in flight) or `wait()` (next save, resume/rollback, preemption, end).

Resume (collective): the newest checkpoint directory with COMPLETE whose manifest verifies (sizes
always, content hashes unless `verify_hashes` is off; the ranks share the hashing) is loaded;
damaged ones are reported by name and skipped. A checkpoint whose model shapes differ, or whose
tokenizer / vocabulary differs from what the caller expects, is refused with a `UserError`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from training.checkpoint import manifest
from training.checkpoint.async_save import AsyncCheckpointWrite
from training.checkpoint.collectives import Collectives
from training.checkpoint.config import CheckpointConfig
from training.checkpoint.layout import TRAINER_STATE, list_checkpoints, step_of
from training.checkpoint.rng_state import capture_rng_state, restore_rng_state
from training.checkpoint.universal import (
    UNIVERSAL_CHECKPOINT_INFO,
    load_universal,
    saved_zero_dp_size,
    universal_checkpoint_info,
)
from training.checkpoint.writer import install_recorder, write_hashed
from training.resilience import fault_injection
from training.run_dir import RunDir

logger = logging.getLogger(__name__)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written on some rank; nothing was committed and older ones are intact."""


def _rmtrees(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def model_signature(module: torch.nn.Module) -> dict[str, list[int]]:
    """Parameter name -> shape (of this rank's TP shard; ZeRO-3 partitioned params by their full shape)."""
    return {n: list(getattr(p, "ds_shape", p.shape)) for n, p in module.named_parameters()}


class CheckpointManager:
    """Saves and resumes the checkpoints of one run folder (DESIGN.md 5); collective calls say so.

    `run_dir`: the run's `RunDir` (a path is wrapped); `topology`: the `parallel.groups.Topology`,
    whose world group carries the collectives; None: the default process group if there is one,
    else a single process.
    """

    def __init__(self, cfg: CheckpointConfig, run_dir: RunDir | str | os.PathLike, topology: Any = None):
        problems = cfg.problems()
        if problems:
            raise UserError(problems)
        self.cfg = cfg
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.topology = topology
        self.coll = Collectives(topology)
        self._last_save_time = time.monotonic()
        self.last_saved_step: int | None = None
        self.last_save_seconds: float | None = None
        self.last_save_phases: dict[str, float] = {}  # seconds per phase of the last save (rank-local)
        self.last_stall_seconds: float | None = None  # training time the last save() call took
        self._inflight: AsyncCheckpointWrite | None = None  # async save being written
        self._recorder = None  # the engine's RecordingCheckpointEngine (holds the async host buffers)
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
            due = bool(self.coll.broadcast(due or elapsed >= 60.0 * self.cfg.interval_minutes))
        return due and step != self.last_saved_step and step != self.in_flight_step

    # -- save -----------------------------------------------------------------------------------

    def save(self, engine, step: int, trainer_state: dict, blocking: bool | None = None) -> Path:
        """COLLECTIVE. Write and commit checkpoint `step`; return its directory.

        Raises CheckpointSaveError on every rank when any rank failed to write; the partial
        directory is removed and `latest` and older checkpoints are untouched.
        With `checkpoint.async_save` (and `blocking` not True) the state is copied to host memory and
        written in the background: the checkpoint is committed later, by `poll()` / `wait()` (a save
        still in flight is waited for first, here too).
        """
        t0 = time.monotonic()
        path = self.run_dir.checkpoint(step)
        tag = path.name
        rank = self.coll.rank
        in_background = self.cfg.async_save if blocking is None else not blocking

        if self._inflight is not None:  # the previous async save: committed (or failed) before a new one
            self.wait()
        if step == self.last_saved_step:  # saved (or resumed from) by this process already: same on all ranks
            logger.info("checkpoint %s already committed; not saving it again", path)
            return path
        if rank == 0:
            self.run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
            self._clear_way(step)
        self.coll.barrier()

        recorder = install_recorder(engine, rank)
        self._recorder = recorder
        recorder.reset(step, capture=in_background)
        client_state = {UNIVERSAL_CHECKPOINT_INFO: universal_checkpoint_info(engine.module)}
        try:
            engine.save_checkpoint(
                str(self.run_dir.checkpoints), tag=tag, client_state=client_state, save_latest=False
            )
        finally:
            recorder.capture = False
        t_written = time.monotonic()
        if in_background:
            self.last_save_phases = {"capture_s": t_written - t0}
        else:
            recorder.sync()
            self.last_save_phases = {
                "write_s": t_written - t0,
                "fsync_and_hash_s": time.monotonic() - t_written,
            }

        rng_states = self.coll.gather(capture_rng_state())
        error = recorder.error
        small: dict[Path, bytes] = {}
        if rank == 0 and error is None:
            small = self._trainer_files(path, step, trainer_state, rng_states, engine)
        if in_background:
            job = AsyncCheckpointWrite(
                step,
                path,
                recorder.captured if error is None else [],
                small,
                getattr(recorder.inner, "zipfile_serialization", False),
                rank,
                t0,
                recorder.host_pool.lease() if recorder.host_pool is not None else [],
            )
            recorder.captured = []
            job.error = error
            self._inflight = job
            job.start()
            self._last_save_time = time.monotonic()
            self.last_stall_seconds = time.monotonic() - t0
            logger.info(
                "checkpoint %s: state copied to host memory in %.2fs; writing in the background",
                tag,
                self.last_stall_seconds,
            )
            return path
        for p, data in small.items():
            try:
                recorder.records[os.path.abspath(p)] = write_hashed(p, data)
            except Exception as e:  # noqa: BLE001
                error = f"rank 0: writing {p}: {e}"
                break
        self._finish(path, step, error, recorder.records, t0)
        self.last_stall_seconds = self.last_save_seconds
        return path

    def _trainer_files(self, path: Path, step: int, trainer_state: dict, rng_states: list, engine) -> dict:
        """Rank 0: trainer_state.json (with every rank's RNG states) and the run's config.yaml, as bytes."""
        state = dict(trainer_state)
        state.setdefault("step", step)
        state["rng"] = rng_states
        state["world_size"] = self.coll.world
        state["model_signature"] = model_signature(engine.module)
        state["saved_at"] = time.time()
        files = {path / TRAINER_STATE: json.dumps(state, indent=1).encode()}
        run_config = self.run_dir.config_yaml
        if run_config.is_file():  # the resolved config travels with the checkpoint (export, audits)
            files[path / run_config.name] = run_config.read_bytes()
        return files

    def _finish(self, path: Path, step: int, error: str | None, records: dict, t0: float) -> None:
        """COLLECTIVE. Agree that every rank wrote its files, then rank 0 commits; raise on every rank if not."""
        errors = [e for e in self.coll.gather(error) if e]
        records = self.coll.gather(records) if not errors else []
        fault_injection.ckpt_crash(step, "after_shards")

        result = None
        if self.coll.rank == 0:
            t_commit = time.monotonic()
            result = self._commit(path, step, errors, records)
            self.last_save_phases["commit_and_prune_s"] = time.monotonic() - t_commit
        result = self.coll.broadcast(result)
        if result is not None:
            raise CheckpointSaveError(
                f"checkpoint {path.name} was not saved; previous checkpoints are intact: {result}"
            )
        self._saved(step, t0)
        logger.info("checkpoint %s committed in %.2fs", path, self.last_save_seconds)

    # -- async saves ------------------------------------------------------------------------------

    def _give_back(self, job: AsyncCheckpointWrite) -> None:
        """The written job's host buffers serve the next async save (the thread holds no reference now)."""
        ce = self._recorder
        if ce is not None and ce.host_pool is not None:
            ce.host_pool.give_back(job.buffers)
        job.buffers = []

    @property
    def in_flight_step(self) -> int | None:
        """The step of the async save being written, None when none is."""
        return self._inflight.step if self._inflight is not None else None

    def poll(self) -> Path | None:
        """COLLECTIVE while an async save is in flight (a no-op otherwise; the same on every rank):
        commit it when every rank's writer is done. Returns the committed directory, else None."""
        job = self._inflight
        if job is None or not self.coll.all_true(job.done()):
            return None
        return self.wait()

    def wait(self) -> Path | None:
        """COLLECTIVE while an async save is in flight (a no-op otherwise): wait for every rank's writer,
        then commit (or raise CheckpointSaveError on every rank). Returns the committed directory."""
        job, self._inflight = self._inflight, None
        if job is None:
            return None
        if not job.done():
            t = time.monotonic()
            job.join()
            logger.info("waited %.2fs for the background write of %s", time.monotonic() - t, job.path.name)
        job.join()
        self._give_back(job)
        self.last_save_phases["background_write_s"] = job.seconds or 0.0
        self._finish(job.path, job.step, job.error, job.records, job.t0)
        return job.path

    def _clear_way(self, step: int) -> None:
        """Rank 0, before writing checkpoint `step`: move aside what is in its way or now stale.

        A folder of the same step is a partial save, a damaged checkpoint skipped on resume, or one
        of an abandoned trajectory (resumed from an older checkpoint): it is deleted. Committed
        checkpoints of later steps belong to an abandoned trajectory: they are renamed
        `.superseded.step_*` (kept for the user, never resumed).
        """
        root, doomed = self.run_dir.checkpoints, []
        for p in list_checkpoints(root):
            s = step_of(p)
            if s == step:
                logger.warning("replacing %s (partial, damaged or from an abandoned run)", p.name)
                target = root / f".deleting.{p.name}.{os.getpid()}"
                os.replace(p, target)
                doomed.append(target)
            elif s > step:
                target = root / f".superseded.{p.name}"
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
            manifest.atomic_write_text(self.run_dir.latest, path.name)
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
        root = self.run_dir.checkpoints
        doomed = [p for p in root.glob(".deleting.*") if p.is_dir()]  # left by an earlier process
        kept = 0
        for p in list_checkpoints(root):
            if (p / manifest.COMPLETE).is_file():
                kept += 1
                if kept <= self.cfg.keep_last:
                    continue
            elif step_of(p) >= newest:
                continue
            logger.info("deleting old checkpoint %s", p.name)
            target = root / f".deleting.{p.name}"
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
        mine = manifest.verify_files(path, mf, self.cfg.verify_hashes, self.coll.rank, self.coll.world)
        return sorted(p for part in self.coll.gather(mine) for p in part)

    def resume(
        self,
        engine,
        expect: dict[str, Any] | None = None,
        newest: bool = False,
        max_step: int | None = None,
    ) -> dict | None:
        """COLLECTIVE. Load the newest valid checkpoint into `engine`; return its trainer_state, or None.

        `expect` (optional): trainer_state entries that must match the checkpoint's where both have
        them (e.g. {"tokenizer": <hash>, "vocab_size": 32000}); a mismatch is a UserError.
        `newest=True` (rollback after bad steps or a loss spike): the newest valid one under
        RUN_DIR/checkpoints, whatever `resume` says; `max_step`: of those, the newest at or before it.
        """
        self.wait()  # an async save in flight is committed (or fails) before anything is loaded
        mode = "auto" if newest else self.cfg.resume
        if mode == "none":
            return None
        if mode == "auto":
            root = self.run_dir.checkpoints
            candidates = list_checkpoints(root)
            if max_step is not None:
                candidates = [p for p in candidates if step_of(p) <= max_step]
            if not candidates:
                logger.info("no checkpoint under %s: starting from scratch", root)
                return None
            path, skipped = self.find_valid(candidates)
            if path is None:
                logger.error(
                    "no valid checkpoint under %s (all %d skipped): starting from scratch",
                    root,
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
            load_universal(engine, path, self.run_dir.universal, saved_dp, now_dp, self.coll)
        else:
            load_path, _ = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
        rngs = state.pop("rng", None)
        if rngs is not None and len(rngs) == self.coll.world:
            restore_rng_state(rngs[self.coll.rank])
        else:
            logger.warning(
                "checkpoint %s was saved by %s ranks, this job has %d: RNG states not restored",
                path.name,
                len(rngs) if rngs else "?",
                self.coll.world,
            )
        self.loaded_path = path
        self.last_saved_step = state.get("step")
        self._last_save_time = time.monotonic()
        logger.info("resumed from %s (step %s) in %.2fs", path, state.get("step"), time.monotonic() - t0)
        return state

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
