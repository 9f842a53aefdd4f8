#!/usr/bin/env bash
# MetaLM launcher: ./launch.sh local|deepspeed|slurm|mlflow-server|hostfile [--help] ...
# A thin shell: the logic is in cluster/ (python -m cluster). Uses $METALM_PYTHON, else the
# project's .venv, else python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${METALM_PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then METALM_PYTHON="$ROOT/.venv/bin/python"; else METALM_PYTHON="$(command -v python3)"; fi
fi
export METALM_PYTHON
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$METALM_PYTHON" -m cluster "$@"
