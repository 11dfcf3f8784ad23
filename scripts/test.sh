#!/usr/bin/env bash
# Set up (idempotent) and run every check CI runs: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# Extras whose tests run here (comma list of pyproject extras).
TEST_EXTRAS="serve,ray"
bash scripts/bootstrap.sh "$TEST_EXTRAS"
.venv/bin/ruff check rlrec tests benchmarks scripts
.venv/bin/ruff format --check rlrec tests benchmarks scripts
.venv/bin/mypy
.venv/bin/pytest -q "$@"
