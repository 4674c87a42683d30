#!/usr/bin/env bash
# Get ready for the runs of benchmarks/gpu.sh and benchmarks/gpu_train.sh on a lent GPU machine (no network there),
# from a networked one:
#   1. download the wheels the GPU machine lacks (PyAV, diffusers and the importlib_metadata it needs) into
#      wheels/ (git-ignored), for the GPU machine's Python, not this one's,
#   2. stage the three training clips of gpu_train.sh in gpu-media/ (git-ignored), from ../shared/media,
#   3. check that the working tree plus wheels/ and gpu-media/ stays under the 64 MiB that travels with a run,
#   4. print the exact `run` calls: command, carry list and timeout, one for each script (both in one call would
#      pass the 10 minutes a call may take).
#
#   bash benchmarks/prepare_gpu_run.sh
#
# The GPU machine (KINDS.md of the device tool, 2026-11): python3 is Python 3.12.3 with torch 2.11.0+cu130;
# typer, rich, safetensors, numpy, imageio, pytest, matplotlib, huggingface-hub, filelock, regex, requests,
# Pillow and zipp are there; av and diffusers are not. Overrides: PYTHON (the pip that downloads; default
# .venv/bin/python), DEVICE_PYTHON (default 3.12), WHEELS (default wheels), MEDIA_SRC (default ../shared/media),
# GPU_MEDIA (default gpu-media).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
WHEELS=${WHEELS:-wheels}
MEDIA_SRC=${MEDIA_SRC:-../shared/media}
GPU_MEDIA=${GPU_MEDIA:-gpu-media}
CLIPS=(bigbuckbunny_1280x720_25fps_132f.mp4 carphone_176x144_30fps_120f.mp4 cockatoo_1280x720_20fps_280f.mp4)
# Pinned: av 18.1.0 and diffusers 0.42.1 are what the H200 perf note ran with; importlib_metadata 8.7.0 needs
# only zipp (10.x also needs lazy-importer, which the GPU machine lacks). abi3 / pure-Python wheels.
PACKAGES=(av==18.1.0 diffusers==0.42.1 importlib_metadata==8.7.0)
LIMIT_MIB=64

rm -rf "$WHEELS" && mkdir -p "$WHEELS"  # one version of each: two of one package stop the whole install
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHEELS" "${PACKAGES[@]}"
ls -l "$WHEELS"

rm -rf "$GPU_MEDIA" && mkdir -p "$GPU_MEDIA"  # gpu_train.sh trains on exactly these three clips
for clip in "${CLIPS[@]}"; do
  cp "$MEDIA_SRC/$clip" "$GPU_MEDIA/" && chmod 644 "$GPU_MEDIA/$clip"
done
ls -l "$GPU_MEDIA"

git check-ignore -q "$WHEELS/x.whl" || { echo "error: $WHEELS/ is not git-ignored; add /$WHEELS/ to .gitignore" >&2; exit 1; }
git check-ignore -q "$GPU_MEDIA/x" || { echo "error: $GPU_MEDIA/ is not git-ignored; add /$GPU_MEDIA/ to .gitignore" >&2; exit 1; }
tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheel_bytes=$(du -cb "$WHEELS" | tail -1 | cut -f1)
media_bytes=$(du -cb "$GPU_MEDIA" | tail -1 | cut -f1)
total_mib=$(( (tree_bytes + wheel_bytes + media_bytes) / 1048576 ))
echo "travels with the run: working tree $((tree_bytes / 1048576)) MiB + $WHEELS/ $((wheel_bytes / 1048576)) MiB" \
  "+ $GPU_MEDIA/ $((media_bytes / 1048576)) MiB = ${total_mib} MiB (limit ${LIMIT_MIB})"
if ((total_mib >= LIMIT_MIB)); then
  echo "error: over the limit; remove untracked files from the tree (git status) first" >&2
  exit 1
fi

cat <<EOF

Two run calls, one for each script (each carries wheels/ and gpu-media/; together they would pass the 10 minutes
one call may take). Device time: up to 540 s and 330 s, plus the machine's start (minutes) - more than 15
minutes together, so a session lent 15 minutes runs one of them (gpu_train.sh leaves room for a rerun).
Issues 9 and 17's decoding targets: gpu.sh's step limits add up to its 470 s deadline (PRINT_BUDGET=1 bash
benchmarks/gpu.sh - prints them), the targets take 15 s more, and it is killed at 500 s at the latest, so the
results are always packed before the 540 s limit:

  run(
    command="timeout 500 bash benchmarks/gpu.sh /tmp/gpu-run; sleep 1; tar czf \$OUT/results.tar.gz -C /tmp gpu-run; cp /tmp/gpu-run/targets.txt /tmp/gpu-run/gpu.log \$OUT/",
    carry=["$WHEELS", "$GPU_MEDIA"],
    timeout_s=540,
  )

Then issue 12's training targets: gpu_train.sh ends its last training run 45 s before its 270 s deadline,
bundles and summarizes in that margin, and is killed at 300 s at the latest; the float16 demo-xs.safetensors
comes back beside the tarball, not in it (every returned file stays under 16 MiB):

  run(
    command="timeout 300 bash benchmarks/gpu_train.sh /tmp/gpu-train; sleep 1; tar czf \$OUT/train-results.tar.gz --exclude='*.safetensors' -C /tmp gpu-train; cp /tmp/gpu-train/*.safetensors /tmp/gpu-train/train_targets.txt \$OUT/",
    carry=["$WHEELS", "$GPU_MEDIA"],
    timeout_s=330,
  )

Leave the kind out (an H100 first; an H200 if none is free): the card is named in nvidia-smi.txt. Then, here,
with the files_at folder of the reply:

  d=benchmarks/results/<h100|h200>-\$(date +%Y%m%d); mkdir -p \$d
  tar xzf FILES_AT/results.tar.gz -C \$d --strip-components=1
  git add \$d && git commit -m "GPU run: issue 9 targets on <card>" -- \$d

  t=benchmarks/results/<h100|h200>-train-\$(date +%Y%m%d); mkdir -p \$t
  tar xzf FILES_AT/train-results.tar.gz -C \$t --strip-components=1
  git add \$t && git commit -m "GPU run: issue 12 training targets on <card>" -- \$t

and quote targets.txt (card, torch, random weights) and train_targets.txt in benchmarks/README.md. The retrained
FILES_AT/demo-xs.safetensors replaces weights/demo-xs.safetensors only where train_targets.txt says it beats the
bundled one on the held-out clip.
EOF
