"""The training loop: `Trainer(cfg, topology).train()` -> `train_step()` per optimizer step.

Built once: MetaLM (TP group from the topology) -> AdamW + lr schedule -> `deepspeed.initialize`
(ZeRO, precision, clipping, accumulation; our `mpu` adapter) -> streaming loaders (DP-sharded) ->
CheckpointManager (resume) -> MLflow tracker (rank 0). Each step: `grad_accum` micro-batches of
forward / backward / engine.step, one all-reduce of the step's figures over DP. At step
boundaries: progress line + metrics, validation, caption samples, checkpoint, preemption check.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from common import exit_codes
from common.special_tokens import PAD_ID
from training import flops as flops_mod
from training.checkpoint import CheckpointManager
from training.config import TrainingConfig
from training.data.batch import Batch
from training.engine import DTYPES, build_engine
from training.precision import resolve_precision
from training.progress import Progress
from training.resilience import fault_injection
from training.resilience.bad_steps import ROLLBACK, BadStepGuard, TooManyBadSteps
from training.tracking import Tracker

log = logging.getLogger(__name__)


class Trainer:
    """Owns the engine, the loaders, checkpoints and tracking of one training job."""

    def __init__(self, cfg: TrainingConfig, topology, tokenizer_sha256: str | None = None, preemption=None):
        from training.data.loader import build_loader, clean_stale_shared_memory
        from training.resilience.preemption import PreemptionHandler

        # train.precision=auto becomes the measured choice (rank 0 decides, all ranks agree) before
        # anything reads it: the run's config.yaml, DeepSpeed's config and MLflow all see the real one
        self.precision = resolve_precision(cfg.train.precision)
        if cfg.train.precision == "auto":
            log.info("train.precision=auto -> %s: %s", self.precision.precision, self.precision.reason)
            cfg = dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, precision=self.precision.precision)
            )
        self.cfg, self.topo = cfg, topology
        if (
            preemption is None
        ):  # `python -m training` installs it before anything else; a signal during set-up is kept
            preemption = PreemptionHandler()
            preemption.install()
        self.preemption = preemption
        self.watchdog = None
        self.run_dir = cfg.run_dir
        self.tokenizer_sha256 = tokenizer_sha256
        self.step = 0
        self.consumed_samples = 0
        self.losses: list[tuple[int, float]] = []  # (step, DP-mean loss) of every step this process ran
        # the RNG streams were seeded by init_distributed (parallel/seeding.py): nothing to re-seed here

        self.engine, self.ds_config = build_engine(cfg, topology)
        self.grad_accum = cfg.grad_accum_steps(topology.world_size)
        self.dtype = DTYPES[cfg.train.precision]

        if cfg.data.clean_stale_shm:
            clean_stale_shared_memory()
        self.train_loader = build_loader(cfg.data, cfg.model, topology, cfg.train.micro_batch_size, "train")
        self.val_loader = (
            build_loader(cfg.data, cfg.model, topology, cfg.train.micro_batch_size, "val")
            if cfg.data.val and cfg.eval.batches > 0
            else None
        )
        self.ckpt = CheckpointManager(cfg.checkpoint, self.run_dir, topology)
        self.tracker = Tracker(
            cfg.tracking,
            cfg.tracking_uri(),
            enabled=topology.rank == 0,
            artifact_root=self.run_dir.mlartifacts,
        )
        self.progress = Progress(cfg.train.steps, enabled=topology.rank == 0)

    # ---- the loop -----------------------------------------------------------------------------
    def train(self) -> int:
        """Train to `train.steps`; returns an exit code (OK, or PREEMPTED after saving)."""
        from training.resilience.watchdog import Watchdog

        self.resume()
        self.start_tracking()
        preemption = self.preemption
        watchdog = (
            Watchdog(self.cfg.train.watchdog_timeout_s, self.run_dir.hangs)
            if self.cfg.train.watchdog_timeout_s > 0
            else None
        )
        self.watchdog = watchdog
        if watchdog:
            watchdog.start()
        batches = self.batches()
        status = "FAILED"
        guard = BadStepGuard(self.cfg.train.max_bad_steps)
        try:
            while self.step < self.cfg.train.steps:
                metrics = self.train_step(batches)
                self.step += 1
                action = guard.after_step(self.step, metrics["loss"], self.grad_norm(), metrics["skipped"])
                if action != "ok":
                    self.tracker.log_metrics(guard.metrics(), self.step)
                if action == ROLLBACK:
                    self.rollback()
                    batches = self.batches()  # the loader restarts from the checkpoint's position
                    continue
                if watchdog:
                    watchdog.beat(self.step)
                self.after_step(metrics)
                if preemption.should_stop():
                    log.warning(
                        "preemption signal: saving a checkpoint at step %d, then exiting %d",
                        self.step,
                        exit_codes.PREEMPTED,
                    )
                    self.save()
                    status = "KILLED"
                    return exit_codes.PREEMPTED
            self.finish_training()
            status = "FINISHED"
            return exit_codes.OK
        except TooManyBadSteps as e:
            log.error("%s", e)
            return exit_codes.BAD_STEPS
        finally:
            if watchdog:
                watchdog.stop()
            self.tracker.finish(status)

    def train_step(self, batches: Iterator[Batch]) -> dict[str, float]:
        """One optimizer step: `grad_accum` micro-batches of forward/backward, then the engine's update."""
        t0 = time.perf_counter()
        wait = 0.0
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = flops = 0.0
        skipped = (
            self.engine.skipped_steps
        )  # DeepSpeed skips non-finite updates (fp16 overflow, inf/NaN grads)
        fault_injection.stall(self.step + 1)  # TEST HOOK (METALM_TEST_STALL_STEP): a hung rank
        for _ in range(self.grad_accum):
            tw = time.perf_counter()
            batch = self.to_device(next(batches))
            wait += time.perf_counter() - tw
            loss = self.engine(batch)
            loss = BadStepGuard.poison(self.step + 1, loss)  # TEST HOOK (METALM_TEST_NAN_STEPS)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.detach().double().cpu()
            tokens += float((batch.tokens != PAD_ID).sum()) + batch.image_dest.numel()
            flops += flops_mod.batch_flops(self.cfg.model, batch)
        self.consumed_samples += self.cfg.train.global_batch_size
        figures = self.dp_sum(
            torch.tensor([float(loss_sum), self.grad_accum, tokens, flops], dtype=torch.float64)
        ).tolist()
        step_time = time.perf_counter() - t0
        return {
            "loss": figures[0] / figures[1],
            "step_time": step_time,
            "tokens": figures[2],
            "flops": figures[3],
            "data_wait": wait,
            "skipped": self.engine.skipped_steps - skipped,
        }

    def batches(self) -> Iterator[Batch]:
        """Training batches forever (epoch after epoch); the loader's state resumes mid-epoch."""
        while True:
            it = iter(self.train_loader)
            rng = torch.get_rng_state()
            batch = next(
                it, None
            )  # starting a DataLoader iterator draws a seed from the global RNG: undo it,
            torch.set_rng_state(rng)  # so dropout masks do not depend on where a resumed run started an epoch
            if batch is None:
                raise RuntimeError(
                    "the training loader yielded no batch: fewer samples per DP rank than "
                    "train.micro_batch_size; add data or lower the micro batch size"
                )
            yield batch
            yield from it

    # ---- step boundary ------------------------------------------------------------------------
    def after_step(self, m: dict[str, float]) -> None:
        ev, t = self.cfg.eval, self.cfg.train
        world = self.topo.world_size
        row = {
            "loss": m["loss"],
            "lr": self.engine.get_lr()[0],
            "grad_norm": self.grad_norm(),
            "loss_scale": self.loss_scale(),
            "step_time": m["step_time"],
            "tokens_per_s": m["tokens"] / m["step_time"],
            "samples_per_s": t.global_batch_size / m["step_time"],
            "data_wait_frac": m["data_wait"] / m["step_time"],
            "memory_gb": peak_memory_gb(),
            "mfu": (m["flops"] / world / m["step_time"] / (t.peak_tflops * 1e12))
            if t.peak_tflops > 0
            else None,
        }
        self.last_metrics = row
        self.losses.append((self.step, m["loss"]))
        self.progress.update(self.step, row)
        self.tracker.log_metrics(row, self.step)
        if self.step % t.log_interval == 0 or self.step == t.steps:
            self.progress.print_line(self.step)
            self.tracker.flush()
        if ev.interval_steps > 0 and self.step % ev.interval_steps == 0 and self.step < t.steps:
            with self.not_a_hang():
                self.validate()
        if (
            ev.caption_interval_steps > 0
            and self.step % ev.caption_interval_steps == 0
            and self.step < t.steps
        ):
            with self.not_a_hang():
                self.log_captions()
        if self.ckpt.should_save(self.step):
            self.save()

    def finish_training(self) -> None:
        with self.not_a_hang():
            if self.val_loader is not None:
                self.validate()
            if self.cfg.eval.caption_samples > 0:
                self.log_captions()
        if self.ckpt.last_saved_step != self.step and (
            self.cfg.checkpoint.interval_steps > 0 or self.cfg.checkpoint.interval_minutes > 0
        ):
            self.save()
        self.tracker.flush()

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean loss per loss token over `eval.batches` held-out micro-batches per DP rank."""
        if self.val_loader is None:
            return None
        self.engine.eval()
        total = torch.zeros(2, dtype=torch.float64)
        for i, batch in enumerate(self.val_loader):
            if i >= self.cfg.eval.batches:
                break
            batch = self.to_device(batch)
            total += torch.tensor(
                [float(self.engine(batch, reduction="sum")), batch.num_loss_tokens()], dtype=torch.float64
            )
        self.engine.train()
        total = self.dp_sum(total)
        val = float(total[0] / total[1].clamp(min=1))
        log.info("step %d: validation loss %.4f (%d tokens)", self.step, val, int(total[1]))
        self.tracker.log_metrics({"val_loss": val}, self.step)
        self.tracker.flush()
        return val

    @torch.no_grad()
    def caption_samples(self, n: int) -> list[dict]:
        """Greedy captions for the first n held-out images (same images on every rank; all ranks run)."""
        from training.data.held_out import held_out_pairs

        pairs = held_out_pairs(self.cfg, n)
        if not pairs:
            return []
        images = torch.stack([p["image"] for p in pairs]).to(self.topo.device, self.dtype)
        self.engine.eval()
        try:
            with self.full_parameters():
                out = self.engine.module.generate(images, max_new_tokens=self.cfg.eval.caption_max_new_tokens)
        finally:
            self.engine.train()
        return [{"key": p["key"], "true": p["caption"], "ids": ids} for p, ids in zip(pairs, out)]

    def log_captions(self) -> None:
        from training.config.tokenizer import run_tokenizer

        samples = self.caption_samples(self.cfg.eval.caption_samples)
        if self.topo.rank != 0 or not samples:
            return
        tok = run_tokenizer(self.cfg.data.tokenizer)
        lines = [f"{s['key']}\ttrue: {s['true']}\tgenerated: {tok.decode(s['ids'])}" for s in samples]
        text = "\n".join(lines) + "\n"
        log.info("step %d caption samples:\n%s", self.step, text)
        self.tracker.log_text(text, f"captions/step_{self.step:08d}.txt")

    # ---- checkpoints and tracking -------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "dataloader": self.train_loader.state_dict(),
            "mlflow_run_id": self.tracker.run_id,
            "config_hash": self.cfg.hash(),
            "tokenizer_sha256": self.tokenizer_sha256,
            "vocab_size": self.cfg.model.vocab_size,
            "parallel": {"tp": self.topo.tp_size, "dp": self.topo.dp_size, "world": self.topo.world_size},
        }

    def save(self) -> Path:
        with self.not_a_hang():
            return self.ckpt.save(self.engine, self.step, self.trainer_state())

    def not_a_hang(self):
        """Long step-boundary work (save, validation, captions) is not a hang for the watchdog."""
        import contextlib

        return self.watchdog.paused() if self.watchdog is not None else contextlib.nullcontext()

    def rollback(self) -> None:
        """Too many non-finite steps in a row: reload the newest valid checkpoint (weights, optimizer, data)."""
        if self.resume(newest=True) is None:
            raise TooManyBadSteps(
                f"non-finite steps in a row at step {self.step} and no checkpoint to roll back "
                "to: lower optim.lr or check the data"
            )

    def resume(self, newest: bool = False) -> dict | None:
        expect = {"vocab_size": self.cfg.model.vocab_size}
        if self.tokenizer_sha256:
            expect["tokenizer_sha256"] = self.tokenizer_sha256
        state = self.ckpt.resume(self.engine, expect=expect, newest=newest)
        if state is None:
            return None
        self.step = int(state["step"])
        self.consumed_samples = int(state.get("consumed_samples", 0))
        if state.get("dataloader"):
            self.train_loader.load_state_dict(state["dataloader"])
        self.tracker.run_id = state.get("mlflow_run_id")
        # the restored optimizer holds the lr of the saved schedule; follow this config's schedule (e.g. more steps)
        sched = self.engine.lr_scheduler
        with (
            warnings.catch_warnings()
        ):  # get_lr() outside step() is what we mean here: the schedule at this step
            warnings.simplefilter("ignore", UserWarning)
            lrs = sched.get_lr()
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        if state.get("config_hash") not in (None, self.cfg.hash()):
            log.warning(
                "the config differs from the checkpoint's (hash %s vs %s): continuing with the new one",
                state.get("config_hash"),
                self.cfg.hash(),
            )
        log.info("resumed at step %d (%d samples consumed)", self.step, self.consumed_samples)
        return state

    def start_tracking(self) -> None:
        from training.config import loader as config_io

        t = self.topo
        tags = {
            "parallel.layout": f"tp{t.tp_size}xdp{t.dp_size}",
            "parallel.world_size": t.world_size,
            "zero_stage": self.cfg.train.zero_stage,
            "precision": self.cfg.train.precision,
            "precision_reason": self.precision.reason,
            "git_commit": git_commit(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "run_dir": str(self.run_dir.root.resolve()),
            "config_hash": self.cfg.hash(),
        }
        if self.cfg.checkpoint.load_weights_from:  # a finetuning stage records the model it started from
            from training.checkpoint.exported_weights import describe_source

            parent = describe_source(self.cfg.checkpoint.load_weights_from)
            tags.update(
                {
                    "parent_model": str(Path(self.cfg.checkpoint.load_weights_from).resolve()),
                    "parent_kind": parent["kind"],
                    "parent_step": str(parent.get("step")),
                    "parent_run_id": parent.get("mlflow_run_id") or "",
                }
            )
        resumed_id = self.tracker.run_id
        self.tracker.run_id = None
        params = {**config_io.flatten(self.cfg.to_dict()), **self.precision.mlflow_params()}
        run_id = self.tracker.start(resumed_id, params, tags)
        if run_id:  # where to find the run (printed by scripts/demo.sh)
            info = {
                "tracking_uri": self.tracker.uri,
                "experiment": self.cfg.tracking.experiment,
                "run_id": run_id,
                "precision": self.cfg.train.precision,
                "precision_reason": self.precision.reason,
            }
            self.run_dir.mlflow_run.write_text(json.dumps(info, indent=1) + "\n")
        if run_id and resumed_id != run_id:
            for path in (self.run_dir.config_yaml, self.run_dir.ds_config):
                if path.is_file():
                    self.tracker.log_artifact(path)
            if Path(self.cfg.data.tokenizer).is_dir():
                self.tracker.log_artifact(self.cfg.data.tokenizer, "tokenizer")

    # ---- helpers ------------------------------------------------------------------------------
    def full_parameters(self):
        """ZeRO-3: gather the partitioned parameters (generation touches them outside module forwards)."""
        import contextlib

        if self.cfg.train.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()))

    def to_device(self, batch: Batch) -> Batch:
        batch = batch.to(self.topo.device, non_blocking=True)
        if self.dtype != torch.float32:
            batch.images = batch.images.to(self.dtype)
        return batch

    def dp_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.topo.dp_size > 1:
            dev = self.topo.device
            y = x.to(dev)
            dist.all_reduce(y, group=self.topo.dp_group)
            return y.cpu()
        return x

    def grad_norm(self) -> float | None:
        g = self.engine.get_global_grad_norm()
        return float(g) if g is not None else None

    def loss_scale(self) -> float | None:
        if self.cfg.train.precision != "fp16":
            return None
        scale = getattr(self.engine.optimizer, "cur_scale", None)
        return float(scale) if scale is not None else None


def peak_memory_gb() -> float:
    """Peak memory of this rank: GPU allocator peak on GPU, process peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
