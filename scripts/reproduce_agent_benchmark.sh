#!/usr/bin/env bash
# Reproduce the agent benchmark of issue 5 on a quiet machine (2 CPU cores are the target):
# PPO with the frozen encoder vs the greedy supervised recommender, 3 training seeds, on the
# synthetic default world and on the Taobao-fitted simulator, plus the throughput comparison
# with SB3 PPO on CartPole-v1. Artifacts (dataset, user model, encoder) are built on the first
# run and cached in logs/cache. Results: bench_agent_synthetic.json, bench_agent_taobao.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT_DIR:-.}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$PY" benchmarks/bench_agent.py --env envs/synthetic.yaml --seeds 0 1 2 --all-baselines \
  --out "$OUT/bench_agent_synthetic.json"
# The Taobao sample is small (114 users): 300k steps per seed.
"$PY" benchmarks/bench_agent.py --env envs/taobao.yaml --seeds 0 1 2 --all-baselines \
  --skip-fps --timesteps 300000 --out "$OUT/bench_agent_taobao.json"
