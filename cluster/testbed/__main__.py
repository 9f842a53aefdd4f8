"""`python -m cluster.testbed slurm|ssh [--workdir DIR]`: a two-node SLURM or two ssh hosts on this machine.

Starts the daemons (installing the Debian packages first if needed), prints how to use them,
and stops everything on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading

from .packages import SLURM_PACKAGES, SSH_PACKAGES, TestbedUnavailable, ensure_packages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.testbed", description=__doc__.splitlines()[0])
    p.add_argument(
        "what", choices=("slurm", "ssh"), help="slurm: munged+slurmctld+2 slurmd; ssh: 2 sshd hosts"
    )
    p.add_argument("--workdir", default="", help="folder for config/state/logs (default: a new temp folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[testbed] %(message)s")
    workdir = args.workdir or tempfile.mkdtemp(prefix=f"metalm-{args.what}-")
    try:
        ensure_packages(SLURM_PACKAGES if args.what == "slurm" else SSH_PACKAGES)
    except TestbedUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    if args.what == "slurm":
        from .slurm import LocalSlurm

        bed = LocalSlurm(workdir).start()
        print(
            f"two-node SLURM up (nodes {', '.join(bed.nodes)}); in another shell:\n"
            f"  export SLURM_CONF={bed.conf}\n  sinfo\n"
            "  ./launch.sh slurm --nodes 2 --rdzv-host 127.0.0.1 configs/debug.yaml",
            flush=True,
        )
    else:
        from .ssh import LocalSshHosts

        bed = LocalSshHosts(workdir).start()
        print(
            f"ssh hosts {', '.join(bed.aliases)} up; in another shell:\n"
            f"  export PDSH_SSH_ARGS_APPEND='-F {bed.ssh_config}'\n"
            f"  pdsh -R ssh -w {','.join(bed.aliases)} hostname\n"
            "  printf 'node-a slots=1\\nnode-b slots=1\\n' > hostfile\n"
            "  ./launch.sh deepspeed --hostfile hostfile --master-addr 127.0.0.1 --no-ssh-check configs/debug.yaml",
            flush=True,
        )
    try:
        stop.wait()
    finally:
        bed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
