"""The process-wide settings every entry point applies once, explicitly, at start (nothing in the
library changes process state when it is imported).

    from common.process_setup import setup_process
    setup_process()          # first thing in main()
"""

from __future__ import annotations

import os
import warnings

from common.streaming_compat import ensure_streaming_importable

# Defaults a launcher or the user may override by setting them first.
_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # a tracking outage warns at once instead of retrying minutes
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",  # metrics land before a preemption exit
}

_done = False


def setup_process() -> None:
    """Idempotent: the streaming-on-CPU-torch shim, MLflow client defaults, known harmless warnings."""
    global _done
    if _done:
        return
    _done = True
    ensure_streaming_importable()
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # megatron-core says this at import on every machine without apex/TE (CPU, or GPU without the
    # extras); it falls back to torch ops, which is what the README documents.
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    warnings.filterwarnings("ignore", message="When using async grad allreduce")  # a CUDA-stream hint
