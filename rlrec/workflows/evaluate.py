"""``rlrec evaluate``: a trained run's policy against every baseline on the same seeded users.

The run's PPO policy and the baselines of :mod:`rlrec.agents.baselines` are rolled out by
:func:`rlrec.evaluation.rollout.rollout` on the same seeded users, in one of two worlds:

* ``fitted`` (default): the run's own simulator, fitted from the log (``RUN/eval.json``);
* ``truth``: the world that produced the log (:mod:`rlrec.envs.truth`; synthetic data only),
  with every policy and baseline exactly as trained or fitted on the log
  (``RUN/eval_truth.json``). The gap between the two files is the sim-to-real gap.

Besides each policy's summary, the payload gives the agent's ratio to the best non-oracle
baseline (the highest mean return among the baselines other than ``oracle*``), with a paired
bootstrap 95% interval over users, and ``win``: the agent's interval lies above the best
baseline's. Planned agents also show their plan (``planner``) as a reference row; it is the
agent's own part, never a baseline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rlrec.errors import UserError
from rlrec.evaluation.compare import best_baseline, paired_ratio_ci95, ratio

__all__ = ["EVAL_FILE", "EVAL_TRUTH_FILE", "POLICY_ORDER", "evaluate_run", "ratio_to_best"]

EVAL_FILE = "eval.json"
EVAL_TRUTH_FILE = "eval_truth.json"
POLICY_ORDER = (
    "ppo",
    "planner",
    "greedy_supervised",
    "random",
    "popular",
    "category_markov",
    "oracle_myopic",
)
"""The order of policies in the payload: the agent first, then the baselines."""

World = Literal["fitted", "truth"]
AGENT = "ppo"


def ratio_to_best(returns: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """The agent's mean return over the best non-oracle baseline's, with a paired interval.

    Args:
        returns: Policy name -> (E,) per-user returns, users paired across policies.
        seed: Seed of the bootstrap (:func:`rlrec.evaluation.compare.paired_ratio_ci95`).
    """
    means = {name: float(np.mean(r)) for name, r in returns.items()}
    found = best_baseline(means)
    if found is None:
        raise UserError("no non-oracle baseline to compare the agent with")
    best = found[0]
    value = ratio(means[AGENT], means[best])
    return {
        "best_baseline": best,
        "ratio_to_best_baseline": value,
        "ratio_ci95": paired_ratio_ci95(returns[AGENT], returns[best], seed),
    }


def evaluate_run(
    run_dir: str | os.PathLike[str],
    episodes: int,
    seed: int,
    deterministic: bool = True,
    progress: Callable[[str], None] | None = None,
    world: World = "fitted",
) -> dict[str, Any]:
    """Evaluate a run's policy and every baseline; the ``rlrec evaluate --json`` payload.

    Args:
        run_dir: A run directory of ``rlrec train``.
        episodes: Simulated users (one episode each) per policy.
        seed: Seed of the users, shared by every policy.
        deterministic: Take the agent's mode rather than sampling.
        progress: Called with each policy's name before its rollout.
        world: ``fitted`` (the run's simulator) or ``truth`` (the log's generator).

    Returns:
        ``run_dir``, ``world``, ``episodes``, ``seed``, ``deterministic``, ``policies`` (name
        -> :func:`rlrec.evaluation.rollout.summarize` output, in :data:`POLICY_ORDER`),
        ``best_baseline``, ``ratio_to_best_baseline``, ``ratio_ci95`` and ``win``.

    Raises:
        UserError: If ``episodes`` < 1, the run cannot be loaded, or ``truth`` is asked of a
            run on a real log.
    """
    from rlrec.agents.baselines import make_baselines
    from rlrec.agents.planner import PlannerPolicy
    from rlrec.agents.train import load_run
    from rlrec.data.dataset import write_json_atomic
    from rlrec.envs.batched import BatchedInterestDrift
    from rlrec.envs.truth import load_truth_world
    from rlrec.evaluation.rollout import rollout, summarize

    if episodes < 1:
        raise UserError(f"--episodes: {episodes}, expected >= 1")
    if world not in ("fitted", "truth"):
        raise UserError(f"--world {world!r}: expected fitted or truth")
    run = load_run(run_dir)
    env_cfg = run.config.env
    n_actions = run.policy.n_actions
    # Every baseline is fitted from the log (the run's SimModel), as a practitioner would.
    policies: dict[str, Any] = {AGENT: run.acting_policy}
    if run.policy.prior is not None:
        policies["planner"] = PlannerPolicy(run.policy.prior.plan, n_actions)
    policies.update(
        make_baselines(run.sim_model, n_actions, env_cfg.reward_weights, run.encoder, seed)
    )
    model = run.sim_model
    if world == "truth":
        model = load_truth_world(run.dataset, run.sim_model)
        # The oracle reads the hidden state: it must know the world it is an oracle of.
        truth_oracle = make_baselines(model, n_actions, env_cfg.reward_weights, None, seed)
        policies["oracle_myopic"] = truth_oracle["oracle_myopic"]

    returns: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        if progress is not None:
            progress(name)
        env = BatchedInterestDrift(episodes, model, run.dataset, env_cfg)
        stats = rollout(policy, env, seed, deterministic)
        returns[name] = stats.returns
        results[name] = summarize(stats)
    ratio = ratio_to_best(returns, seed)
    best = results[ratio["best_baseline"]]
    payload = {
        "run_dir": str(run_dir),
        "world": world,
        "episodes": episodes,
        "seed": seed,
        "deterministic": deterministic,
        # The agent's row is the policy the run acts by: PPO's, or its adaptive plan.
        "agent_acts_by": "adaptive_plan" if run.adaptive is not None else "ppo",
        "policies": {name: results[name] for name in POLICY_ORDER if name in results},
        **ratio,
        "win": bool(results[AGENT]["return_ci95"][0] > best["return_ci95"][1]),
    }
    write_json_atomic(
        Path(run_dir) / (EVAL_FILE if world == "fitted" else EVAL_TRUTH_FILE), payload
    )
    return payload
