#!/usr/bin/env bash
# Reproduce the agent benchmarks of issue 13 on a quiet machine (2 CPU cores are the target):
# the default agent (agents/ppo_frozen.yaml) against every non-oracle baseline in each preset
# world (fitted simulator, and the truth world where the data is synthetic), then the
# sim-to-real benchmark over 8 truth worlds drawn from the prior. Artifacts (dataset, user
# model, encoder) are built on the first run and cached in logs/cache. Results:
# bench_agent_<preset>.json and bench_sim2real.json in OUT_DIR (default: .).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT_DIR:-.}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$PY" benchmarks/bench_agent.py --env envs/synthetic.yaml --seeds 0 1 2 \
  --out "$OUT/bench_agent_synthetic.json"
for preset in synthetic_noboredom synthetic_neutral taobao; do
  "$PY" benchmarks/bench_agent.py --env "envs/$preset.yaml" --seeds 0 1 --skip-fps \
    --out "$OUT/bench_agent_$preset.json"
done
"$PY" benchmarks/bench_sim2real.py --worlds 8 --out "$OUT/bench_sim2real.json"
