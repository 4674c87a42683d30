#!/usr/bin/env bash
# One prepared run on a lent H100/H200 with no network that measures every target of issue 9, in under 8
# minutes, every step under `timeout` (a step cut short keeps what it finished: each JSON is rewritten after
# every case). The targets come first; what does not fit (B/L, 480p, 1080p) is left out.
#   1. the card and the software (nvidia-smi.txt, gpu.log),
#   2. PyAV and diffusers from the wheels in wheels/ (benchmarks/prepare_gpu_run.sh fetches them), installed
#      into a folder on PYTHONPATH; flashdecode runs from this source tree,
#   3. bench_bf16.json: XL and S at 720p, 25-frame clips, bf16 eager and compiled, beside the Wan2.2 conv
#      decoder, each FlashDecoder row also end to end into an MP4 file (e2e_fps),
#   4. bench_fp8.json: the same for fp8, eager and compiled,
#   5. decode_mp4.json / decode_raw.json: the user's commands end to end on a 720p file of 60 latent frames:
#      `decode -o out.mp4 --model xl` (default settings, random weights) and `decode -o - --format raw >/dev/null`,
#   6. bench_lengths.json: XL at 720p for 10/60/500 latent frames (peak memory against length; the 60-frame
#      row is the decode-only FPS beside step 5),
#   7. the CUDA tests (pytest -m cuda), with what time is left,
#   8. targets.txt / targets.json: benchmarks/targets.py reads the JSON and prints each target met / not met.
#
#   bash benchmarks/gpu.sh benchmarks/results/h100-$(date +%Y%m%d)
#
# Overrides (tests/test_bench.py runs this same script on the CPU at tiny sizes): PYTHON, DEVICE, RES, MODELS,
# FRAMES, DTYPE, COMPILES, FP8, FP8_COMPILE, OUTPUT, BASELINE, E2E_MODEL, E2E_RES, E2E_LATENT_FRAMES, LENGTHS,
# LENGTH_MODELS, LENGTH_RES, BENCH_ARGS (extra bench arguments), DECODE_ARGS (extra decode arguments), WHEELS,
# SKIP_INSTALL=1, SKIP_TESTS=1, NO_PLOT=1, DEADLINE_S (default 470: no step runs past it).
set -uo pipefail  # no -e: a failed or timed-out step is logged and the next one still runs

