# Sourced by benchmarks/gpu.sh and benchmarks/gpu_train.sh (not run on its own): the step log, the deadline,
# the machine's description and the offline install of PyAV/diffusers that both GPU runs share.
# Needs: PY, RESULTS, WORK, WHEELS, DEADLINE (seconds since the script started); LIMIT_INSTALL (default 90).

STEP_STARTED=
step() {  # the end of the previous step (how long it took, the time left before the deadline), then the next
  [ -n "$STEP_STARTED" ] && echo "-- took $((SECONDS - STEP_STARTED)) s; $((DEADLINE - SECONDS)) s left of the ${DEADLINE} s deadline"
  STEP_STARTED=$SECONDS
  echo; echo "== $* ($(date -u +%H:%M:%S), ${SECONDS}s in, $((DEADLINE - SECONDS)) s left)"
}

limited() {  # limited SECONDS CMD...: CMD under `timeout`, cut to what is left before the deadline
  local limit=$1 left=$((DEADLINE - SECONDS))
  shift
  ((left < limit)) && limit=$left
  if ((limit < 10)); then echo "skipped, the ${DEADLINE} s deadline is reached: $*"; return 124; fi
  timeout "$limit" "$@"
}

describe_machine() {  # the card (nvidia-smi.txt), the commit and the software, into the log
  step "machine"
  { nvidia-smi -L && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; } \
    > "$RESULTS/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (no NVIDIA driver here?)" >> "$RESULTS/nvidia-smi.txt"
  cat "$RESULTS/nvidia-smi.txt"
  git rev-parse HEAD 2>/dev/null || true
  git status --short -- flashdecode 2>/dev/null | head -20  # uncommitted library changes travel too: name them
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
}

install_wheels() {  # PyAV and diffusers from $WHEELS/ into $WORK/site on PYTHONPATH, unless SKIP_INSTALL is set
  [ -n "${SKIP_INSTALL:-}" ] && return 0
  step "install PyAV and diffusers (offline, from $WHEELS/)"
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    # --no-deps --target: nothing already installed (torch, numpy, ...) is touched or re-resolved
    SITE="$WORK/site"
    limited "${LIMIT_INSTALL:-90}" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
      && export PYTHONPATH="$PYTHONPATH:$SITE" \
      || echo "pip install from $WHEELS/ failed: what follows still runs where av (and diffusers) import"
  else
    echo "no wheels in $WHEELS/: run benchmarks/prepare_gpu_run.sh first (see benchmarks/README.md)"
  fi
}
