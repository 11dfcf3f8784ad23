"""``rlrec sensitivity``: a run's policy against the baselines across the response prior.

Organic logs cannot identify how users respond to recommendations (the parameters of
:mod:`rlrec.models.prior` with provenance ``default``); a policy trained in one value of them
may lose to a simple baseline in another. This sweep puts a number on that. The worlds are the
run's fitted SimModel with its unidentified response parameters set to

* the one-at-a-time design of :func:`rlrec.agents.robust.validation_worlds`: the centre (the
  model's own values) and each parameter at its prior's low and high end, the others at the
  centre, so the extremes (no boredom at all, say) are always in the sweep;
* ``points`` Latin-hypercube points over the prior's box (:class:`scipy.stats.qmc.LatinHypercube`,
  seeded): each parameter's range is cut into ``points`` strata and each stratum is used
  once, which covers every range evenly with few worlds. Integer parameters take the integer
  whose share of the range the point falls in (uniform over the integers, as in
  :func:`rlrec.models.prior.prior_draws`).

In each world the run's policy and every non-oracle baseline are rolled out on the same seeded
users; the payload (also ``RUN/sensitivity.json``) gives per world the parameters, each
policy's mean return, the best baseline and the policy's ratio to it, and a summary
(:func:`rlrec.evaluation.compare.sensitivity_summary`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.errors import UserError

__all__ = [
    "DEFAULT_EPISODES",
    "DEFAULT_POINTS",
    "SENSITIVITY_FILE",
    "format_sensitivity",
    "latin_hypercube",
    "sensitivity_design",
    "sensitivity_run",
    "sweep",
]

SENSITIVITY_FILE = "sensitivity.json"
DEFAULT_POINTS = 16
DEFAULT_EPISODES = 300
AGENT = "ppo"


def latin_hypercube(model: Any, names: tuple[str, ...], points: int, seed: int) -> np.ndarray:
    """(points, P) response parameters: ``names`` on a Latin hypercube, the rest the model's.

    Columns follow :data:`rlrec.models.prior.RESPONSE_PARAMETERS`.
    """
    from scipy.stats import qmc

    from rlrec.models.prior import RESPONSE_PARAMETERS, RESPONSE_PRIOR

    centre = [float(getattr(model, p)) for p in RESPONSE_PARAMETERS]
    out = np.tile(centre, (points, 1))
    if points == 0 or not names:
        return out
    unit = qmc.LatinHypercube(d=len(names), seed=np.random.default_rng(seed)).random(points)
    for i, name in enumerate(names):
        r = RESPONSE_PRIOR[name]
        j = RESPONSE_PARAMETERS.index(name)
        if r.integer:
            n_values = int(r.high) - int(r.low) + 1
            out[:, j] = int(r.low) + np.minimum(np.floor(unit[:, i] * n_values), n_values - 1)
        else:
            out[:, j] = r.low + (r.high - r.low) * unit[:, i]
    return out


def sensitivity_design(
    model: Any, points: int, seed: int
) -> tuple[np.ndarray, list[str], list[str], tuple[str, ...]]:
    """The sweep's worlds for ``model``.

    Args:
        model: The fitted SimModel.
        points: Latin-hypercube points after the one-at-a-time design.
        seed: Seed of the Latin hypercube.

    Returns:
        (W, P) response parameters (columns :data:`~rlrec.models.prior.RESPONSE_PARAMETERS`),
        each world's label, each world's design (``centre``, ``one-at-a-time`` or
        ``latin-hypercube``) and the swept (unidentified) parameters. With nothing
        unidentified there is one world, the model itself.
    """
    from rlrec.agents.robust import validation_worlds
    from rlrec.models.prior import unidentified

    names = unidentified(model)
    oat, labels = validation_worlds(model, 0, seed)
    designs = ["centre"] + ["one-at-a-time"] * (len(labels) - 1)
    if not names:
        return oat, labels, designs, names
    lhs = latin_hypercube(model, names, points, seed)
    thetas = np.vstack([oat, lhs])
    labels = labels + [f"lhs{i}" for i in range(points)]
    designs = designs + ["latin-hypercube"] * points
    return thetas, labels, designs, names


def sweep(
    model: Any,
    dataset: Any,
    env: Any,
    policy: Any,
    baselines: Mapping[str, Any],
    points: int,
    episodes: int,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Roll ``policy`` and ``baselines`` out in every world of the sweep.

    Args:
        model: The fitted SimModel.
        dataset: Its PreparedDataset (warm starts), or None.
        env: The env settings (:class:`rlrec.envs.config.EnvConfig`).
        policy: The policy under test (reported as ``ppo``).
        baselines: Name -> non-oracle baseline.
        points: Latin-hypercube points.
        episodes: Seeded users per policy and world (the same users for every policy).
        seed: Seed of the users and of the Latin hypercube.
        progress: Called with each world's label before its rollouts.

    Returns:
        ``message`` (non-empty when there is nothing to sweep), ``swept``, ``prior`` (the
        swept parameters' ranges), ``policy``, ``baselines``, ``worlds`` (label, design,
        parameters, returns, best_baseline, ratio and ratio_ci95, a paired bootstrap over the
        users) and ``summary``.
    """
    from rlrec.agents.robust import world_model
    from rlrec.envs.batched import BatchedInterestDrift
    from rlrec.evaluation.compare import paired_ratio_ci95, sensitivity_summary
    from rlrec.evaluation.rollout import rollout
    from rlrec.models.prior import RESPONSE_PARAMETERS, RESPONSE_PRIOR

    thetas, labels, designs, names = sensitivity_design(model, points, seed)
    worlds: list[dict[str, Any]] = []
    for theta, label, design in zip(thetas, labels, designs, strict=True):
        if progress is not None:
            progress(label)
        venv = BatchedInterestDrift(episodes, world_model(model, theta), dataset, env)
        per_user = {AGENT: rollout(policy, venv, seed).returns}
        for name, baseline in baselines.items():
            per_user[name] = rollout(baseline, venv, seed).returns
        returns = {name: float(r.mean()) for name, r in per_user.items()}
        best = max(baselines, key=lambda b: returns[b])
        worlds.append(
            {
                "label": label,
                "design": design,
                "parameters": dict(zip(RESPONSE_PARAMETERS, map(float, theta), strict=True)),
                "returns": returns,
                "best_baseline": best,
                # Returns are non-negative; the floor only keeps a degenerate world finite.
                "ratio": returns[AGENT] / max(returns[best], 1e-12),
                "ratio_ci95": paired_ratio_ci95(per_user[AGENT], per_user[best], seed),
            }
        )
    summary = sensitivity_summary(
        [w["ratio"] for w in worlds],
        labels,
        {name: [w["parameters"][name] for w in worlds] for name in names},
        [w["ratio_ci95"] for w in worlds],
    )
    message = ""
    if not names:
        message = (
            "nothing to sweep: every response parameter of the model is set or fitted (none "
            "has provenance 'default'); one world, the model itself"
        )
    return {
        "message": message,
        "swept": list(names),
        "prior": {
            name: {
                "low": RESPONSE_PRIOR[name].low,
                "high": RESPONSE_PRIOR[name].high,
                "integer": RESPONSE_PRIOR[name].integer,
                "why": RESPONSE_PRIOR[name].why,
            }
            for name in names
        },
        "policy": AGENT,
        "baselines": list(baselines),
        "worlds": worlds,
        "summary": summary,
    }


