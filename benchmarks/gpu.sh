#!/usr/bin/env bash
# One prepared run on a lent H100/H200 with no network that measures every target of issues 9 and 17 in one
# device call: every step runs under `timeout` with the limit of the BUDGET table below, whose sum (plus
# UNLIMITED_S for the machine's description) fits the deadline, so no step is ever skipped for time; the
# targets are written after the deadline, in TARGETS_S. A step cut short keeps what it finished (each bench JSON
# is rewritten after every case); the log says after each step how long it took and how much time is left.
# The steps, most important first:
#   1. the card and the software (nvidia-smi.txt, gpu.log),
#   2. install: PyAV and diffusers from the wheels in wheels/ (benchmarks/prepare_gpu_run.sh fetches them),
#      into a folder on PYTHONPATH; flashdecode runs from this source tree,
#   3. latents: the input of step 7, random 720p latents of 60 latent frames,
#   4. steady: steady_state.json, benchmarks/steady_state.py: XL at 720p, 30 latent frames, warm: the steady
#      state (frames 3-30) under torch.cuda.set_sync_debug_mode("error") (pass/fail), the first-frame latency,
#      the peak allocated during the first two frames against the steady state,
#   5. bf16: bench_bf16.json: XL and S at 720p, 25-frame clips, bf16 eager and compiled, beside the Wan2.2 conv
#      decoder (diffusers' vae.decode and the same decoder streamed), each FlashDecoder row also end to end into
#      an MP4 file (e2e_fps),
#   6. fp8: bench_fp8.json: XL in fp8, eager and compiled, end to end too (S fp8 has no target),
#   7. decode_mp4 / decode_raw: the user's commands end to end on the 720p file of step 3:
#      `decode -o out.mp4 --model xl` (default settings, random weights) and `decode -o - --format raw >/dev/null`,
#   8. lengths: bench_lengths.json: XL at 720p for 10/60/500 latent frames (peak memory against length; the
#      60-frame row is the decode-only FPS beside step 7),
#   9. tests: the CUDA tests (pytest -m cuda),
#  10. targets.txt / targets.json: benchmarks/targets.py reads the JSON and prints each target met / not met.
# Left out to fit: B/L, 480p, 1080p, S in fp8, the tiny decoder (`bench --baseline taehv`).
#
#   bash benchmarks/gpu.sh benchmarks/results/h100-$(date +%Y%m%d)
#   PRINT_BUDGET=1 bash benchmarks/gpu.sh -    # the budget table and its sum against the deadline, nothing run
#
# Overrides (tests/test_bench.py runs this same script on the CPU at tiny sizes): PYTHON, DEVICE, RES, MODELS,
# FRAMES, DTYPE, COMPILES, FP8, FP8_MODELS, FP8_COMPILE, OUTPUT, BASELINE, E2E_MODEL, E2E_RES, E2E_LATENT_FRAMES,
# LENGTHS, LENGTH_MODELS, LENGTH_RES, STEADY_MODEL, STEADY_RES, STEADY_FRAMES, BENCH_ARGS (extra bench
# arguments), DECODE_ARGS (extra decode arguments), STEADY_ARGS (extra steady_state.py arguments), WHEELS,
# SKIP_INSTALL=1, SKIP_TESTS=1, NO_PLOT=1, DEADLINE_S (default 470).
set -uo pipefail  # no -e: a failed or timed-out step is logged and the next one still runs

# Seconds each step may take on an H100 (measured parts: H200 perf note, XL 720p eager ~33 ms per latent frame,
# compiling ~19 s; each bench case is a fresh process: ~10 s to start, load and warm up).
declare -A BUDGET=(
  [install]=25   # pip install of three local wheels
  [latents]=15   # 60 x 48 x 45 x 80 random numbers into a .safetensors file
  [steady]=40    # load XL, warm up, 5 first frames, 2 x 30 latent frames
  [bf16]=150     # 6 cases: Wan2.2 vae.decode ~15 s, Wan2.2 streamed ~15 s, XL/S eager ~10 s, XL/S compiled ~30 s (+ e2e)
  [fp8]=60       # 2 cases: XL eager, XL compiled
  [decode_mp4]=30  # a fresh CLI process: load XL, decode 60 latent frames, encode 237 frames of noise
  [decode_raw]=30
  [lengths]=60   # 3 cases of XL: 10, 60, 500 latent frames (500 x 33 ms = 17 s)
  [tests]=45     # pytest -m cuda: collection plus a few short GPU tests
)
ORDER=(install latents steady bf16 fp8 decode_mp4 decode_raw lengths tests)
UNLIMITED_S=15   # describe_machine (nvidia-smi, one python -c) runs without a limit
TARGETS_S=15     # benchmarks/targets.py, after the deadline
DEADLINE=${DEADLINE_S:-470}
if [ -n "${PRINT_BUDGET:-}" ]; then
  total=$UNLIMITED_S
  for s in "${ORDER[@]}"; do printf '%-11s %4d s\n' "$s" "${BUDGET[$s]}"; total=$((total + BUDGET[$s])); done
  printf '%-11s %4d s\nsum         %4d s of the %d s deadline; targets %d s after it\n' unlimited "$UNLIMITED_S" \
    "$total" "$DEADLINE" "$TARGETS_S"
  ((total <= DEADLINE)) && exit 0 || { echo "error: the budget passes the deadline"; exit 1; }
