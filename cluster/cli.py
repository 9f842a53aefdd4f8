"""`./launch.sh MODE ...`: local torchrun, deepspeed multi-node, SLURM sbatch, MLflow server.

Every mode validates the training config (same checks as `python -m training`) before it starts
or submits anything, and `--dry-run` prints what would run instead of running it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from common.errors import UserError
from common.exit_codes import FAILURE, OK, PREEMPTED, USER_ERROR
from training.run_dir import RunDir

from . import commands, hostfile
from .commands import TrainingJob, shell_join
from .mlflow_server import MlflowServerOptions, mlflow_server_command, tracking_uri_hint
from .sbatch import SbatchOptions, check_syntax, render_sbatch, submit
from .worker import EXIT_DIR_ENV, read_exit_codes

logger = logging.getLogger("cluster")

REPO_ROOT = Path(__file__).resolve().parent.parent

EPILOG = """\
modes:
  local       torchrun on this machine (CPU or GPUs)
                ./launch.sh local --nproc 2 configs/debug.yaml train.steps=20
  deepspeed   the deepspeed multi-node launcher over a hostfile ("host slots=N" lines)
                ./launch.sh deepspeed --hostfile hosts.txt --launcher pdsh configs/metalm-1.3b.yaml
  slurm       render cluster/slurm/metalm.sbatch.in into RUN_DIR/logs/ and sbatch it
                ./launch.sh slurm --nodes 4 --gpus-per-node 8 --partition gpu --time 24:00:00 configs/metalm-1.3b.yaml
  mlflow-server  an MLflow tracking server for the cluster (train with tracking.uri=http://HOST:PORT)
                ./launch.sh mlflow-server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:////shared/mlflow.db \\
                    --artifacts-destination /shared/mlartifacts
  hostfile    SLURM node list -> deepspeed hostfile (python -m cluster.hostfile --help)

`./launch.sh MODE --help` lists each mode's options. Exit codes: 0 done, 1 failure, 2 bad
input/config (nothing started), 75 preempted (checkpoint committed; run the same command again to resume).
"""


def _python() -> str:
    return os.environ.get("METALM_PYTHON") or sys.executable


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training config YAML, e.g. configs/debug.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 parallel.tp=2")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the commands/script; run nothing"
    )
    p.add_argument(
        "--skip-data-check",
        action="store_true",
        help="do not open the data/tokenizer folders while validating (they are not on this machine)",
    )
    p.add_argument(
        "--module",
        default="training",
        help="Python module each rank runs with `--config FILE [overrides]` (default: training)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./launch.sh",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="mode", metavar="MODE")
    sub.required = True

    p = sub.add_parser(
        "local",
        help="torchrun on this machine",
        description="torchrun --standalone on this machine with N processes (GPUs or CPU ranks).",
    )
    p.add_argument(
        "--nproc", type=int, default=None, help="processes (default: number of visible GPUs, or 1 on CPU)"
    )
    p.add_argument(
        "--nnodes", type=int, default=1, help="nodes of the job; > 1 makes this one node of a multi-node run"
    )
    p.add_argument(
        "--node-rank", type=int, default=0, help="this node's rank (0 .. nnodes-1) when --nnodes > 1"
    )
    p.add_argument(
        "--rdzv-endpoint",
        default="",
        help="HOST:PORT of the c10d rendezvous, the same on every node (needed when --nnodes > 1)",
    )
    p.add_argument(
        "--rdzv-id", default="metalm", help="rendezvous id, the same on every node (default metalm)"
    )
    p.add_argument(
        "--shutdown-timeout",
        type=int,
        default=600,
        help="seconds ranks get to checkpoint after SIGTERM/SIGUSR1 before SIGKILL (default 600)",
    )
    _add_job_args(p)

    p = sub.add_parser(
        "deepspeed",
        help="deepspeed multi-node launcher",
        description="The deepspeed launcher over a hostfile (one `host slots=N` line per node). "
        "pdsh needs passwordless ssh to every host; put host/port/key settings in "
        "~/.ssh/config or PDSH_SSH_ARGS_APPEND.",
    )
    p.add_argument(
        "--hostfile", required=True, help="deepspeed hostfile (write one with `./launch.sh hostfile`)"
    )
    p.add_argument(
        "--launcher",
        choices=commands.DEEPSPEED_LAUNCHERS,
        default="pdsh",
        help="how deepspeed reaches the hosts (default pdsh)",
    )
    p.add_argument(
        "--master-addr",
        default="",
        help="address of the first host as the others reach it (default: deepspeed's choice)",
    )
    p.add_argument("--master-port", type=int, default=None, help="rendezvous port (default 29500)")
    p.add_argument("--ssh-port", type=int, default=None, help="ssh port of the hosts (default 22)")
    p.add_argument(
        "--no-ssh-check",
        action="store_true",
        help="skip deepspeed's passwordless-ssh check (e.g. when ssh options come from PDSH_SSH_ARGS_APPEND)",
    )
    p.add_argument("--launcher-args", default="", help="extra arguments for pdsh/srun/mpirun, one string")
    _add_job_args(p)

    p = sub.add_parser(
        "slurm",
        help="render and submit the sbatch script",
        description="Render cluster/slurm/metalm.sbatch.in for this job, write it under "
        "RUN_DIR/logs/, and submit it with sbatch. The job requeues itself after a "
        "preemption save and resumes from RUN_DIR/checkpoints/latest.",
    )
    d = SbatchOptions()
    p.add_argument("--nodes", type=int, default=d.nodes, help="nodes (default 1)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=d.gpus_per_node,
        help="GPUs per node = processes per node (default 0: CPU job)",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        help="processes per node (default: --gpus-per-node, or 1 on CPU)",
    )
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per node's task")
    p.add_argument("--partition", default="", help="SLURM partition")
    p.add_argument("--account", default="", help="SLURM account")
    p.add_argument("--qos", default="", help="SLURM QOS")
    p.add_argument("--time", default="", help="time limit, e.g. 24:00:00")
    p.add_argument("--mem", default="", help="memory per node, e.g. 500G")
    p.add_argument("--job-name", default=d.job_name, help="job name (default metalm)")
    p.add_argument(
        "--launcher",
        choices=("torchrun", "deepspeed"),
        default=d.launcher,
        help="per-node launcher: torchrun with c10d rendezvous (default) or deepspeed --launcher slurm",
    )
    p.add_argument(
        "--signal-lead",
        type=int,
        default=d.signal_lead_s,
        help=f"send USR1 (save + requeue) this many seconds before the time limit (default {d.signal_lead_s})",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=int,
        default=d.shutdown_timeout_s,
        help=f"seconds ranks get to checkpoint after the signal before SIGKILL (default {d.shutdown_timeout_s})",
    )
    p.add_argument(
        "--max-requeues",
        type=int,
        default=d.max_requeues,
        help=f"stop requeueing after this many restarts (default {d.max_requeues})",
    )
    p.add_argument(
        "--rdzv-host",
        default="",
        help="rendezvous address (default: first node of the allocation, from `scontrol show hostnames`; "
        "the env METALM_RDZV_HOST at submit time does the same)",
    )
    p.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="extra sbatch option, repeatable, e.g. --sbatch=--constraint=h100",
    )
    _add_job_args(p)

    o = MlflowServerOptions()
    p = sub.add_parser(
        "mlflow-server",
        help="run an MLflow tracking server",
        description="Run an MLflow tracking server in the foreground (SQLite or database store, "
        "artifacts served by the server). Jobs log to it with tracking.uri=http://HOST:PORT.",
    )
    p.add_argument(
        "--host", default=o.host, help=f"address to bind (default {o.host}; 0.0.0.0 for the cluster)"
    )
    p.add_argument("--port", type=int, default=o.port, help=f"port (default {o.port})")
    p.add_argument(
        "--backend-store-uri",
        default=o.backend_store_uri,
        help=f"sqlite:///FILE or a database URI (default {o.backend_store_uri})",
    )
    p.add_argument(
        "--artifacts-destination",
        default=o.artifacts_destination,
        help=f"artifact folder or URI (default {o.artifacts_destination})",
    )
    p.add_argument(
        "--workers", type=int, default=o.workers, help=f"server worker processes (default {o.workers})"
    )
    p.add_argument("--allowed-hosts", default="", help="extra Host headers to accept, comma-separated")
    p.add_argument("--dry-run", action="store_true", help="print the command; run nothing")

    sub.add_parser("hostfile", help="SLURM node list -> deepspeed hostfile", add_help=False)
    return parser


# ---- config validation ----------------------------------------------------------------------


def check_training_config(job: TrainingJob, world_size: int, check_data: bool = True):
    """Load + validate the training config for `world_size` ranks; returns the resolved config."""
    try:
        from training.config import load_config
    except ImportError as e:  # pragma: no cover - only in a broken checkout
        raise UserError(f"cannot import the training package to validate {job.config}: {e}") from None
    cfg = load_config(job.config, job.overrides)
    cfg.validate(world_size, check_data=check_data)
    return cfg


# ---- running children -----------------------------------------------------------------------


def run_forwarding_signals(cmd: list[str], env: dict, group: bool = False, stop_timeout: float = 30) -> int:
    """Run cmd; pass SIGINT/SIGTERM/SIGUSR1/SIGUSR2 on to it (e.g. a scheduler's preemption warning).

    group=True: the child leads its own process group and signals go to the whole group (a server
    with worker processes); after SIGINT/SIGTERM, whatever is left of the group after
    `stop_timeout` seconds is killed.
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=group)
    stopping: list[float] = []

    def forward(signum, _frame):
        logger.warning("got %s: passing it on to %s", signal.Signals(signum).name, Path(cmd[0]).name)
        if signum in (signal.SIGINT, signal.SIGTERM):
            stopping.append(time.monotonic())
        try:
            if group:
                os.killpg(proc.pid, signum)
            elif proc.poll() is None:
                proc.send_signal(signum)
        except ProcessLookupError:
            pass

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    old = {s: signal.signal(s, forward) for s in sigs}
    try:
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if group and stopping and time.monotonic() - stopping[0] > stop_timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
        if group:  # the leader is gone; its workers may not be
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return 128 - rc if rc < 0 else rc  # killed by signal N -> 128 + N, as a shell reports it
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def job_exit_code(launcher_rc: int, exit_dir: Path) -> int:
    """75 when any rank exited 75 (checkpoint committed), else the launcher's own code."""
    codes = read_exit_codes(exit_dir)
    if PREEMPTED in codes.values():
        return PREEMPTED
    return launcher_rc


def _exit_dir(run_dir: RunDir, tag: str) -> Path:
    d = run_dir.resolved().launcher_logs(tag)
    (d / "exit").mkdir(parents=True, exist_ok=True)
    return d


def _finish(rc: int, log_dir: Path) -> int:
    if rc == PREEMPTED:
        logger.warning("preempted: a checkpoint was committed; run the same command again to resume")
    elif rc != OK:
        logger.error("training exited with %d; logs under %s", rc, log_dir)
    return rc


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


# ---- modes ----------------------------------------------------------------------------------


def mode_local(args) -> int:
    job = TrainingJob(args.config, args.overrides, module=args.module)
    nproc = args.nproc if args.nproc is not None else max(1, _visible_gpus())
    problems = []
    if nproc < 1:
        problems.append(f"--nproc {nproc}: need at least 1 process")
    if args.nnodes < 1 or not 0 <= args.node_rank < max(1, args.nnodes):
        problems.append(f"--nnodes {args.nnodes} --node-rank {args.node_rank}: need 0 <= node-rank < nnodes")
    if args.nnodes > 1 and ":" not in args.rdzv_endpoint:
        problems.append(
            "--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node; HOST = node 0)"
        )
    if problems:
        raise UserError(problems)
    cfg = check_training_config(job, nproc * args.nnodes, check_data=not args.skip_data_check)
    python = _python()

    def command(log_dir: Path) -> list[str]:
        ranks = str(log_dir / "ranks")
        if args.nnodes == 1:
            return commands.torchrun_local(job, python, nproc, args.shutdown_timeout, log_dir=ranks)
        return commands.torchrun_node(
            job,
            python,
            args.nnodes,
            nproc,
            args.rdzv_endpoint,
            args.rdzv_id,
            args.shutdown_timeout,
            log_dir=ranks,
        )

    if args.dry_run:
        log_dir = cfg.run_dir.resolved().logs / "local-<time>"
        print(f"cd {shell_join([str(Path.cwd())])}")
        print(f"{EXIT_DIR_ENV}={shell_join([str(log_dir / 'exit')])} {shell_join(command(log_dir))}")
        return OK
    log_dir = _exit_dir(cfg.run_dir, f"local-node{args.node_rank}" if args.nnodes > 1 else "local")
    cmd = command(log_dir)
    env = dict(os.environ, **{EXIT_DIR_ENV: str(log_dir / "exit")})
    logger.info("running: %s", shell_join(cmd))
    return _finish(job_exit_code(run_forwarding_signals(cmd, env), log_dir / "exit"), log_dir)


def mode_deepspeed(args) -> int:
    job = TrainingJob(args.config, args.overrides, module=args.module)
    hosts = hostfile.read_hostfile(args.hostfile)
    world = sum(h.slots for h in hosts)
    cfg = check_training_config(job, world, check_data=not args.skip_data_check)
    python = _python()
    cmd = commands.deepspeed_command(
        job,
        python,
        str(Path(args.hostfile).resolve()),
        launcher=args.launcher,
        master_addr=args.master_addr,
        master_port=args.master_port,
        ssh_port=args.ssh_port,
        no_ssh_check=args.no_ssh_check,
        launcher_args=args.launcher_args,
    )
    if args.dry_run:
        print(f"# {len(hosts)} host(s), {world} rank(s): " + ", ".join(f"{h.host}x{h.slots}" for h in hosts))
        print(f"cd {shell_join([str(Path.cwd())])}")
        print(shell_join(cmd))
        return OK
    log_dir = _exit_dir(cfg.run_dir, "deepspeed")
    # the remote ranks get variables through DeepSpeed's env file (pdsh does not pass our environment)
    env_file = log_dir / "deepspeed_env"
    lines = [f"{EXIT_DIR_ENV}={log_dir / 'exit'}"]
    lines += [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "METALM_PYTHON") if k in os.environ]
    env_file.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, DS_ENV_FILE=str(env_file), **{EXIT_DIR_ENV: str(log_dir / "exit")})
    logger.info("running: %s", shell_join(cmd))
    return _finish(job_exit_code(run_forwarding_signals(cmd, env), log_dir / "exit"), log_dir)


