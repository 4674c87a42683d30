#!/usr/bin/env bash
# Get ready for ONE run of benchmarks/gpu.sh on a lent GPU machine (no network there), from a networked one:
#   1. download the wheels the GPU machine lacks (PyAV, diffusers and the importlib_metadata it needs) into
#      wheels/ (git-ignored), for the GPU machine's Python, not this one's,
#   2. check that the working tree plus wheels/ stays under the 64 MiB that travels with a run,
#   3. print the exact `run` call: command, carry list and timeout.
#
#   bash benchmarks/prepare_gpu_run.sh
#
# The GPU machine (KINDS.md of the device tool, 2026-11): python3 is Python 3.12.3 with torch 2.11.0+cu130;
# typer, rich, safetensors, numpy, imageio, pytest, matplotlib, huggingface-hub, filelock, regex, requests,
# Pillow and zipp are there; av and diffusers are not. Overrides: PYTHON (the pip that downloads; default
# .venv/bin/python), DEVICE_PYTHON (default 3.12), WHEELS (default wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
WHEELS=${WHEELS:-wheels}
# Pinned: av 18.1.0 and diffusers 0.42.1 are what the H200 perf note ran with; importlib_metadata 8.7.0 needs
# only zipp (10.x also needs lazy-importer, which the GPU machine lacks). abi3 / pure-Python wheels.
PACKAGES=(av==18.1.0 diffusers==0.42.1 importlib_metadata==8.7.0)
LIMIT_MIB=64

rm -rf "$WHEELS" && mkdir -p "$WHEELS"  # one version of each: two of one package stop the whole install
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHEELS" "${PACKAGES[@]}"
ls -l "$WHEELS"

git check-ignore -q "$WHEELS/x.whl" || { echo "error: $WHEELS/ is not git-ignored; add /$WHEELS/ to .gitignore" >&2; exit 1; }
tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheel_bytes=$(du -cb "$WHEELS" | tail -1 | cut -f1)
total_mib=$(( (tree_bytes + wheel_bytes) / 1048576 ))
echo "travels with the run: working tree $((tree_bytes / 1048576)) MiB + $WHEELS/ $((wheel_bytes / 1048576)) MiB = ${total_mib} MiB (limit ${LIMIT_MIB})"
if ((total_mib >= LIMIT_MIB)); then
  echo "error: over the limit; remove untracked files from the tree (git status) first" >&2
  exit 1
fi

cat <<EOF

The run call (one call; gpu.sh stops its last step by 470 s and is killed at 530 s at the latest, so the
results are always packed before the 560 s limit):

  run(
    command="timeout 530 bash benchmarks/gpu.sh /tmp/gpu-run; sleep 1; tar czf \$OUT/results.tar.gz -C /tmp gpu-run; cp /tmp/gpu-run/targets.txt /tmp/gpu-run/gpu.log \$OUT/",
    carry=["$WHEELS"],
    timeout_s=560,
  )

Leave the kind out (an H100 first; an H200 if none is free): the card is named in nvidia-smi.txt and in every
row. Then, here, with the files_at folder of the reply:

  d=benchmarks/results/<h100|h200>-\$(date +%Y%m%d); mkdir -p \$d
  tar xzf FILES_AT/results.tar.gz -C \$d --strip-components=1
  git add \$d && git commit -m "GPU run: issue 9 targets on <card>" -- \$d

and quote targets.txt (card, torch, random weights) in benchmarks/README.md.
EOF