def sensitivity_run(
    run_dir: str | os.PathLike[str],
    points: int = DEFAULT_POINTS,
    episodes: int = DEFAULT_EPISODES,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sweep a run's unidentified response parameters; the ``rlrec sensitivity --json`` payload.

    The run's policy is evaluated greedily (its mode), as ``rlrec evaluate`` does; the
    baselines are those of :func:`rlrec.agents.baselines.make_baselines` without the oracle.
    The payload is also written to ``RUN/sensitivity.json`` (atomically).

    Args:
        run_dir: A run directory of ``rlrec train``.
        points: Latin-hypercube points (>= 0) after the one-at-a-time design.
        episodes: Seeded users per policy and world (>= 1).
        seed: Seed of the users and of the design.
        progress: Called with each world's label.

    Returns:
        ``run_dir``, ``points``, ``episodes``, ``seed`` and the fields of :func:`sweep`.

    Raises:
        UserError: If ``points`` < 0, ``episodes`` < 1 or the run cannot be loaded.
    """
    from rlrec.agents.baselines import make_baselines
    from rlrec.agents.train import load_run
    from rlrec.data.dataset import write_json_atomic
    from rlrec.evaluation.compare import is_baseline

    if points < 0:
        raise UserError(f"--points: {points}, expected >= 0")
    if episodes < 1:
        raise UserError(f"--episodes: {episodes}, expected >= 1")
    run = load_run(run_dir)
    env_cfg = run.config.env
    every = make_baselines(
        run.sim_model, run.policy.n_actions, env_cfg.reward_weights, run.encoder, seed
    )
    baselines = {name: p for name, p in every.items() if is_baseline(name)}
    result = sweep(
        run.sim_model,
        run.dataset,
        env_cfg,
        run.acting_policy,
        baselines,
        points,
        episodes,
        seed,
        progress,
    )
    payload = {
        "run_dir": str(run_dir),
        "points": points,
        "episodes": episodes,
        "seed": seed,
        **result,
    }
    write_json_atomic(Path(run_dir) / SENSITIVITY_FILE, payload)
    return payload


def format_sensitivity(payload: Mapping[str, Any]) -> str:
    """A short plain-text table of a sensitivity payload: one line per world, then the summary."""
    swept = list(payload["swept"])
    lines = []
    if payload.get("message"):
        lines.append(str(payload["message"]))
    lines.append(
        f"{payload['episodes']} users per policy and world, seed {payload['seed']}; "
        f"ratio = {payload['policy']} / best non-oracle baseline"
    )
    lines.append(
        f"{'world':<32} {'ratio':>6} {'95% interval':>14} {payload['policy']:>7} "
        f"{'best baseline':>25}"
    )
    for w in payload["worlds"]:
        label = str(w["label"])[:32]
        best = w["best_baseline"]
        ci = w.get("ratio_ci95")
        interval = "–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        agent = w["returns"][payload["policy"]]
        lines.append(
            f"{label:<32} {w['ratio']:>6.3f} {interval:>14} {agent:>7.3f} "
            f"{best:>17} {w['returns'][best]:>7.3f}"
        )
    s = payload["summary"]
    lines.append(
        f"mean ratio {s['mean_ratio']:.3f}; worst {s['worst_ratio']:.3f} ({s['worst_world']}); "
        f"ratio >= 1 in {100 * s['share_ratio_ge_1']:.0f}% of {s['n_worlds']} worlds"
    )
    if s.get("share_ci_below_1") is not None:
        lines.append(
            f"a baseline wins beyond the users' noise (95% interval of the ratio below 1) in "
            f"{100 * s['share_ci_below_1']:.0f}% of the worlds"
        )
    if swept:
        corr = ", ".join(
            f"{name} {'–' if rho is None else f'{rho:+.2f}'}" for name, rho in s["spearman"].items()
        )
        lines.append(f"Spearman correlation of the ratio with: {corr}")
    return "\n".join(lines)
