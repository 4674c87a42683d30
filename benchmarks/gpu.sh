#!/usr/bin/env bash
# One prepared run for an H100 machine with no network (under 8 minutes, every step under `timeout`):
#   1. record the GPU (nvidia-smi -L) and the software,
#   2. install the wheels brought along in wheels/ (PyAV, diffusers, pytest; torch, typer, rich,
#      safetensors, numpy and imageio are already there) and flashdecode itself (--no-deps -e .),
#   3. the CUDA tests (pytest -m cuda),
#   4. `flashdecode bench`: S/B/L/XL at 480p and 720p beside the Wan2.2 conv baseline, S/B/L/XL at 1080p,
#      then XL's peak memory against length (10/100/1000 latent frames, 720p); 25-frame clips, bf16,
#      random weights.
# Everything goes to RESULTS_DIR: bench_*.json, gpu.log, nvidia-smi.txt (and bench_*.png with matplotlib).
#
#   bash benchmarks/gpu.sh benchmarks/results/h100-$(date +%Y%m%d)
#
# Overrides (tests/test_bench.py runs this same script on the CPU at tiny sizes): PYTHON, DEVICE, DTYPE,
# MODELS, RES, HIGH_RES, FRAMES, LENGTHS, LENGTH_MODELS, LENGTH_RES, BENCH_ARGS (extra bench arguments),
# SKIP_INSTALL=1, SKIP_TESTS=1, NO_PLOT=1, DEADLINE_S (default 470: no step runs past it).
set -uo pipefail  # no -e: a failed or timed-out step is logged and the next one still runs

RESULTS=${1:?usage: bash benchmarks/gpu.sh RESULTS_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
MODELS=${MODELS:-s,b,l,xl}
RES=${RES:-480p,720p}          # with the Wan2.2 baseline
HIGH_RES=${HIGH_RES:-1080p}    # FlashDecoder only (the conv decoder needs tens of GB there)
FRAMES=${FRAMES:-25}
LENGTHS=${LENGTHS:-10,100,1000}
LENGTH_MODELS=${LENGTH_MODELS:-xl}
LENGTH_RES=${LENGTH_RES:-720p}
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # works even where the editable install fails

exec > >(tee -a "$RESULTS/gpu.log") 2>&1
step() { echo; echo "== $* ($(date -u +%H:%M:%S), ${SECONDS}s in)"; }
DEADLINE=${DEADLINE_S:-470}
limited() {  # limited SECONDS CMD...: CMD under `timeout`, cut to what is left before the deadline
  local limit=$1 left=$((DEADLINE - SECONDS))
  shift
  ((left < limit)) && limit=$left
  if ((limit < 10)); then echo "skipped, the ${DEADLINE} s deadline is reached: $*"; return 124; fi
  timeout "$limit" "$@"
}
optional_plot() { [ -z "${NO_PLOT:-}" ] && "$PY" -c "import matplotlib" 2>/dev/null && echo --plot "$RESULTS/$1.png"; }

step "machine"
{ nvidia-smi -L && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } \
  > "$RESULTS/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (no NVIDIA driver here?)" >> "$RESULTS/nvidia-smi.txt"
cat "$RESULTS/nvidia-smi.txt"
git rev-parse HEAD 2>/dev/null || true
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

if [ -z "${SKIP_INSTALL:-}" ]; then
  step "install (offline, from wheels/)"
  if [ -d wheels ]; then
    limited 90 "$PY" -m pip install --no-index --find-links wheels av diffusers pytest matplotlib \
      || limited 60 "$PY" -m pip install --no-index --find-links wheels av diffusers pytest \
      || echo "pip install from wheels/ failed: bench still runs from the source tree if av and diffusers import"
  else
    echo "no wheels/ folder: see benchmarks/README.md (pip download ... -d wheels on a networked machine)"
  fi
  limited 60 "$PY" -m pip install --no-deps --no-build-isolation -e . \
    || echo "editable install failed; using PYTHONPATH=$PWD"
fi

if [ -z "${SKIP_TESTS:-}" ]; then
  step "CUDA tests"
  if "$PY" -c "import pytest" 2>/dev/null; then
    limited 60 "$PY" -m pytest -q -m cuda tests || echo "CUDA tests failed or timed out (exit $?)"
  else
    echo "pytest is not installed: CUDA tests skipped"
  fi
fi

bench() {  # bench NAME TIMEOUT_S ARGS...: one `flashdecode bench` invocation, JSON into RESULTS
  local name=$1 limit=$2
  shift 2
  step "bench $name"
  # shellcheck disable=SC2046
  limited "$limit" "$PY" -m flashdecode bench --device "$DEVICE" --dtype "$DTYPE" "$@" "${EXTRA[@]}" \
    --json "$RESULTS/bench_$name.json" $(optional_plot "bench_$name") \
    || echo "bench $name failed or timed out (exit $?); $RESULTS/bench_$name.json holds the cases that finished"
}

bench vs_wan22 180 --res "$RES" --model "$MODELS" --baseline wan2.2 --frames "$FRAMES" \
  --warmup 1 --repeat 3 --budget-s 15 --timeout 100
bench high_res 75 --res "$HIGH_RES" --model "$MODELS" --baseline none --frames "$FRAMES" \
  --warmup 1 --repeat 3 --budget-s 10 --timeout 60
bench lengths 100 --res "$LENGTH_RES" --model "$LENGTH_MODELS" --baseline none --lengths "$LENGTHS" \
  --warmup 1 --repeat 1 --budget-s 40 --timeout 80

step "done"
ls -l "$RESULTS"
