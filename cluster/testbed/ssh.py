"""ssh "hosts" that are all this machine: one sshd per host on a loopback port, key-only, for pdsh.

    with LocalSshHosts(workdir, aliases=("node-a", "node-b")) as hosts:
        env = hosts.env()        # PDSH_SSH_ARGS_APPEND="-F <ssh_config>" (pdsh), and the same for plain ssh
        subprocess.run(["pdsh", "-R", "ssh", "-w", "node-a,node-b", "hostname"], env=env)

The ssh_config maps each alias (the first also as localhost / 127.0.0.1) to 127.0.0.1 and its
sshd's port, with the generated key and no host-key prompts. Each sshd runs in its own mount
namespace with a private /dev/shm (see daemons.private_shm), has `UsePAM no` and `StrictModes no`
(the keys live under a temp folder).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from .daemons import Daemon, free_port, port_open, private_shm, tail, wait_until
from .packages import which

logger = logging.getLogger(__name__)


class LocalSshHosts:
    def __init__(self, workdir: str | os.PathLike, aliases: tuple[str, ...] = ("node-a", "node-b")):
        self.root = Path(workdir).resolve()
        self.aliases = aliases
        self.ssh_config = self.root / "ssh_config"
        self.daemons: list[Daemon] = []
        self.ports: dict[str, int] = {}

    def _keygen(self, path: Path) -> None:
        if not path.exists():
            subprocess.run(
                [which("ssh-keygen") or "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                check=True,
                capture_output=True,
            )

    def start(self, timeout: float = 20) -> LocalSshHosts:
        """One sshd per host alias, each in its own mount namespace (private /dev/shm, like a machine)."""
        self.root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir (no systemd)
        host_key, user_key = self.root / "host_ed25519", self.root / "id_ed25519"
        self._keygen(host_key)
        self._keygen(user_key)
        auth = self.root / "authorized_keys"
        auth.write_text((self.root / "id_ed25519.pub").read_text())
        auth.chmod(0o600)
        blocks = []
        try:
            for i, alias in enumerate(self.aliases):
                port = self.ports[alias] = free_port()
                conf = self.root / f"sshd_config.{alias}"
                conf.write_text(
                    f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                    f"PidFile {self.root / f'sshd.{alias}.pid'}\nAuthorizedKeysFile {auth}\n"
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nMaxStartups 100\nMaxSessions 100\n"
                )
                names = alias if i else " ".join(dict.fromkeys((alias, "localhost", "127.0.0.1")))
                blocks.append(
                    f"Host {names}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {user_key}\n"
                    "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                    "  LogLevel ERROR\n  BatchMode yes\n"
                )
                log = self.root / f"sshd.{alias}.log"
                sshd = which("sshd") or "/usr/sbin/sshd"
                self.daemons.append(
                    Daemon(f"sshd-{alias}", private_shm([sshd, "-D", "-e", "-f", str(conf)]), log)
                )
                wait_until(
                    lambda port=port: port_open(port),
                    timeout,
                    f"sshd for {alias} on 127.0.0.1:{port}",
                    on_timeout=lambda log=log: tail(log),
                )
            self.ssh_config.write_text("\n".join(blocks))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()
        self.daemons.clear()

    def __enter__(self) -> LocalSshHosts:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def ssh_args(self) -> list[str]:
        return ["-F", str(self.ssh_config)]

    def env(self, base: dict | None = None) -> dict:
        """pdsh reads extra ssh options from PDSH_SSH_ARGS_APPEND; DeepSpeed sets PDSH_RCMD_TYPE=ssh."""
        env = dict(os.environ if base is None else base)
        env["PDSH_SSH_ARGS_APPEND"] = " ".join(self.ssh_args())
        env["PDSH_RCMD_TYPE"] = "ssh"
        return env

    def ssh(self, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [which("ssh") or "ssh", *self.ssh_args(), host, command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
