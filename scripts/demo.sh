#!/usr/bin/env bash
# `make demo`: sample data -> tokenizer -> shards -> verify/inspect (-> training, added by the training issue).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_out}
echo "demo: not yet wired (data_prep/training land in later commits)"