fi

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
FP8_MODELS=${FP8_MODELS:-xl}
FP8_COMPILE=${FP8_COMPILE:-off,on}
OUTPUT=${OUTPUT:-mp4}
BASELINE=${BASELINE:-wan2.2}
E2E_MODEL=${E2E_MODEL:-xl}
E2E_RES=${E2E_RES:-720p}
E2E_LATENT_FRAMES=${E2E_LATENT_FRAMES:-60}
LENGTHS=${LENGTHS:-10,60,500}
LENGTH_MODELS=${LENGTH_MODELS:-xl}
LENGTH_RES=${LENGTH_RES:-720p}
STEADY_MODEL=${STEADY_MODEL:-xl}
STEADY_RES=${STEADY_RES:-720p}
STEADY_FRAMES=${STEADY_FRAMES:-30}
WHEELS=${WHEELS:-wheels}
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
read -r -a DECODE_EXTRA <<< "${DECODE_ARGS:-}"  # none on the GPU: the decode rows use the default settings
read -r -a STEADY_EXTRA <<< "${STEADY_ARGS:-}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flashdecode-gpu-run.XXXXXX")  # the latent file and the decoded videos
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # flashdecode from this tree, no install needed

exec > >(tee -a "$RESULTS/gpu.log") 2>&1
LIMIT_INSTALL=${BUDGET[install]}
source benchmarks/gpu_common.sh  # step, limited, describe_machine, install_wheels
optional_plot() { [ -z "${NO_PLOT:-}" ] && "$PY" -c "import matplotlib" 2>/dev/null && echo --plot "$RESULTS/$1.png"; }

describe_machine

install_wheels
"$PY" -c "import av, diffusers; print('av', av.__version__, 'diffusers', diffusers.__version__)" \
  || echo "av or diffusers does not import: the end-to-end or baseline rows will fail"

step "latents: input for decode, random $E2E_RES latents, $E2E_LATENT_FRAMES latent frames"
LATENTS="$WORK/latents_${E2E_RES}_${E2E_LATENT_FRAMES}.safetensors"
limited "${BUDGET[latents]}" "$PY" -c "import sys; from flashdecode.bench import parse_resolution, write_random_latents; \
_, h, w = parse_resolution(sys.argv[2]); write_random_latents(sys.argv[1], 'wan2.2', h, w, int(sys.argv[3]))" \
  "$LATENTS" "$E2E_RES" "$E2E_LATENT_FRAMES" && ls -l "$LATENTS"

step "steady: $STEADY_MODEL $STEADY_RES, $STEADY_FRAMES latent frames: first frame, peak, sync-free steady state"
limited "${BUDGET[steady]}" "$PY" benchmarks/steady_state.py --model "$STEADY_MODEL" --res "$STEADY_RES" \
  --frames "$STEADY_FRAMES" --device "$DEVICE" --json "$RESULTS/steady_state.json" "${STEADY_EXTRA[@]}" \
  || echo "steady failed or timed out (exit $?)"

bench() {  # bench NAME ARGS...: one `flashdecode bench` invocation within BUDGET[NAME], JSON into RESULTS
  local name=$1
  shift
  step "$name: flashdecode bench $*"
  # shellcheck disable=SC2046
  limited "${BUDGET[$name]}" "$PY" -m flashdecode bench --device "$DEVICE" "$@" "${EXTRA[@]}" \
    --json "$RESULTS/bench_$name.json" $(optional_plot "bench_$name") \
    || echo "bench $name failed or timed out (exit $?); $RESULTS/bench_$name.json holds the cases that finished"
}

bench bf16 --res "$RES" --model "$MODELS" --baseline "$BASELINE" --frames "$FRAMES" --dtype "$DTYPE" \
  --compile "$COMPILES" --output "$OUTPUT" --warmup 1 --repeat 3 --budget-s 10 --timeout 60
bench fp8 --res "$RES" --model "$FP8_MODELS" --frames "$FRAMES" --dtype "$FP8" --compile "$FP8_COMPILE" \
  --output "$OUTPUT" --warmup 1 --repeat 3 --budget-s 10 --timeout 45

decode() {  # decode NAME ARGS...: the CLI end to end on the latent file, its --json summary into RESULTS
  local name=$1
  shift
  step "decode_$name: flashdecode decode LATENTS --model $E2E_MODEL --weights random $* > /dev/null"
  # stdout to /dev/null: the raw video there; the CLI prints its text on stderr (into gpu.log)
  limited "${BUDGET[decode_$name]}" "$PY" -m flashdecode decode "$LATENTS" --model "$E2E_MODEL" --weights random \
    --device "$DEVICE" --json "$RESULTS/decode_$name.json" "$@" "${DECODE_EXTRA[@]}" > /dev/null \
    || echo "decode $name failed or timed out (exit $?)"
}
decode mp4 -o "$WORK/out.mp4" && ls -l "$WORK/out.mp4"
decode raw -o - --format raw

bench lengths --res "$LENGTH_RES" --model "$LENGTH_MODELS" --lengths "$LENGTHS" --dtype "$DTYPE" --compile auto \
  --warmup 1 --repeat 1 --budget-s 30 --timeout 40

if [ -z "${SKIP_TESTS:-}" ]; then
  step "tests: CUDA tests (pytest -m cuda)"
  if "$PY" -c "import pytest" 2>/dev/null; then
    limited "${BUDGET[tests]}" "$PY" -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors tests \
      || echo "CUDA tests failed or timed out (exit $?)"
  else
    echo "pytest is not installed: CUDA tests skipped"
  fi
fi

step "targets (issues 9 and 17)"
DEADLINE=$((DEADLINE + TARGETS_S))  # the targets run after the measuring deadline, in their own TARGETS_S
limited "$TARGETS_S" "$PY" benchmarks/targets.py "$RESULTS" --res "$RES" --frames "$FRAMES" --big "$E2E_MODEL" \
  --small "${MODELS##*,}" --json "$RESULTS/targets.json" \
  | tee "$RESULTS/targets.txt"

step "done"
ls -l "$RESULTS"
