"""The training loop: `Trainer(cfg, topology).train()` -> `train_step()` per optimizer step.

Built once: MetaLM (TP group from the topology) -> AdamW + lr schedule -> `deepspeed.initialize`
(ZeRO, precision, clipping, accumulation; our `mpu` adapter) -> streaming loaders (DP-sharded) ->
CheckpointManager (resume) -> MLflow tracker (rank 0). Each step: `grad_accum` micro-batches of
forward / backward / engine.step (each phase timed: `time/*` metrics), one all-reduce of the step's
figures over DP. At step boundaries: progress line + metrics, loss-spike policy, per-rank figures
(stragglers), validation, caption samples, eval harness (eval.harness), checkpoint (async ones committed
here), profiler window, preemption check.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import socket
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
from training.checkpoint.collectives import Collectives
from training.config import TrainingConfig
from training.data.batch import Batch
from training.engine import DTYPES, build_engine
from training.loss_weighting import LossWeighting
from training.observability.phases import PhaseTimer
from training.observability.profiler import MemorySnapshots, StepProfiler
from training.observability.stragglers import StragglerMonitor
from training.precision import resolve_precision
from training.progress import Progress
from training.resilience import fault_injection
from training.resilience import loss_spike as spike_policy
from training.resilience.bad_steps import ROLLBACK, BadStepGuard, TooManyBadSteps
from training.resilience.loss_spike import LossSpikeDetector, LossSpikeStop
from training.tracking import EventLog, Tracker
from training.trainer_evaluation import EvaluationSteps
from training.trainer_tracking import TrackingSteps

log = logging.getLogger(__name__)


class Trainer(EvaluationSteps, TrackingSteps):
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
        # MFU's denominator: the configured device peak, or on a CPU with precision auto the matmul peak of
        # the chosen precision measured at start-up (per process, at its thread count)
        measured = self.precision.gflops.get(self.precision.precision, 0.0) / 1e3
        self.peak_tflops = cfg.train.peak_tflops or measured
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
        self.weighting = LossWeighting(
            cfg.train.loss_weighting, self.grad_accum, topology.dp_size, self.dp_sum
        )

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
        self.events = EventLog(self.run_dir.events, self.tracker, enabled=topology.rank == 0)
        # observability: phase times every step, per-rank figures every straggler_interval steps, traces
        t, prof = cfg.train, cfg.profile
        self.coll = Collectives(topology)
        self.timer = PhaseTimer(sync=t.sync_timing)
        self.stragglers = StragglerMonitor(
            t.straggler_interval,
            t.straggler_factor,
            t.straggler_windows,
            self.coll.all_gather_floats,
            self.coll.gather,
            socket.gethostname(),
        )
        self.profiler = StepProfiler(prof, topology.rank, self.run_dir.profile)
        self.memory = MemorySnapshots(
            prof.memory_snapshot and topology.rank in prof.ranks, topology.rank, self.run_dir.profile
        )
        self.spikes = LossSpikeDetector(t.loss_spike)
        self.data_skips: dict[int, int] = {}  # step about to run -> steps of data to drop first (spikes)
        self._harness = None  # eval.harness: its inputs are checked now, before any step
        if cfg.eval.harness:
            self.eval_harness()

    # ---- the loop -----------------------------------------------------------------------------
    def train(self) -> int:
        """Train to `train.steps`; returns an exit code (OK, or PREEMPTED after saving)."""
        from training.resilience.watchdog import Watchdog

        self.resume()
        self.start_tracking()
        preemption = self.preemption
        watchdog = (
            Watchdog(
                self.cfg.train.watchdog_timeout_s,
                self.run_dir.hangs,
                rank=self.topo.rank,
                first_step_s=self.cfg.train.watchdog_first_step_s,
            )
            if self.cfg.train.watchdog_timeout_s > 0
            else None
        )
        self.watchdog = watchdog
        if watchdog:
            watchdog.start()
        self.memory.start()
        batches = self.batches()
        status = "FAILED"
        guard = BadStepGuard(self.cfg.train.max_bad_steps)
        try:
            while self.step < self.cfg.train.steps:
                if self.step + 1 in self.data_skips:  # after a loss-spike rollback: drop the bad window
                    self.skip_data(batches, self.data_skips.pop(self.step + 1))
                with self.profiler.step(self.step + 1), self.memory.on_oom(self.step + 1):
                    metrics = self.train_step(batches)
                self.step += 1
                grad_norm = None if metrics["spike_skip"] else self.grad_norm()  # NaN by our own doing
                action = guard.after_step(self.step, metrics["loss"], grad_norm, metrics["skipped"])
                if action != "ok":
                    self.tracker.log_metrics(guard.metrics(), self.step)
                if action == ROLLBACK:
                    self.rollback()
                    batches = self.batches()  # the loader restarts from the checkpoint's position
                    continue
                spike = self.spikes.observe(self.step, metrics["loss"])
                if spike is not None and spike.confirmed:
                    if self.on_loss_spike(spike, metrics["spike_skip"]):  # rolled back
                        batches = self.batches()
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
                    self.save(blocking=True)  # an async save in flight is committed first
                    status = "KILLED"
                    return exit_codes.PREEMPTED
            self.finish_training()
            status = "FINISHED"
            return exit_codes.OK
        except TooManyBadSteps as e:
            log.error("%s", e)
            return exit_codes.BAD_STEPS
        except LossSpikeStop as e:
            log.error("%s", e)
            return exit_codes.LOSS_SPIKE
        finally:
            self.profiler.close(self.step)
            self.memory.stop()
            if watchdog:
                watchdog.stop()
            self.tracker.finish(status)

    def train_step(self, batches: Iterator[Batch]) -> dict[str, float]:
        """One optimizer step: `grad_accum` micro-batches of forward/backward, then the engine's update."""
        t0 = time.perf_counter()
        timer = self.timer
        timer.reset()
        timer.record = self.profiler.active
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = flops = 0.0
        skipped = (
            self.engine.skipped_steps
        )  # DeepSpeed skips non-finite updates (fp16 overflow, inf/NaN grads)
        fault_injection.stall(self.step + 1)  # TEST HOOK (METALM_TEST_STALL_STEP): a hung rank
        # TEST HOOK (METALM_TEST_LOSS_SPIKE): a bad stretch of data, keyed by the data position
        spike_factor = fault_injection.loss_spike_factor(
            self.consumed_samples // self.cfg.train.global_batch_size + 1
        )
        # loss_spike.action=skip: the DP-mean loss is known before the last backward, to drop the update
        decide_first = self.spikes.enabled and self.cfg.train.loss_spike.action == spike_policy.SKIP
        drop = False
        figures = None
        batches = self.weighting.step_batches(batches)  # loss_weighting=token: fetched first, tokens counted
        for i in range(self.grad_accum):
            with timer.data_wait:
                batch = next(batches)
            tokens += float((batch.tokens != PAD_ID).sum()) + batch.image_dest.numel()
            flops += flops_mod.batch_flops(self.cfg.model, batch)
            batch = self.to_device(batch)
            with timer.forward:
                if i == 0:
                    fault_injection.slow_rank()  # TEST HOOK (METALM_TEST_SLOW_RANK): a straggler
                loss = self.engine(batch)
                loss = BadStepGuard.poison(self.step + 1, loss)  # TEST HOOK (METALM_TEST_NAN_STEPS)
                if spike_factor != 1.0:
                    loss = loss * spike_factor
                loss = self.weighting.weigh(loss, batch)  # train.loss_weighting (training/loss_weighting.py)
            if decide_first and i == self.grad_accum - 1:
                loss_sum += loss.detach().double().cpu()
                figures = self.step_figures(loss_sum, tokens, flops)
                drop = self.spikes.would_confirm(figures[0] / figures[1])
                if drop:  # a NaN loss: DeepSpeed refuses the update (weights, moments, schedule unchanged)
                    loss = loss * float("nan")
            with timer.backward:
                self.engine.backward(loss)
            with timer.optimizer:
                self.engine.step()
            if figures is None:
                loss_sum += loss.detach().double().cpu()
        self.consumed_samples += self.cfg.train.global_batch_size
        if figures is None:
            figures = self.step_figures(loss_sum, tokens, flops)
        step_time = time.perf_counter() - t0
        phases = timer.seconds()
        return {
            "loss": figures[0] / figures[1],
            "step_time": step_time,
            "tokens": figures[2],
            "flops": figures[3],
            "data_wait": phases["time/data_wait"],
            "skipped": self.engine.skipped_steps - skipped - int(drop),
            "spike_skip": drop,
            **phases,
        }

    def step_figures(self, loss_sum: torch.Tensor, tokens: float, flops: float) -> list[float]:
        """[loss sum, micro-batches, tokens, flops] summed over DP (one all-reduce)."""
        return self.dp_sum(
            torch.tensor([float(loss_sum), self.grad_accum, tokens, flops], dtype=torch.float64)
        ).tolist()

    def skip_data(self, batches: Iterator[Batch], steps: int) -> None:
        """Draw and drop `steps` optimizer steps' worth of batches (exact across epoch ends)."""
        for _ in range(steps * self.grad_accum):
            next(batches)
        self.consumed_samples += steps * self.cfg.train.global_batch_size
        log.warning("skipped %d steps of data before step %d (loss-spike window)", steps, self.step + 1)

    def batches(self) -> Iterator[Batch]:
        """Training batches forever (epoch after epoch); the loader's state resumes mid-epoch."""
        first = True
        while True:
            it = iter(self.train_loader)
            rng = torch.get_rng_state()
            batch = next(
                it, None
            )  # starting a DataLoader iterator draws a seed from the global RNG: undo it,
            torch.set_rng_state(rng)  # so dropout masks do not depend on where a resumed run started an epoch
            if batch is None and first:  # resumed exactly at the end of an epoch: go on with the next one
                first = False
                continue
            first = False
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
            "mfu": (m["flops"] / world / m["step_time"] / (self.peak_tflops * 1e12))
            if self.peak_tflops
            else None,
            **{k: v for k, v in m.items() if k.startswith("time/")},  # seconds per phase of the step
        }
        self.last_metrics = row
        self.losses.append((self.step, m["loss"]))
        self.progress.update(self.step, row)
        self.tracker.log_metrics(row, self.step)
        # per-rank figures: one all-gather every straggler_interval steps
        self.stragglers.add(m["step_time"], m["data_wait"], m["time/data_wait"] + m["time/forward"])
        report = self.stragglers.check(self.step)
        if report is not None:
            self.log_stragglers(report)
        if self.step % t.log_interval == 0 or self.step == t.steps:
            self.progress.print_line(self.step)
            self.tracker.flush()
        timed = {}  # seconds of the step-boundary work that ran (MLflow time/eval, time/checkpoint)
        te = time.perf_counter()
        validate = ev.interval_steps > 0 and self.step % ev.interval_steps == 0 and self.step < t.steps
        if validate:
            with self.not_a_hang():
                self.validate()
        captions = (
            ev.caption_interval_steps > 0
            and self.step % ev.caption_interval_steps == 0
            and self.step < t.steps
        )
        if captions:
            with self.not_a_hang():
                self.log_captions()
        if validate or captions:
            timed["time/eval"] = time.perf_counter() - te
        every = ev.harness_interval_steps
        if ev.harness and every > 0 and self.step % every == 0 and self.step < t.steps:
            self.run_eval_harness()  # logs eval/<task>/<metric> and time/eval_harness
        tc = time.perf_counter()
        with self.not_a_hang():
            committed = self.ckpt.poll()  # an async save whose writers are all done is committed here
        saving = self.ckpt.should_save(self.step)
        if saving:
            self.save()
        if saving or committed is not None:
            timed["time/checkpoint"] = time.perf_counter() - tc
        if self.profiler.window_ended(self.step):
            self.publish_profile()
        self.memory.maybe_dump_requested(self.step)
        if timed:
            self.tracker.log_metrics(timed, self.step)

    def finish_training(self) -> None:
        with self.not_a_hang():
            if self.val_loader is not None:
                self.validate()
            if self.cfg.eval.caption_samples > 0:
                self.log_captions()
        if self.cfg.eval.harness:
            self.run_eval_harness()
        if self.ckpt.last_saved_step != self.step and (
            self.cfg.checkpoint.interval_steps > 0 or self.cfg.checkpoint.interval_minutes > 0
        ):
            self.save()
        with self.not_a_hang():
            self.ckpt.wait()  # an async save still in flight is committed before the job ends
        self.tracker.flush()

    # ---- checkpoints (evaluation: trainer_evaluation.py; tracking and policies: trainer_tracking.py) -------------------------------------------------------------
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
            "loss_spike": self.spikes.state_dict(),
            "data_skips": {str(k): v for k, v in self.data_skips.items()},
        }

    def save(self, blocking: bool | None = None) -> Path:
        """COLLECTIVE. Save a checkpoint of this step (async with checkpoint.async_save unless `blocking`)."""
        with self.not_a_hang():
            return self.ckpt.save(self.engine, self.step, self.trainer_state(), blocking=blocking)

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

    def resume(self, newest: bool = False, max_step: int | None = None) -> dict | None:
        expect = {"vocab_size": self.cfg.model.vocab_size}
        if self.tokenizer_sha256:
            expect["tokenizer_sha256"] = self.tokenizer_sha256
        with self.not_a_hang():
            state = self.ckpt.resume(self.engine, expect=expect, newest=newest, max_step=max_step)
        if state is None:
            return None
        self.step = int(state["step"])
        self.consumed_samples = int(state.get("consumed_samples", 0))
        if state.get("dataloader"):
            # (the loaders also reset streaming's next epoch: a rollback inside this process resumes exactly)
            self.train_loader.load_state_dict(state["dataloader"])
        self.spikes.load_state_dict(state.get("loss_spike"))
        self.data_skips = {int(k): int(v) for k, v in (state.get("data_skips") or {}).items()}
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