RESULTS=${1:?usage: bash benchmarks/gpu.sh RESULTS_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
RES=${RES:-720p}
MODELS=${MODELS:-xl,s}             # XL first: most targets are XL's, and a step cut short keeps the first
FRAMES=${FRAMES:-25}
DTYPE=${DTYPE:-bf16}                # the main and the lengths steps
COMPILES=${COMPILES:-off,on}
FP8=${FP8:-fp8}                   # the fp8 step's --dtype
FP8_COMPILE=${FP8_COMPILE:-off,on}
OUTPUT=${OUTPUT:-mp4}
BASELINE=${BASELINE:-wan2.2}
E2E_MODEL=${E2E_MODEL:-xl}
E2E_RES=${E2E_RES:-720p}
E2E_LATENT_FRAMES=${E2E_LATENT_FRAMES:-60}
LENGTHS=${LENGTHS:-10,60,500}
LENGTH_MODELS=${LENGTH_MODELS:-xl}
LENGTH_RES=${LENGTH_RES:-720p}
WHEELS=${WHEELS:-wheels}
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
read -r -a DECODE_EXTRA <<< "${DECODE_ARGS:-}"  # none on the GPU: the decode rows use the default settings
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flashdecode-gpu-run.XXXXXX")  # the latent file and the decoded videos
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # flashdecode from this tree, no install needed

exec > >(tee -a "$RESULTS/gpu.log") 2>&1
DEADLINE=${DEADLINE_S:-470}
source benchmarks/gpu_common.sh  # step, limited, describe_machine, install_wheels
optional_plot() { [ -z "${NO_PLOT:-}" ] && "$PY" -c "import matplotlib" 2>/dev/null && echo --plot "$RESULTS/$1.png"; }

describe_machine

install_wheels
"$PY" -c "import av, diffusers; print('av', av.__version__, 'diffusers', diffusers.__version__)" \
  || echo "av or diffusers does not import: the end-to-end or baseline rows will fail"

step "input for decode: random $E2E_RES latents, $E2E_LATENT_FRAMES latent frames"
LATENTS="$WORK/latents_${E2E_RES}_${E2E_LATENT_FRAMES}.safetensors"
limited 60 "$PY" -c "import sys; from flashdecode.bench import parse_resolution, write_random_latents; \
_, h, w = parse_resolution(sys.argv[2]); write_random_latents(sys.argv[1], 'wan2.2', h, w, int(sys.argv[3]))" \
  "$LATENTS" "$E2E_RES" "$E2E_LATENT_FRAMES" && ls -l "$LATENTS"

bench() {  # bench NAME TIMEOUT_S ARGS...: one `flashdecode bench` invocation, JSON into RESULTS
  local name=$1 limit=$2
  shift 2
  step "bench $name"
  # shellcheck disable=SC2046
  limited "$limit" "$PY" -m flashdecode bench --device "$DEVICE" "$@" "${EXTRA[@]}" \
    --json "$RESULTS/bench_$name.json" $(optional_plot "bench_$name") \
    || echo "bench $name failed or timed out (exit $?); $RESULTS/bench_$name.json holds the cases that finished"
}

bench bf16 200 --res "$RES" --model "$MODELS" --baseline "$BASELINE" --frames "$FRAMES" --dtype "$DTYPE" \
  --compile "$COMPILES" --output "$OUTPUT" --warmup 1 --repeat 3 --budget-s 10 --timeout 120
bench fp8 150 --res "$RES" --model "$MODELS" --frames "$FRAMES" --dtype "$FP8" --compile "$FP8_COMPILE" \
  --output "$OUTPUT" --warmup 1 --repeat 3 --budget-s 10 --timeout 100

decode() {  # decode NAME ARGS...: the CLI end to end on the latent file, its --json summary into RESULTS
  local name=$1
  shift
  step "decode $name: flashdecode decode LATENTS --model $E2E_MODEL --weights random $* > /dev/null"
  # stdout to /dev/null: the raw video there; the CLI prints its text on stderr (into gpu.log)
  limited 90 "$PY" -m flashdecode decode "$LATENTS" --model "$E2E_MODEL" --weights random --device "$DEVICE" \
    --json "$RESULTS/decode_$name.json" "$@" "${DECODE_EXTRA[@]}" > /dev/null \
    || echo "decode $name failed or timed out (exit $?)"
}
decode mp4 -o "$WORK/out.mp4" && ls -l "$WORK/out.mp4"
decode raw -o - --format raw

bench lengths 120 --res "$LENGTH_RES" --model "$LENGTH_MODELS" --lengths "$LENGTHS" --dtype "$DTYPE" --compile auto \
  --warmup 1 --repeat 1 --budget-s 40 --timeout 100

if [ -z "${SKIP_TESTS:-}" ]; then
  step "CUDA tests"
  if "$PY" -c "import pytest" 2>/dev/null; then
    limited 90 "$PY" -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors tests || echo "CUDA tests failed or timed out (exit $?)"
  else
    echo "pytest is not installed: CUDA tests skipped"
  fi
fi

step "targets (issue 9)"
timeout 60 "$PY" benchmarks/targets.py "$RESULTS" --res "$RES" --frames "$FRAMES" --big "$E2E_MODEL" \
  --small "${MODELS##*,}" --json "$RESULTS/targets.json" \
  | tee "$RESULTS/targets.txt"

step "done"
ls -l "$RESULTS"
