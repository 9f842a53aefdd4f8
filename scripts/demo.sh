#!/usr/bin/env bash
# `make demo`: sample data -> tokenizer -> shards -> train the debug MetaLM with 2 processes (TP=2, ZeRO-1,
# precision auto: bf16 where this CPU runs it clearly faster, else fp32) -> checkpoint -> where the MLflow run is -> captions for held-out images -> learning check.
# Knobs (environment): DEMO_OUT (data, default demo_out), DEMO_RUN (run folder, default runs/demo),
# DEMO_STEPS (optimizer steps, default from configs/debug.yaml), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_out}
RUN=${DEMO_RUN:-runs/demo}
export OMP_NUM_THREADS=1   # 2 processes on 2 cores
start=$SECONDS

echo "== 1/4 sample data, tokenizer, shards -> $OUT"
bash scripts/demo_data.sh "$OUT"

ARGS=(--config configs/debug.yaml
      "data.tokenizer=$OUT/tokenizer"
      "data.train.0.path=$OUT/shards/pairs-train" "data.train.1.path=$OUT/shards/text-train"
      "data.val.0.path=$OUT/shards/pairs-val" "data.val.1.path=$OUT/shards/text-val"
      "train.run_dir=$RUN")
[ -n "${DEMO_STEPS:-}" ] && ARGS+=("train.steps=$DEMO_STEPS")

echo "== 2/4 train the debug MetaLM: 2 processes, TP=2 x DP=1, ZeRO-1, precision auto (run folder $RUN)"
rm -rf "$RUN"   # the demo always starts fresh (a real run resumes from RUN/checkpoints instead)
"$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m training "${ARGS[@]}"
echo "   checkpoints: $(ls "$RUN/checkpoints" | tr '\n' ' ')"

echo "== 3/4 MLflow"
"$PY" - "$RUN" <<'PYEOF'
import json, sys
info = json.load(open(f"{sys.argv[1]}/mlflow_run.json"))
print(f"   precision {info['precision']}: {info['precision_reason']}")
print(f"   run {info['run_id']} in experiment {info['experiment']!r}, store {info['tracking_uri']}")
print(f"   open the UI:  .venv/bin/mlflow ui --backend-store-uri {info['tracking_uri']} --port 5000"
      "   then http://127.0.0.1:5000")
PYEOF

echo "== 4/4 captions for held-out images and the learning check (true vs. shuffled images)"
"$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m training.learning_check \
  --config "$RUN/config.yaml" --captions 8 --min-gap 0.5
echo "demo done in $((SECONDS - start)) s; figures in $RUN/learning_check.json"
