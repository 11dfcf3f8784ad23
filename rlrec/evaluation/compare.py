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
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "AGENT_NAMES",
    "best_baseline",
    "fitted_vs_truth",
    "is_baseline",
    "paired_ratio_ci95",
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


def paired_ratio_ci95(
    values: np.ndarray, reference: np.ndarray, seed: int, n_resamples: int = 1000
) -> list[float] | None:
    """95% percentile-bootstrap interval of ``mean(values) / mean(reference)``.

    The two arrays are per-user returns of two policies on the same seeded users, so users are
    resampled in pairs (:func:`scipy.stats.bootstrap` with ``paired=True``): the interval
    reflects how the ratio would move with other users, not the two policies' separate noise.

    Returns:
        ``[lo, hi]``, or None with fewer than two users or where a resample's reference mean
        is not positive.
    """
    x = np.asarray(values, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    if len(x) < 2:
        return None
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # no spread: every resample gives the same ratio
        r = ratio(float(x.mean()), float(y.mean()))
        return None if r is None else [r, r]

    def statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(a.mean(axis=axis) / b.mean(axis=axis))

    # A resample whose reference mean is 0 (a few users, all lost at once) gives inf or nan;
    # scipy then warns about its degenerate distribution: the interval is reported as None.
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (x, y),
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    lo, hi = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [lo, hi]


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
    ratios: Sequence[float],
    labels: Sequence[str],
    parameters: Mapping[str, Sequence[float]],
    intervals: Sequence[Sequence[float] | None] | None = None,
) -> dict[str, Any]:
    """Summary of a policy's ratio to the best baseline across worlds.

    Args:
        ratios: (W,) the ratio in each world.
        labels: (W,) the worlds' labels.
        parameters: Swept parameter -> (W,) its value in each world.
        intervals: (W,) each ratio's 95% interval (or None), if known.

    Returns:
        ``n_worlds``, ``mean_ratio``, ``worst_ratio``, ``worst_world``, ``share_ratio_ge_1``
        (share of worlds where the policy is at least as good as the best baseline),
        ``share_ci_below_1`` (share of worlds whose whole interval is below 1: a baseline
        wins beyond the users' noise; None without intervals) and ``spearman``: parameter ->
        Spearman rank correlation of the ratio with it (None where either is constant, e.g.
        a single world or a policy equal to the best baseline).
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
        "share_ci_below_1": None
        if intervals is None
        else float(np.mean([ci is not None and ci[1] < 1.0 for ci in intervals])),
        "spearman": spearman,
    }
