"""A real two-node SLURM cluster on this machine: munged + slurmctld + two slurmd (n1, n2).

    with LocalSlurm(workdir) as slurm:          # installs nothing; see packages.ensure_packages
        env = slurm.env()                       # SLURM_CONF etc. for sbatch/squeue/scontrol
        subprocess.run(["sbatch", ...], env=env)

Both nodes are slurmd processes on this host, each on its own port, NodeAddr=127.0.0.1 and
NodeHostname = the real host name. The node names do not resolve, so jobs that need a
rendezvous address use 127.0.0.1 (launch.sh slurm --rdzv-host). `AuthInfo=cred_expire=10`
shortens the delay before a requeued job can start again (about 20 s instead of about 150 s).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

from .daemons import Daemon, free_port, private_shm, tail, wait_until
from .packages import which

logger = logging.getLogger(__name__)

SLURM_CONF_TEMPLATE = """\
# Written by cluster/testbed/slurm.py: a two-node SLURM on one machine, state under {root}
ClusterName=metalmtest
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=30
MailProg=/bin/true
SchedulerParameters=sched_interval=2
{nodes}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """Start/stop the daemons of a two-node SLURM whose files all live under `workdir`."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        nodes: tuple[str, ...] = ("n1", "n2"),
        cpus_per_node: int = 2,
        memory_mb: int = 4096,
    ):
        self.root = Path(workdir).resolve()
        self.nodes, self.cpus_per_node, self.memory_mb = nodes, cpus_per_node, memory_mb
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.daemons: list[Daemon] = []

    # ---- configuration -------------------------------------------------------------------
    def _write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munged runs as the munge user and must reach its socket folder
        for sub in ("state", "spool", "run", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for n in self.nodes:
            (self.root / "spool" / n).mkdir(exist_ok=True)
        hostname = socket.gethostname()
        self.ctld_port = free_port()
        node_lines = []
        for n in self.nodes:
            port = free_port()
            node_lines.append(
                f"NodeName={n} NodeHostname={hostname} NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={self.cpus_per_node} RealMemory={self.memory_mb} State=UNKNOWN"
            )
        self.conf.write_text(
            SLURM_CONF_TEMPLATE.format(
                root=self.root,
                hostname=hostname,
                ctld_port=self.ctld_port,
                munge_socket=self.munge_socket,
                nodes="\n".join(node_lines),
                node_names=",".join(self.nodes),
            )
        )

    def env(self, base: dict | None = None) -> dict:
        """Environment for SLURM clients (sbatch, squeue, scontrol, scancel) talking to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        sbin = ":".join(d for d in ("/usr/sbin", "/sbin") if d not in env.get("PATH", "").split(":"))
        if sbin:
            env["PATH"] = env.get("PATH", "") + ":" + sbin
        return env

    # ---- lifecycle -----------------------------------------------------------------------
    def _start_munge(self) -> None:
        mdir = self.root / "munge"
        shutil.chown(mdir, "munge", "munge")
        mdir.chmod(0o755)
        for f in ("munged.log", "munged.seed", "munged.pid"):
            p = mdir / f
            if p.exists():
                p.unlink()
        cmd = [
            which("munged") or "munged",
            "--foreground",
            "--force",
            f"--socket={self.munge_socket}",
            f"--log-file={mdir / 'munged.log'}",
            f"--pid-file={mdir / 'munged.pid'}",
            f"--seed-file={mdir / 'munged.seed'}",
        ]
        self.daemons.append(Daemon("munged", cmd, self.root / "log" / "munged.out", user="munge"))
        wait_until(
            self.munge_socket.exists,
            15,
            "munged socket",
            on_timeout=lambda: tail(self.root / "log" / "munged.out") + tail(mdir / "munged.log"),
        )

    def start(self, timeout: float = 60) -> LocalSlurm:
        self._write_config()
        try:
            self._start_munge()
            env = self.env()
            self.daemons.append(
                Daemon(
                    "slurmctld",
                    [which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(self.conf)],
                    self.root / "log" / "slurmctld.out",
                    env=env,
                )
            )
            for n in self.nodes:
                self.daemons.append(
                    Daemon(
                        f"slurmd-{n}",
                        # each node gets a private /dev/shm, as separate machines have
                        private_shm([which("slurmd") or "slurmd", "-D", "-N", n, "-f", str(self.conf)]),
                        self.root / "log" / f"slurmd-{n}.out",
                        env=env,
                    )
                )
            wait_until(
                self.nodes_idle,
                timeout,
                f"nodes {self.nodes} to be idle",
                interval=0.5,
                on_timeout=self.diagnostics,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every daemon this object started, slurmd first, munged last."""
        for d in reversed(self.daemons):
            try:
                d.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                logger.exception("could not stop %s", d)
        self.daemons.clear()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- queries -------------------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), env=self.env(), capture_output=True, text=True, check=check, timeout=timeout
        )

    def nodes_idle(self) -> bool:
        if any(not d.alive() for d in self.daemons):
            raise RuntimeError("a SLURM daemon exited during startup\n" + self.diagnostics())
        res = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        states = dict(line.split() for line in res.stdout.splitlines() if len(line.split()) == 2)
        return all(states.get(n) == "idle" for n in self.nodes)

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, ExitCode, Restarts, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout.strip()
        info: dict[str, str] = {}
        for token in out.split():
            if "=" in token:
                k, v = token.split("=", 1)
                info.setdefault(k, v)
        return info

    def diagnostics(self) -> str:
        parts = [repr(d) for d in self.daemons]
        logs = sorted((self.root / "log").glob("*"))
        parts += [tail(p, 1500) for p in logs]
        return "\n".join(parts)
