#!/usr/bin/env bash
# `make demo`: sample data -> tokenizer -> shards -> pretrain the debug MetaLM with 2 processes (TP=2, ZeRO-1,
# precision auto: bf16 where this CPU runs it clearly faster, else fp32) -> checkpoint -> MLflow -> benchmarks
# of the untrained and the pretrained model -> a finetuning stage through the encoders (shapes VQA + a text
# task) -> its benchmarks -> the learning check.
# Knobs (environment): DEMO_OUT (data, default demo_out), DEMO_RUN (run folder, default runs/demo),
# DEMO_STEPS (pretraining steps, default from configs/debug.yaml), DEMO_FT_STEPS (finetuning steps, default
# from configs/finetune/debug-shapes.yaml), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_out}
RUN=${DEMO_RUN:-runs/demo}
FT=${RUN}-finetune
export OMP_NUM_THREADS=1   # 2 processes on 2 cores
start=$SECONDS
run2() { "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 "$@"; }
EVAL=("eval.harness=configs/eval/shapes.yaml" "eval.harness_overrides=['root=$OUT']")  # benchmarks at the end

echo "== 1/6 sample data, tokenizer, shards (pretraining, finetuning tasks, held-out benchmarks) -> $OUT"
bash scripts/demo_data.sh "$OUT"

ARGS=(--config configs/debug.yaml
      "data.tokenizer=$OUT/tokenizer"
      "data.train.0.path=$OUT/shards/pairs-train" "data.train.1.path=$OUT/shards/text-train"
      "data.val.0.path=$OUT/shards/pairs-val" "data.val.1.path=$OUT/shards/text-val"
      "train.run_dir=$RUN" "${EVAL[@]}")
[ -n "${DEMO_STEPS:-}" ] && ARGS+=("train.steps=$DEMO_STEPS")

echo "== 2/6 pretrain the debug MetaLM: 2 processes, TP=2 x DP=1, ZeRO-1, precision auto (run folder $RUN)"
rm -rf "$RUN" "$FT"   # the demo always starts fresh (a real run resumes from RUN/checkpoints instead)
run2 -m training "${ARGS[@]}"
echo "   checkpoints: $(ls "$RUN/checkpoints" | tr '\n' ' ')"

echo "== 3/6 MLflow"
"$PY" - "$RUN" <<'PYEOF'
import json, sys
info = json.load(open(f"{sys.argv[1]}/mlflow_run.json"))
print(f"   precision {info['precision']}: {info['precision_reason']}")
print(f"   run {info['run_id']} in experiment {info['experiment']!r}, store {info['tracking_uri']}")
print(f"   open the UI:  .venv/bin/mlflow ui --backend-store-uri {info['tracking_uri']} --port 5000"
      "   then http://127.0.0.1:5000")
PYEOF

echo "== 4/6 the untrained model on the same benchmarks (the baseline; logged in the run at step 0)"
RUN_ID=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["run_id"])' "$RUN/mlflow_run.json")
"$PY" -m evaluation run --config configs/eval/shapes.yaml --model init --train-config "$RUN/config.yaml" \
  --mlflow-run-id "$RUN_ID" "root=$OUT" > /dev/null 2> "$RUN/logs/eval_init.log" \
  || { tail -20 "$RUN/logs/eval_init.log"; exit 1; }

echo "== 5/6 finetune through the encoders from the pretrained weights (configs/finetune/debug-shapes.yaml -> $FT)"
FT_ARGS=(--config configs/finetune/debug-shapes.yaml
         "data.tokenizer=$OUT/tokenizer"
         "data.train.0.path=$OUT/shards/tasks-train" "data.train.1.path=$OUT/shards/pairs-train"
         "data.val.0.path=$OUT/shards/tasks-val"
         "checkpoint.load_weights_from=$RUN" "train.run_dir=$FT" "${EVAL[@]}")
[ -n "${DEMO_FT_STEPS:-}" ] && FT_ARGS+=("train.steps=$DEMO_FT_STEPS")
run2 -m training "${FT_ARGS[@]}"

echo "== 6/6 benchmarks (held-out: captions, VQA, 2-shot VQA, text entailment, text perplexity) and the learning check"
"$PY" - "$RUN" "$FT" <<'PYEOF'
import json, pathlib, sys
run, ft = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
init = json.loads((run / "eval" / "init.json").read_text())
pre = json.loads(max((run / "eval").glob("step_*.json")).read_text())
fin = json.loads(max((ft / "eval").glob("step_*.json")).read_text())
rows = [("shapes_caption", "CIDEr-D", "caption CIDEr-D"), ("shapes_caption", "BLEU-4", "caption BLEU-4"),
        ("shapes_vqa", "accuracy", "VQA accuracy %"), ("shapes_vqa_2shot", "accuracy", "VQA 2-shot accuracy %"),
        ("shapes_text", "accuracy", "text entailment accuracy"), ("text_val", "perplexity", "held-out text perplexity")]
print(f"   {'':26s} {'untrained':>10s} {'pretrained':>11s} {'finetuned':>10s}")
for task, metric, label in rows:
    vals = [r["tasks"][task]["metrics"][metric] for r in (init, pre, fin)]
    print(f"   {label:26s} " + " ".join(f"{v:>10.3f}" for v in vals))
print(f"   MLflow: eval/<task>/<metric> in the pretraining run (step 0 = untrained, step {pre['step']}) and in the"
      f" finetuning run (step {fin['step']}); files in {run}/eval/ and {ft}/eval/")
PYEOF
run2 -m training.learning_check --config "$RUN/config.yaml" --captions 8 --min-gap 0.5
echo "demo done in $((SECONDS - start)) s; figures in $RUN/learning_check.json, $RUN/eval/, $FT/eval/"
