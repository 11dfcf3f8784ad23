"""Speed of bandit OPE: all seven estimators with 200-resample bootstrap intervals.

Target (issue 6): 1,000,000 logged rounds, 80 actions, 3 positions, in under 30 seconds and
under 4 GB peak RSS on 2 cores. The timed part is what ``rlrec ope bandit`` runs after the
reward model: validation and per-round quantities (:func:`prepare_rounds`) and the seven
estimates with their bootstrap intervals (:func:`estimate_policy_value`). The inputs are a
contextual evaluation policy and reward-model predictions, both dense (n, 80, 3) float32
arrays (float64 would need 3.8 GB for the two alone), generated beforehand in chunks.

Usage::

    python benchmarks/bench_ope.py --out bench_ope.json          # 1,000,000 rounds
    python benchmarks/bench_ope.py --quick --out bench_ope.json  # 100,000 rounds
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import psutil

from rlrec.data.dataset import write_json_atomic
from rlrec.evaluation.ope.bandit import (
    default_estimators,
    estimate_policy_value,
    prepare_rounds,
)


def synthetic_logs(
    n_rounds: int,
    n_actions: int,
    len_list: int,
    seed: int,
    dim_context: int = 5,
    chunk: int = 10_000,
) -> dict[str, np.ndarray]:
    """A contextual logged-bandit problem with dense policies and reward model.

    Rewards are Bernoulli with a logistic click model in context x item embeddings plus a
    position bias; the behaviour policy is a softmax of a noisy score, the evaluation policy
    a sharper, position-dependent softmax of the true score; the reward model is the click
    model with one context dimension dropped (misspecified, as a fitted model would be).

    Returns:
        ``reward, action, position, pscore`` (n_rounds,), ``action_dist`` and
        ``estimated_rewards`` (n_rounds, n_actions, len_list) float32.
    """
    rng = np.random.default_rng(seed)
    item = rng.normal(size=(n_actions, dim_context)) / np.sqrt(dim_context)  # (A, d)
    item_bias = rng.normal(scale=0.5, size=n_actions)  # (A,)
    position_bias = -0.3 * np.arange(len_list)  # (L,)
    temperature = 1.0 + 0.5 * np.arange(len_list)  # (L,) evaluation sharper further down
    out = {
        "reward": np.empty(n_rounds),
        "action": np.empty(n_rounds, dtype=np.int64),
        "position": rng.integers(0, len_list, size=n_rounds),
        "pscore": np.empty(n_rounds),
        "action_dist": np.empty((n_rounds, n_actions, len_list), dtype=np.float32),
        "estimated_rewards": np.empty((n_rounds, n_actions, len_list), dtype=np.float32),
    }
    for start in range(0, n_rounds, chunk):
        stop = min(n_rounds, start + chunk)
        m = stop - start
        x = rng.normal(size=(m, dim_context))  # (m, d)
        score = x @ item.T + item_bias  # (m, A)
        behaviour = _softmax(0.5 * (score + rng.normal(scale=0.5, size=score.shape)))  # (m, A)
        cum = np.cumsum(behaviour, axis=1)
        action = np.minimum((cum < rng.random(m)[:, None]).sum(axis=1), n_actions - 1)
        pos = out["position"][start:stop]
        logit = score[:, :, None] + position_bias[None, None, :] - 3.0  # (m, A, L)
        click_prob = 1.0 / (1.0 + np.exp(-logit[np.arange(m), action, pos]))
        out["reward"][start:stop] = rng.random(m) < click_prob
        out["action"][start:stop] = action
        out["pscore"][start:stop] = behaviour[np.arange(m), action]
        out["action_dist"][start:stop] = _softmax(
            score[:, :, None] * temperature[None, None, :], axis=1
        )
        partial = (x[:, 1:] @ item[:, 1:].T + item_bias)[:, :, None]  # drops context dim 0
        out["estimated_rewards"][start:stop] = 1.0 / (
            1.0 + np.exp(-(partial + position_bias[None, None, :] - 3.0))
        )
    return out


def _softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def run(n_rounds: int, n_actions: int, len_list: int, n_bootstrap: int, seed: int) -> dict:
    process = psutil.Process(os.getpid())
    t0 = time.perf_counter()
    logs = synthetic_logs(n_rounds, n_actions, len_list, seed)
    generate_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    c1 = time.process_time()
    rounds = prepare_rounds(
        reward=logs["reward"],
        action=logs["action"],
        position=logs["position"],
        pscore=logs["pscore"],
        action_dist=logs["action_dist"],
        estimated_rewards_by_reg_model=logs["estimated_rewards"],
    )
    t2 = time.perf_counter()
    estimates = estimate_policy_value(
        rounds, default_estimators(), n_bootstrap=n_bootstrap, seed=seed
    )
    t3 = time.perf_counter()
    c3 = time.process_time()

    # Per-estimator cost, each with its own bootstrap (the joint run shares one).
    per_estimator = {}
    for est in default_estimators():
        s = time.perf_counter()
        estimate_policy_value(rounds, [est], n_bootstrap=n_bootstrap, seed=seed)
        per_estimator[f"{est.name}_seconds"] = time.perf_counter() - s

    peak = _peak_rss_mb(process)
    result = {
        "rounds": n_rounds,
        "n_actions": n_actions,
        "len_list": len_list,
        "n_bootstrap": n_bootstrap,
        "seconds": t3 - t1,
        # CPU time of the same section (all threads): wall time on a shared machine is
        # inflated by other processes, CPU time is not.
        "cpu_seconds": c3 - c1,
        "load_average_1min": os.getloadavg()[0],
        "prepare_seconds": t2 - t1,
        "estimate_seconds": t3 - t2,
        "generate_seconds": generate_seconds,
        "peak_rss_mb": peak,
        "cpu_count": os.cpu_count(),
        **per_estimator,
    }
    for name, est in estimates.items():
        result[f"{name}_value"] = est.value
    return result


def _peak_rss_mb(process: psutil.Process) -> float:
    try:
        import resource

        # ru_maxrss is in kilobytes on Linux.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:  # pragma: no cover - non-POSIX
        return process.memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rounds instead of 1M")
    parser.add_argument("--rounds", type=int, default=None, help="override the round count")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    n_rounds = args.rounds or (100_000 if args.quick else 1_000_000)
    result = run(n_rounds, 80, 3, args.n_bootstrap, args.seed)
    write_json_atomic(args.out, result)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
