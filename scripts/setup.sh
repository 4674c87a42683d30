#!/usr/bin/env bash
# Create .venv and install flashdecode with the CPU build of torch (pinned by constraints-cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[dev]"
