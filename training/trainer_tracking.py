"""The Trainer's reporting and policies at step boundaries: MLflow run start (params, tags, parent model),
loss-spike responses, straggler reports and profiler traces. A mixin of `training.trainer.Trainer`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from training.config import loader as config_io
from training.resilience import loss_spike as spike_policy
from training.resilience.loss_spike import LossSpikeStop

log = logging.getLogger("training.trainer")


class TrackingSteps:
    def on_loss_spike(self, spike, skipped: bool) -> bool:
        """A confirmed loss spike: recorded (MLflow loss_spike/*, events.jsonl), then the configured
        response; True when the run rolled back (the caller restarts its batches)."""
        action = self.cfg.train.loss_spike.action
        rec = spike.record()
        rec.pop("step")
        self.tracker.log_metrics(
            {
                "loss_spike/loss": spike.loss,
                "loss_spike/threshold": spike.threshold,
                "loss_spike/ema_mean": spike.mean,
                "loss_spike/ratio": rec["ratio"],
                "loss_spike/events": float(self.spikes.events),
                "loss_spike/skipped_update": float(skipped),
            },
            self.step,
        )
        self.events.record("loss_spike", self.step, action=action, skipped_update=skipped, **rec)
        if action == spike_policy.STOP:
            raise LossSpikeStop(
                f"loss spike at step {self.step}: {spike.loss:.4f} > {spike.threshold:.4f} (EMA mean "
                f"{spike.mean:.4f}) for {spike.run} step(s) in a row, train.loss_spike.action=stop. Resume "
                "from the last checkpoint with a lower optim.lr, or another action (log|skip|rollback)."
            )
        if action != spike_policy.ROLLBACK:
            return False
        first = spike.first_step
        if self.spikes.rollbacks >= self.cfg.train.loss_spike.max_rollbacks:
            raise LossSpikeStop(
                f"loss spike at step {self.step} after {self.spikes.rollbacks} rollback(s) for spikes "
                "(train.loss_spike.max_rollbacks): the run does not recover by skipping data; lower optim.lr"
            )
        self.spikes.rollbacks += 1
        if self.resume(newest=True, max_step=first - 1) is None:
            raise LossSpikeStop(
                f"loss spike at step {self.step}: no valid checkpoint from before step {first} to roll back "
                "to (checkpoint.interval_steps); stopping"
            )
        self.data_skips[first] = spike.run
        log.warning(
            "loss spike: rolled back to step %d; the data of steps %d-%d will be skipped",
            self.step,
            first,
            spike.step,
        )
        self.events.record(
            "loss_spike_rollback", spike.step, to_step=self.step, skip_data_of_steps=[first, spike.step]
        )
        return True

    def log_stragglers(self, report) -> None:
        """Per-rank figures of a window to MLflow; a newly named straggler as tags, text and an event."""
        self.tracker.log_metrics(report.metrics(), self.step)
        for fig in report.named:
            self.tracker.set_tags({"straggler.rank": fig.rank, "straggler.host": fig.host})
            self.tracker.log_text(report.table(), f"stragglers/step_{self.step:08d}.txt")
            self.events.record(
                "straggler",
                self.step,
                rank=fig.rank,
                host=fig.host,
                ratio=round(fig.ratio, 4),
                windows=fig.windows,
                local_time_s=fig.local_time,
                step_time_s=fig.step_time,
                data_wait_s=fig.data_wait,
            )

    def publish_profile(self) -> None:
        """COLLECTIVE after the profiled window: memory snapshots, then rank 0 logs the traces it can see
        (all of them on a shared file system) as MLflow artifacts under profile/."""
        last = self.profiler.last
        if self.cfg.profile.memory_snapshot:
            self.memory.dump(last, "profile_window")
        with self.not_a_hang():
            self.coll.barrier()  # every traced rank has written its files
        if self.topo.rank == 0:
            for p in sorted(self.run_dir.profile.glob(f"rank*_steps*-{last}.json")) + sorted(
                self.run_dir.profile.glob(f"memory_rank*_step{last}_*.pickle")
            ):
                self.tracker.log_artifact(p, "profile")

    def start_tracking(self) -> None:

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
                    "parent_model": str(Path(parent["path"]).resolve()),
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
