#!/usr/bin/env bash
# One-shot GPU validation of the training stack (bench/gpu/README.md).
#
#   bash bench/gpu/run.sh --out DIR                 # on a GPU machine: <= 8 minutes on one H100/H200
#   bash bench/gpu/run.sh --cpu --out DIR           # the CPU dry run (debug preset, gloo), what CI runs
#   bash bench/gpu/run.sh --list --stages env,peak  # the plan only
#
# Options (everything else goes to bench/gpu/kit.py): --stages env,peak,data,train,resume,loader,
# --steps N, --budget SECONDS, --work DIR, --keep-work, --python PATH, --no-install, and --install (install
# the carried wheels with --cpu too: a rehearsal of the GPU machine's install on a CPU machine).
# On a GPU machine without deepspeed / megatron-core / mosaicml-streaming, the wheels carried in
# bench/gpu/wheels/ (made by bench/gpu/prepare_wheels.sh) are installed with pip --no-index --no-deps
# --target into a temporary folder put on PYTHONPATH: the machine's own torch is never touched.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

CPU=0 LIST=0 INSTALL=auto PY=${PYTHON:-}
WHEELS=${KIT_WHEELS:-$HERE/wheels}
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) CPU=1; ARGS+=("$1"); shift ;;
    --list) LIST=1; ARGS+=("$1"); shift ;;
    --no-install) INSTALL=no; shift ;;
    --install) INSTALL=yes; shift ;;
    --python) PY=$2; shift 2 ;;
    --python=*) PY=${1#--python=}; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exec python3 "$HERE/kit.py" --help ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ -z $PY ]]; then
  # the dry run uses the repo's venv when there is one; a GPU machine its own python3 (its CUDA torch)
  if [[ $CPU == 1 && -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi

if [[ $LIST == 0 && ( $INSTALL == yes || ( $CPU == 0 && $INSTALL == auto ) ) ]]; then
  if [[ $INSTALL == auto ]] && "$PY" -c "import deepspeed, megatron.core" >/dev/null 2>&1 \
    && "$PY" -c "from common.streaming_compat import ensure_streaming_importable as e; e(); import streaming" >/dev/null 2>&1; then
    echo "run.sh: deepspeed, megatron-core and streaming already import with $PY"
  elif [[ -f $WHEELS/requirements.txt ]]; then
    SITE=${KIT_SITE:-$(mktemp -d /tmp/metalm-kit-site.XXXXXX)}
    export KIT_INSTALL_LOG=$SITE.install.log
    "$PY" "$HERE/install_wheels.py" --wheels "$WHEELS" --target "$SITE" --python "$PY" 2>&1 | tee "$KIT_INSTALL_LOG" \
      || echo "run.sh: installing the carried wheels failed; the stages will report what does not import" >&2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "run.sh: deepspeed/megatron-core/streaming are missing and $WHEELS/ is empty:" \
      "run bench/gpu/prepare_wheels.sh on a machine with network access and carry bench/gpu/wheels" >&2
    echo "run.sh: continuing; the stages that need them will report the import error" >&2
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$HERE/kit.py" "${ARGS[@]}"
