"""An MLflow tracking server for a cluster: one process that every job's rank 0 logs to over HTTP.

    ./launch.sh mlflow-server --host 0.0.0.0 --port 5000 \
        --backend-store-uri sqlite:////shared/metalm/mlflow.db --artifacts-destination /shared/metalm/mlartifacts
    # then train with:  tracking.uri=http://<this host>:5000

The store is a SQLite file (one server process; fine for tens of jobs) or any database URI MLflow
accepts (postgresql://..., mysql://...). Artifacts are served by the server (`--serve-artifacts`),
so training nodes need no access to the artifact folder. MLflow 3 rejects HTTP requests whose Host
header is not allowed (DNS-rebinding protection; default: localhost and private IPs); this mode adds
the bind address and this machine's host names, so `http://<login-node>:5000` works from the nodes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

from .options import option


@dataclass
class MlflowServerOptions:
    """The server's settings; each field is also a `./launch.sh mlflow-server` option."""

    host: str = option("127.0.0.1", "address to bind (default %(default)s; 0.0.0.0 for the cluster)")
    port: int = option(5000, "port (default %(default)s)")  # TCP
    backend_store_uri: str = option(
        "sqlite:///runs/mlflow.db", "sqlite:///FILE or a database URI (default %(default)s)"
    )
    # served artifacts are stored here: a folder, or s3://... and the like
    artifacts_destination: str = option("runs/mlartifacts", "artifact folder or URI (default %(default)s)")
    workers: int = option(2, "server worker processes (default %(default)s)")
    # added to MLflow's defaults (localhost, private IPs) and this machine's names
    allowed_hosts: str = option("", "extra Host headers to accept, comma-separated")

    def problems(self) -> list[str]:
        p = []
        if not 0 < self.port < 65536:
            p.append(f"--port {self.port}: must be 1-65535")
        if self.workers < 1:
            p.append(f"--workers {self.workers}: must be >= 1")
        uri = self.backend_store_uri
        if "://" not in uri:
            p.append(
                f"--backend-store-uri {uri!r}: give a URI, e.g. sqlite:////abs/path/mlflow.db or postgresql://..."
            )
        elif uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :])
            if not db.parent.is_dir():
                p.append(f"--backend-store-uri {uri!r}: folder {db.parent} does not exist; create it first")
        return p


def absolute_sqlite_uri(uri: str) -> str:
    """sqlite:///relative/path -> sqlite:////abs/path (the server may run from another folder)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def allowed_host_headers(opts: MlflowServerOptions) -> list[str]:
    """MLflow's defaults plus this machine's names and the bind address (each also with any port)."""
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts

        hosts = list(get_default_allowed_hosts())
    except ImportError:  # another MLflow version: keep the essentials
        hosts = ["localhost", "127.0.0.1", "localhost:*", "127.0.0.1:*"]
    names = {socket.gethostname(), socket.getfqdn()}
    if opts.host not in ("0.0.0.0", "::", ""):
        names.add(opts.host)
    names |= {n.strip() for n in opts.allowed_hosts.split(",") if n.strip()}
    for name in sorted(names):
        for h in (name, f"{name}:*"):
            if h not in hosts:
                hosts.append(h)
    return hosts


def mlflow_server_command(opts: MlflowServerOptions, python: str) -> list[str]:
    problems = opts.problems()
    if problems:
        raise UserError(problems)
    artifacts = opts.artifacts_destination
    if "://" not in artifacts:
        artifacts = str(Path(artifacts).resolve())
    return [
        python,
        "-m",
        "mlflow",
        "server",
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--backend-store-uri",
        absolute_sqlite_uri(opts.backend_store_uri),
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--workers",
        str(opts.workers),
        "--allowed-hosts",
        ",".join(allowed_host_headers(opts)),
    ]


def tracking_uri_hint(opts: MlflowServerOptions) -> str:
    host = socket.gethostname() if opts.host in ("0.0.0.0", "::") else opts.host
    return f"http://{host}:{opts.port}"
