#!/usr/bin/env bash
# Set up (idempotent) and run every check CI runs: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check rlrec tests benchmarks scripts
.venv/bin/ruff format --check rlrec tests benchmarks scripts
.venv/bin/mypy
.venv/bin/pytest -q "$@"