def mode_slurm(args) -> int:
    job = TrainingJob(args.config, args.overrides, module=args.module)
    opts = SbatchOptions(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        nproc_per_node=args.nproc_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        time=args.time,
        mem=args.mem,
        job_name=args.job_name,
        launcher=args.launcher,
        signal_lead_s=args.signal_lead,
        shutdown_timeout_s=args.shutdown_timeout,
        max_requeues=args.max_requeues,
        rdzv_host=args.rdzv_host,
        extra_sbatch=list(args.sbatch),
    )
    problems = opts.problems()
    if problems:
        raise UserError(problems)
    cfg = check_training_config(job, opts.world_size, check_data=not args.skip_data_check)
    run = cfg.run_dir.resolved()
    run_dir = run.root
    stamp = time.strftime("%Y%m%d-%H%M%S")
    script = run.sbatch_script(stamp)
    # the job (and every requeue of it) reads a frozen copy: later edits of the file do not leak in
    frozen = TrainingJob(str(run.frozen_config(stamp, Path(job.config).name)), job.overrides, job.module)
    text = render_sbatch(opts, frozen, run_dir, Path.cwd(), _python())
    if args.dry_run:
        logger.info(
            "dry run: would write %s and a copy of %s as %s, then: sbatch %s",
            script,
            job.config,
            frozen.config,
            script,
        )
        print(text, end="")
        return OK
    run.logs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.config, frozen.config)
    script.write_text(text)
    check_syntax(script)
    job_id = submit(script)
    print(f"submitted job {job_id}")
    print(f"  script:     {script}")
    print(f"  batch log:  {run.slurm_batch_log(job_id)}")
    print(f"  rank logs:  {run.slurm_rank_logs(job_id)}/restart-<N>/")
    print(f"  checkpoints:{run.checkpoints}")
    print(f"  watch:      squeue -j {job_id}; scontrol show job {job_id}")
    return OK


