"""A real SLURM cluster (munged + slurmctld + two slurmd) and ssh "hosts" on one machine.

Used by tests/cluster and usable by hand to try the launchers without a cluster:

    python -m cluster.testbed slurm --workdir /tmp/tb     # starts, prints the env to use, Ctrl-C stops
    python -m cluster.testbed ssh --workdir /tmp/tb

Everything (config, state, spool, logs, keys, sockets) lives under the work folder; every daemon
is started as a child process and stopped by its PID. Needs root and Debian's packages
(`slurm-wlm munge openssh-server openssh-client pdsh`), which `ensure_packages` installs.
"""
