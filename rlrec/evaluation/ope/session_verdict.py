"""One target's session OPE as a user acts on it: intervals, a safe lower bound, a verdict.

:func:`session_estimates` runs every sequential estimator on prepared sessions and gives each
the interval its method supports: the session bootstrap for the estimators that read no
model (IS, WIS, PDIS, WPDIS), the Q-refit bootstrap for those that do (DM, DR, WDR, MAGIC,
:mod:`rlrec.evaluation.ope.refit_bootstrap`); it adds HCOPE's lower bound
(:mod:`rlrec.evaluation.ope.high_confidence`), the interval of the default estimator's
difference from the logged mean return, the divergence from the logging policy and the
plain-language line: "beats the logged one with 95% confidence", "is worse" or "cannot tell".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlrec.evaluation.ope.base import Estimate
from rlrec.evaluation.ope.fqe import FQEConfig, FQEResult
from rlrec.evaluation.ope.high_confidence import hcope_lower_bound
from rlrec.evaluation.ope.refit_bootstrap import (
    MEASURED_COVERAGE,
    RefitBootstrapConfig,
    refit_bootstrap,
)
from rlrec.evaluation.ope.sequential import (
    DEFAULT_ESTIMATOR,
    LoggedSessions,
    estimate_session_value,
)

__all__ = ["EXTRAPOLATION_NATS", "FIXED_MODEL_METHOD", "session_estimates", "verdict_line"]

FIXED_MODEL_METHOD = "percentile bootstrap of sessions"
"""The interval method of the estimators that read no model."""

EXTRAPOLATION_NATS = 1.0
"""Per-step KL (nats) above which a report says the estimate extrapolates: beyond it the
benchmark's weighted estimators lose their accuracy and MAGIC leans on the Q-model."""


def verdict_line(
    difference_ci95: tuple[float, float], estimator: str, confidence: float = 0.95
) -> str:
    """The plain-language comparison with the logging policy from a difference interval."""
    lo, hi = difference_ci95
    level = f"{100 * confidence:.0f}%"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "cannot tell: no interval (run with bootstrap resamples)"
    span = f"{estimator} difference {lo:+.3g} to {hi:+.3g}"
    if lo > 0:
        return f"the new policy beats the logged one with {level} confidence ({span})"
    if hi < 0:
        return f"the new policy is worse than the logged one with {level} confidence ({span})"
    return f"cannot tell: the {level} interval of the difference includes 0 ({span})"


def session_estimates(
    sessions: LoggedSessions,
    features: np.ndarray,
    expected_features: np.ndarray,
    fqe: FQEConfig,
    fqe_result: FQEResult,
    n_bootstrap: int,
    seed: int,
    kl_per_step: float,
    confidence: float = 0.95,
) -> tuple[dict[str, Estimate], dict[str, Any]]:
    """Every estimator with its interval, plus the entries a report shows beside them.

    Args:
        sessions: Sessions prepared with ``fqe_result``'s Q values (no horizon cut).
        features: (n_steps, d) Q features of the logged (state, action).
        expected_features: (n_steps, d) expected features under the target.
        fqe: The FQE settings of ``fqe_result``.
        fqe_result: The full data's cross-fitted FQE.
        n_bootstrap: Resamples of both bootstraps (0: point estimates only).
        seed: Seed of the resampling, the grouping and HCOPE's split.
        kl_per_step: Mean per-step KL of the target from the logging policy (nats).
        confidence: Interval level.

    Returns:
        The estimates in report order, and ``{"lower_bound", "difference_ci95", "verdict",
        "extrapolating", "bias_bound", "measured_coverage"}``: HCOPE's bound, per
        model-based estimator the interval of its estimate minus the logged mean return, the
        default estimator's plain-language line, whether the target is beyond
        :data:`EXTRAPOLATION_NATS`, the detectable Q-model bias DM's and MAGIC's intervals
        were extended by (:func:`~rlrec.evaluation.ope.refit_bootstrap.bias_bound`), and the
        coverage the benchmark measured for each interval method.
    """
    estimates = estimate_session_value(
        sessions,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        method=FIXED_MODEL_METHOD,
    )
    difference: dict[str, tuple[float, float]] = {}
    bias: dict[str, float] = {}
    if n_bootstrap > 0:
        refit = refit_bootstrap(
            sessions,
            features,
            expected_features,
            fqe,
            fqe_result,
            RefitBootstrapConfig(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed),
        )
        estimates.update(refit.estimates)  # same keys: the report order is kept
        difference = refit.difference_ci95
        bias = refit.bias_bound
    nan = (float("nan"), float("nan"))
    line = verdict_line(difference.get(DEFAULT_ESTIMATOR, nan), DEFAULT_ESTIMATOR, confidence)
    extrapolating = bool(kl_per_step > EXTRAPOLATION_NATS)
    if extrapolating:
        line += (
            f"; extrapolating: {kl_per_step:.2f} nats per step from the logging policy, so the "
            "estimate leans on the Q-model"
        )
    bound = hcope_lower_bound(sessions, confidence=confidence, seed=seed)
    return estimates, {
        "lower_bound": bound.to_dict(),
        "difference_ci95": {k: _finite_list(v) for k, v in difference.items()},
        "verdict": line,
        "extrapolating": extrapolating,
        "bias_bound": bias,
        "measured_coverage": dict(MEASURED_COVERAGE),
    }


def _finite_list(pair: tuple[float, float]) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in pair]
