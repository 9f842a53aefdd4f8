#!/usr/bin/env bash
# Data part of the demo: synth -> tokenizer -> pairs + text shards (train, val) -> finetuning task shards
# (shapes VQA + a text task through the language encoder) -> verify -> inspect.
# Usage: scripts/demo_data.sh OUT_DIR      (re-running replaces the outputs; takes about a minute)
# Layout: OUT/raw/ (incl. raw/eval/{caption,vqa} held-out sets) OUT/tokenizer/
#         OUT/shards/{pairs-train,pairs-val,text-train,text-val,tasks-train,tasks-val} OUT/inspect/
set -euo pipefail
OUT=${1:?usage: scripts/demo_data.sh OUT_DIR}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
IMAGE_SIZE=${DEMO_IMAGE_SIZE:-32}
SEQ_LEN=${DEMO_SEQ_LEN:-128}
WORKERS=${DEMO_WORKERS:-2}
dp() { "$PY" -m data_prep "$@"; }

echo "== data: synthetic images + text -> $OUT/raw"
dp synth --output "$OUT/raw"
echo "== data: tokenizer (BPE, 512) from the text corpus and the captions -> $OUT/tokenizer"
# --force: the synthetic data is deterministic, so this only matters if someone changed it.
# the rendered task templates join the corpus so their words and punctuation have pieces
dp tokenizer --input "$OUT/raw/text/train.jsonl" "$OUT/raw/pairs" "$OUT/raw/tasks/tokenizer_text.txt" \
  --model-type bpe --vocab-size 512 \
  --output "$OUT/tokenizer" --force
echo "== data: image-text shards at ${IMAGE_SIZE}px"
dp pairs --input "$OUT"/raw/pairs/train-*.tar --tokenizer "$OUT/tokenizer" --image-size "$IMAGE_SIZE" \
  --output "$OUT/shards/pairs-train" --workers "$WORKERS" --force
dp pairs --input "$OUT"/raw/pairs/val-*.tar --tokenizer "$OUT/tokenizer" --image-size "$IMAGE_SIZE" \
  --output "$OUT/shards/pairs-val" --workers "$WORKERS" --force
echo "== data: text shards, seq-len $SEQ_LEN"
dp text --input "$OUT/raw/text/train.jsonl" --tokenizer "$OUT/tokenizer" --seq-len "$SEQ_LEN" \
  --output "$OUT/shards/text-train" --workers "$WORKERS" --force
dp text --input "$OUT/raw/text/val.jsonl" --tokenizer "$OUT/tokenizer" --seq-len "$SEQ_LEN" \
  --output "$OUT/shards/text-val" --force
echo "== data: finetuning task shards (templates: data_prep/templates/default.yaml)"
dp tasks --input shapes_vqa="$OUT/raw/tasks/shapes_vqa_train.jsonl" "$OUT/raw/tasks/shapes_text_train.jsonl" \
  --tokenizer "$OUT/tokenizer" --image-size "$IMAGE_SIZE" --output "$OUT/shards/tasks-train" --workers "$WORKERS" --force
dp tasks --input "$OUT/raw/tasks/shapes_text_val.jsonl" \
  --tokenizer "$OUT/tokenizer" --image-size "$IMAGE_SIZE" --output "$OUT/shards/tasks-val" --force
echo "== data: verify every shard set"
dp verify "$OUT/shards/pairs-train" "$OUT/shards/pairs-val" "$OUT/shards/text-train" "$OUT/shards/text-val" \
  "$OUT/shards/tasks-train" "$OUT/shards/tasks-val"
echo "== data: inspect (sample images in $OUT/inspect/)"
dp inspect "$OUT/shards/pairs-val" --images-out "$OUT/inspect" --samples 8
