#!/usr/bin/env bash
# Run on a CPU machine with network access (this repo's dev machine): downloads the Python packages the
# GPU machine lacks, for CPython 3.12 manylinux x86_64, into bench/gpu/wheels/ (ignored by git; carried to
# the GPU machine with the working tree, 64 MiB at most in all). No torch / nvidia / triton package is
# ever downloaded: the GPU machine's own CUDA torch stays what it is.
#
#   bash bench/gpu/prepare_wheels.sh [--out DIR] [--python-version 3.12]
#
# What is carried (everything else the stack imports is already on the GPU image, see
# /work/.library/device/KINDS.md "Python packages already there", or is imported lazily only for remote
# object stores / MLflow, which the kit does not use):
#   deepspeed, megatron-core, mosaicml-streaming   pinned by requirements.txt
#   hjson, pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions   DeepSpeed's config
#   catalogue, zstd, python-snappy, cramjam, brotli   imported by `import streaming`
# Versions of the dependencies are the ones installed in this repo's .venv (the tested stack).
# deepspeed is published as an sdist only: it is downloaded and built here into a pure-Python wheel
# (DS_BUILD_OPS=0: no op is compiled; FusedAdam is JIT-built on the GPU machine at first use).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=bench/gpu/wheels
PYV=3.12
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --python-version) PYV=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "prepare_wheels.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
ABI="cp${PYV/./}"

pin_from_requirements() {  # NAME -> NAME==VERSION as requirements.txt pins it
  local line
  line=$(grep -iE "^$1==" requirements.txt || true)
  [[ -n $line ]] || { echo "requirements.txt does not pin $1" >&2; exit 1; }
  echo "${line%%[ #]*}"
}
pin_from_venv() {  # NAME -> NAME==VERSION installed in the dev venv, else NAME (latest)
  local v
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true)
  if [[ -n $v ]]; then echo "$1==$v"; else echo "$1"; fi
}

MAIN=(deepspeed megatron-core mosaicml-streaming)
DEPS=(hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
      catalogue zstd python-snappy cramjam brotli)
PINS=()
for n in "${MAIN[@]}"; do PINS+=("$(pin_from_requirements "$n")"); done
for n in "${DEPS[@]}"; do PINS+=("$(pin_from_venv "$n")"); done

rm -rf "$OUT"
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done

# the pip config of the dev machine may cap torch versions (a constraints file): irrelevant with --no-deps
export PIP_CONSTRAINT=""
pip_quiet() {  # pip, without the dev machine's notes about its local index folders
  "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  return "${PIPESTATUS[0]}"
}
binary() {
  pip_quiet download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$OUT" "$1"
}
for pin in "${PINS[@]}"; do
  name=${pin%%==*}
  if [[ $name == deepspeed ]]; then
    pip_quiet download -q --no-deps --no-binary=:all: -d "$TMP/sdist" "$pin"
    echo "building $pin from its sdist into a pure-Python wheel (DS_BUILD_OPS=0)"
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$TMP/built" "$TMP"/sdist/deepspeed-*.tar.gz \
      >"$TMP/deepspeed-build.log" 2>&1 || { cat "$TMP/deepspeed-build.log" >&2; exit 1; }
    cp "$TMP"/built/deepspeed-*-py3-none-any.whl "$OUT"/ \
      || { echo "deepspeed did not build as a py3-none-any wheel:" >&2; ls "$TMP/built" >&2; exit 1; }
  elif ! binary "$pin"; then
    # the dev venv's version has no wheel for this Python/platform (e.g. zstd): the newest one that has
    [[ $pin == "$name" ]] && exit 1
    echo "no $PYV manylinux wheel of $pin: taking the newest $name that has one"
    binary "$name"
  fi
done

# one file per package, exact pins, no torch/nvidia/triton
if ls "$OUT" | grep -iqE '^(torch|torchvision|nvidia|triton)[-_]'; then
  echo "refusing: a torch/nvidia/triton wheel landed in $OUT" >&2
  exit 1
fi
"$PY" - "$OUT" <<'EOF'
import collections, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
pins, seen = [], collections.Counter()
for f in sorted(out.glob("*.whl")):
    name, version = f.name.split("-")[:2]
    norm = re.sub(r"[-_.]+", "-", name).lower()
    seen[norm] += 1
    pins.append(f"{norm}=={version}")
dupes = [n for n, c in seen.items() if c > 1]
if dupes:
    sys.exit(f"more than one wheel of {dupes} in {out}")
(out / "requirements.txt").write_text("\n".join(pins) + "\n")
EOF

total=$(du -cb "$OUT"/* | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo
ls -l "$OUT" | awk 'NR > 1 {printf "  %9d  %s\n", $5, $9}'
awk -v w="$total" -v t="$tree" 'BEGIN {
  printf "wheels: %.1f MiB in %s; tracked tree ~%.1f MiB; together %.1f MiB of the 64 MiB a device call carries\n",
    w / 1048576, "'"$OUT"'", t / 1048576, (w + t) / 1048576 }'
if (( total + tree >= 64 * 1024 * 1024 )); then
  echo "too large for one device call (64 MiB)" >&2
  exit 1
fi
