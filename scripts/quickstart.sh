#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded synthetic default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/rlrec quickstart "$@"
