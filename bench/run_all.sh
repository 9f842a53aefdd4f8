#!/usr/bin/env bash
# `make bench`: every bench/bench_*.py in turn; each prints its ratios (measured in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for b in bench/bench_*.py; do
  echo "=== $b"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PY" "$b"
done
