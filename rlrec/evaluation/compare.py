"""Comparing policies' returns: ratio to the best baseline, fitted-vs-truth gap, sensitivity.

The numbers the report shows and ``rlrec sensitivity`` writes are computed here, below the
report (which only renders) and the workflows (which only orchestrate), so that both use one
definition of "the best non-oracle baseline":

* a *baseline* is every policy except the agent (``ppo``), the planner (``planner``) and the
  oracles (names starting with ``oracle``, which see the hidden interest);
* a policy's *ratio* is its mean return over the best baseline's mean return on the same users.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "AGENT_NAMES",
    "best_baseline",
    "fitted_vs_truth",
    "is_baseline",
    "ratio",
    "sensitivity_summary",
]

AGENT_NAMES = ("ppo", "planner")
"""Policies that are the product, never a baseline."""


def is_baseline(name: str) -> bool:
    """Whether ``name`` is a non-oracle baseline (not the agent, the planner or an oracle)."""
    return name not in AGENT_NAMES and not name.startswith("oracle")


def best_baseline(returns: Mapping[str, float]) -> tuple[str, float] | None:
    """The non-oracle baseline with the highest return, and that return (None if none).

    Ties go to the first in ``returns``' order, so the choice is reproducible.
    """
    best: tuple[str, float] | None = None
    for name, value in returns.items():
        if is_baseline(name) and (best is None or float(value) > best[1]):
            best = (name, float(value))
    return best


def ratio(value: float, reference: float) -> float | None:
    """``value / reference``; None where the reference is not a positive finite number."""
    if not math.isfinite(reference) or reference <= 0 or not math.isfinite(value):
        return None
    return float(value) / float(reference)


def fitted_vs_truth(
    fitted: Mapping[str, Mapping[str, Any]], truth: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Each policy's return in the fitted simulator and in the truth world, and the gap.

    Args:
        fitted: ``policies`` of an ``rlrec evaluate --json`` payload in the fitted simulator.
        truth: The same in the truth world (``rlrec evaluate --world truth``).

    Returns:
        ``policies``: name -> ``fitted``, ``fitted_ci95``, ``truth``, ``truth_ci95`` and
        ``gap`` (truth / fitted - 1; None where fitted is not positive), for the policies
        in both, in ``truth``'s order; ``best_baseline`` and ``best_baseline_return`` in the
        truth world; ``agent`` (``ppo`` if present, else ``planner``, else None) and
        ``agent_ratio`` (its truth return over the best baseline's).
    """
    rows: dict[str, dict[str, Any]] = {}
    for name, t in truth.items():
        if name not in fitted:
            continue
        f = fitted[name]
        fv, tv = float(f["return_mean"]), float(t["return_mean"])
        gap = ratio(tv, fv)
        rows[name] = {
            "fitted": fv,
            "fitted_ci95": f.get("return_ci95"),
            "truth": tv,
            "truth_ci95": t.get("return_ci95"),
            "gap": None if gap is None else gap - 1.0,
        }
    truth_returns = {name: float(t["return_mean"]) for name, t in truth.items()}
    best = best_baseline(truth_returns)
    agent = next((a for a in AGENT_NAMES if a in truth_returns), None)
    agent_ratio = None if agent is None or best is None else ratio(truth_returns[agent], best[1])
    return {
        "policies": rows,
        "best_baseline": None if best is None else best[0],
        "best_baseline_return": None if best is None else best[1],
        "agent": agent,
        "agent_ratio": agent_ratio,
    }


def sensitivity_summary(
    ratios: Sequence[float], labels: Sequence[str], parameters: Mapping[str, Sequence[float]]
) -> dict[str, Any]:
    """Summary of a policy's ratio to the best baseline across worlds.

    Args:
        ratios: (W,) the ratio in each world.
        labels: (W,) the worlds' labels.
        parameters: Swept parameter -> (W,) its value in each world.

    Returns:
        ``n_worlds``, ``mean_ratio``, ``worst_ratio``, ``worst_world``, ``share_ratio_ge_1``
        (share of worlds where the policy is at least as good as the best baseline) and
        ``spearman``: parameter -> Spearman rank correlation of the ratio with it (None where
        either is constant, e.g. a single world or a policy equal to the best baseline).
    """
    r = np.asarray(ratios, dtype=np.float64)
    worst = int(np.argmin(r))
    spearman: dict[str, float | None] = {}
    for name, values in parameters.items():
        v = np.asarray(values, dtype=np.float64)
        rho = None
        if len(r) > 1 and np.ptp(r) > 0 and np.ptp(v) > 0:
            rho = float(stats.spearmanr(v, r).statistic)
        spearman[name] = rho if rho is not None and math.isfinite(rho) else None
    return {
        "n_worlds": len(r),
        "mean_ratio": float(r.mean()),
        "worst_ratio": float(r[worst]),
        "worst_world": labels[worst],
        "share_ratio_ge_1": float(np.mean(r >= 1.0)),
        "spearman": spearman,
    }