def mode_mlflow_server(args) -> int:
    opts = MlflowServerOptions(
        host=args.host,
        port=args.port,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        workers=args.workers,
        allowed_hosts=args.allowed_hosts,
    )
    cmd = mlflow_server_command(opts, _python())
    if args.dry_run:
        print(shell_join(cmd))
        return OK
    logger.info(
        "MLflow server on %s:%d; train with tracking.uri=%s", opts.host, opts.port, tracking_uri_hint(opts)
    )
    env = dict(os.environ)
    # MLflow 3 starts a job runner with several huey worker processes for its GenAI jobs;
    # training tracking does not use them (set the variable to true to keep them)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return run_forwarding_signals(cmd, env, group=True, stop_timeout=15)


MODES = {
    "local": mode_local,
    "deepspeed": mode_deepspeed,
    "slurm": mode_slurm,
    "mlflow-server": mode_mlflow_server,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "hostfile":
        return hostfile.main(argv[1:])
    logging.basicConfig(level=logging.WARNING, format="[launch] %(message)s")
    logger.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    args = build_parser().parse_args(argv)
    try:
        return MODES[args.mode](args)
    except UserError as e:
        logger.error("%s", e)
        return USER_ERROR
    except RuntimeError as e:
        logger.error("%s", e)
        return FAILURE
