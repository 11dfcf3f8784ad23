#!/usr/bin/env bash
# Idempotent set-up: a project-local virtual environment in .venv with rlrec installed.
# Usage: bootstrap.sh [EXTRAS]   EXTRAS is a comma list of pyproject extras beyond "dev"
# (scripts/test.sh passes every extra its tests need; scripts/quickstart.sh passes none).
# torch is pinned and installed first: on these machines pip takes a local CPU wheel for
# torch==2.13.0, while an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
extras="dev${1:+,$1}"
stamp=.venv/.rlrec-installed
want="$( (cat pyproject.toml scripts/bootstrap.sh; echo "$extras") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VPY" -m pip install -q --upgrade pip >/dev/null
"$VPY" -m pip install -q "torch==2.13.0"
# The dev extra is small (test and lint tools) and always installed, so the main job and the
# tests share one environment and neither reinstalls for the other.
"$VPY" -m pip install -q -e ".[$extras]"
echo "$want" > "$stamp"
