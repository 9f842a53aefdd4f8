"""`./launch.sh slurm`: render cluster/slurm/metalm.sbatch.in into RUN_DIR/logs/ and sbatch it."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from common.errors import UserError
from common.exit_codes import OK

from ..commands import TrainingJob
from ..options import add_options, from_args
from ..sbatch import SbatchOptions, check_syntax, render_sbatch, submit
from .job import JobArgs, python

logger = logging.getLogger(__name__)

NAME = "slurm"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME,
        help="render and submit the sbatch script",
        description="Render cluster/slurm/metalm.sbatch.in for this job, write it under "
        "RUN_DIR/logs/, and submit it with sbatch. The job requeues itself after a "
        "preemption save and resumes from RUN_DIR/checkpoints/latest.",
    )
    add_options(p, SbatchOptions)
    add_options(p, JobArgs)


def run(args: argparse.Namespace) -> int:
    opts, job_args = from_args(SbatchOptions, args), from_args(JobArgs, args)
    job = job_args.job
    problems = opts.problems()
    if problems:
        raise UserError(problems)
    cfg = job_args.check_config(opts.world_size)
    run_dir = cfg.run_dir.resolved()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    script = run_dir.sbatch_script(stamp)
    # the job (and every requeue of it) reads a frozen copy: later edits of the file do not leak in
    frozen = TrainingJob(str(run_dir.frozen_config(stamp, Path(job.config).name)), job.overrides, job.module)
    text = render_sbatch(opts, frozen, run_dir, Path.cwd(), python())
    if job_args.dry_run:
        logger.info(
            "dry run: would write %s and a copy of %s as %s, then: sbatch %s",
            script,
            job.config,
            frozen.config,
            script,
        )
        print(text, end="")
        return OK
    run_dir.logs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.config, frozen.config)
    script.write_text(text)
    check_syntax(script)
    job_id = submit(script)
    print(f"submitted job {job_id}")
    print(f"  script:     {script}")
    print(f"  batch log:  {run_dir.slurm_batch_log(job_id)}")
    print(f"  rank logs:  {run_dir.slurm_restart_logs(job_id, '<N>').root}/")
    print(f"  checkpoints:{run_dir.checkpoints}")
    print(f"  watch:      squeue -j {job_id}; scontrol show job {job_id}")
    return OK
