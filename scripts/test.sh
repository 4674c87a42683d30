#!/usr/bin/env bash
# The test command: set up .venv (idempotent) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
