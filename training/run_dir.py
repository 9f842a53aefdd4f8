"""The run folder: the one object that knows where each file of a run lives.

    run = RunDir(cfg.train.run_dir)
    run.checkpoints / run.latest / run.config_yaml / run.rank_log("train", rank) / run.mlflow_db ...

Layout (README "Fault tolerance" and "Running on a cluster" describe the contents):

    RUN_DIR/config.yaml              resolved config (+ hash)          ds_config.json   DeepSpeed config
    RUN_DIR/mlflow_run.json          tracking URI, experiment, run id  learning_check.json, eval/...
    RUN_DIR/checkpoints/step_NNNNNNNN/   checkpoints/latest   checkpoints/.universal/ (DP re-layout)
    RUN_DIR/logs/<name>_rank<r>.log  per-rank logs; logs/slurm-<job>.out, logs/sbatch-*.sh, logs/<launcher>-*/
                                     and logs/slurm-<job>/restart-<n>/ (LaunchLogs: exit/, ranks/, ...)
    RUN_DIR/hangs/rank<r>.txt        watchdog stack dumps
    RUN_DIR/profile/                 torch.profiler traces (rank<r>_steps<a>-<b>.json) and CUDA memory snapshots
    RUN_DIR/events.jsonl             notable events (loss spikes, stragglers), one JSON object per line
    RUN_DIR/../mlflow.db, ../mlartifacts   the default local MLflow store, shared by the runs of a folder
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

STEP_PREFIX = "step_"


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    def resolved(self) -> RunDir:
        return RunDir(self.root.resolve())

    # ---- files at the top -------------------------------------------------------------------
    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ds_config(self) -> Path:
        return self.root / "ds_config.json"

    @property
    def mlflow_run(self) -> Path:
        return self.root / "mlflow_run.json"

    @property
    def learning_check(self) -> Path:
        return self.root / "learning_check.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    # ---- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest"

    @property
    def universal(self) -> Path:
        return self.checkpoints / ".universal"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{STEP_PREFIX}{step:08d}"

    # ---- logs -------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def rank_log(self, name: str, rank: int) -> Path:
        return self.logs / f"{name}_rank{rank}.log"

    def launcher_logs(self, tag: str) -> Path:
        """A fresh folder per launch for torchrun/deepspeed logs and per-rank exit codes."""
        return self.logs / f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    def sbatch_script(self, stamp: str) -> Path:
        return self.logs / f"sbatch-{stamp}.sh"

    def frozen_config(self, stamp: str, config_name: str) -> Path:
        """The config copy a SLURM job reads (editing the original after submitting changes nothing)."""
        return self.logs / f"sbatch-{stamp}-{config_name}"

    def slurm_batch_log(self, job_id: str) -> Path:
        return self.logs / f"slurm-{job_id}.out"

    def slurm_rank_logs(self, job_id: str) -> Path:
        return self.logs / f"slurm-{job_id}"

    def launch(self, tag: str, stamp: str | None = None) -> LaunchLogs:
        """The files of one launch: in `launcher_logs(tag)`, or in logs/<tag>-<stamp> when given a stamp."""
        return LaunchLogs(self.launcher_logs(tag) if stamp is None else self.logs / f"{tag}-{stamp}")

    def slurm_restart_logs(self, job_id: str, restart: int | str) -> LaunchLogs:
        """The files of one start of a SLURM job (restart 0, then one more per requeue)."""
        return LaunchLogs(self.slurm_rank_logs(job_id) / f"restart-{restart}")

    @property
    def hangs(self) -> Path:
        return self.root / "hangs"

    @property
    def profile(self) -> Path:
        """torch.profiler traces and CUDA memory snapshots (training/observability/profiler.py)."""
        return self.root / "profile"

    @property
    def events(self) -> Path:
        """events.jsonl: loss spikes, stragglers and what was done about them (rank 0 writes it)."""
        return self.root / "events.jsonl"

    # ---- the default local MLflow store (beside the run: one store for the runs of a folder) ----
    @property
    def mlflow_db(self) -> Path:
        return self.root.resolve().parent / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.root.resolve().parent / "mlartifacts"

    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"


@dataclass(frozen=True)
class LaunchLogs:
    """One launch's folder under RUN_DIR/logs/ (RunDir.launch, RunDir.slurm_restart_logs)."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def exit(self) -> Path:
        """rank-<r>.exit: each rank's exit code (cluster/worker.py writes them to $METALM_EXIT_DIR)."""
        return self.root / "exit"

    @property
    def ranks(self) -> Path:
        """torchrun's --log-dir: each rank's stdout/stderr."""
        return self.root / "ranks"

    @property
    def deepspeed_env(self) -> Path:
        """DS_ENV_FILE: the variables the deepspeed launcher passes on to remote ranks."""
        return self.root / "deepspeed_env"

    @property
    def hostfile(self) -> Path:
        """The deepspeed hostfile a SLURM job writes for its allocation."""
        return self.root / "hostfile"
