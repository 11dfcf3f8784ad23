"""``rlrec evaluate``: a trained run's policy against every baseline on the same seeded users.

The run's PPO policy and the baselines of :mod:`rlrec.agents.baselines` are rolled out by
:func:`rlrec.evaluation.rollout.evaluate_policies` in the run's own simulator; the payload is
the ``rlrec evaluate --json`` contract and is also written to ``RUN_DIR/eval.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlrec.errors import UserError

EVAL_FILE = "eval.json"
POLICY_ORDER = (
    "ppo",
    "greedy_supervised",
    "random",
    "popular",
    "category_markov",
    "oracle_myopic",
)
"""The order of policies in the payload: the agent first, then the baselines."""


def evaluate_run(
    run_dir: str | os.PathLike[str],
    episodes: int,
    seed: int,
    deterministic: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's policy and every baseline; the ``rlrec evaluate --json`` payload.

    Args:
        run_dir: A run directory of ``rlrec train``.
        episodes: Simulated users (one episode each) per policy.
        seed: Seed of the users, shared by every policy.
        deterministic: Take the agent's mode rather than sampling.
        progress: Called with each policy's name before its rollout.

    Returns:
        ``run_dir``, ``episodes``, ``seed``, ``deterministic`` and ``policies`` (name ->
        :func:`rlrec.evaluation.rollout.summarize` output, in :data:`POLICY_ORDER`).

    Raises:
        UserError: If ``episodes`` < 1 or the run cannot be loaded.
    """
    from rlrec.agents.baselines import make_baselines
    from rlrec.agents.train import load_run
    from rlrec.data.dataset import write_json_atomic
    from rlrec.envs.batched import BatchedInterestDrift
    from rlrec.evaluation.rollout import evaluate_policies

    if episodes < 1:
        raise UserError(f"--episodes: {episodes}, expected >= 1")
    run = load_run(run_dir)
    env_cfg = run.config.env
    n_actions = run.policy.n_actions
    policies: dict[str, Any] = {"ppo": run.policy}
    policies.update(
        make_baselines(run.sim_model, n_actions, env_cfg.reward_weights, run.encoder, seed)
    )

    def make_env(n: int) -> BatchedInterestDrift:
        return BatchedInterestDrift(n, run.sim_model, run.dataset, env_cfg)

    results = evaluate_policies(policies, make_env, episodes, seed, deterministic, progress)
    payload = {
        "run_dir": str(run_dir),
        "episodes": episodes,
        "seed": seed,
        "deterministic": deterministic,
        "policies": {name: results[name] for name in POLICY_ORDER if name in results},
    }
    write_json_atomic(Path(run_dir) / EVAL_FILE, payload)
    return payload
