r"""High-confidence lower bounds for "ship only if" decisions (HCOPE, Thomas et al. 2015).

A bootstrap interval is approximate: it covers at its nominal rate only when the resampled
estimates behave like the estimator's sampling distribution, which heavy-tailed importance
weights break. A **concentration-inequality** bound holds with the stated probability for
any distribution of bounded non-negative terms, at the price of being looser.

Thomas, Theocharous & Ghavamzadeh, "High Confidence Off-Policy Evaluation" (AAAI 2015):
the per-session importance-weighted returns :math:`X_i \ge 0` (rewards >= 0) are unbiased
for the target's value but unbounded; clipping them at a threshold :math:`c`,
:math:`Y_i = \min(X_i, c) \in [0, c]`, can only lower their mean, so a lower bound on
:math:`E[Y]` is one on the value. The empirical Bernstein bound (Maurer & Pontil 2009,
Theorem 4) gives, with probability at least :math:`1 - \delta`,

.. math:: E[Y] \ge \bar Y - \frac{7 c \ln(2/\delta)}{3(n - 1)}
          - \sqrt{\frac{2 \ln(2/\delta)\, \widehat{\mathrm{Var}}(Y)}{n}}.

A small ``c`` clips away value, a large one widens the range term; as in HCOPE, ``c`` is
chosen on a random ``select_share`` of the sessions (the bound they would give on the rest)
and the bound is computed on the rest, so the choice does not look at the data it bounds.

The terms here are per-decision IS's (:class:`~rlrec.evaluation.ope.sequential.PerDecisionIS`):
:math:`X_i = \sum_t \gamma^t w_{i,t} r_{i,t}`, unbiased and of lower variance than the
trajectory-wise product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlrec.errors import UserError
from rlrec.evaluation.ope.sequential import LoggedSessions, PerDecisionIS

__all__ = ["HCOPE_METHOD", "HighConfidenceBound", "empirical_bernstein_lower", "hcope_lower_bound"]

HCOPE_METHOD = (
    "HCOPE (Thomas et al. 2015): per-decision importance-weighted session returns clipped at a "
    "threshold chosen on 20% of the sessions, empirical Bernstein bound (Maurer & Pontil 2009) "
    "on the other 80%"
)


@dataclass(frozen=True)
class HighConfidenceBound:
    """A lower bound on the target's value that holds with probability ``confidence``.

    Attributes:
        value: The bound (None-like NaN when it cannot be computed, see ``note``).
        confidence: The probability 1 - delta that the bound holds.
        threshold: The clipping threshold ``c``.
        clipped_share: Share of the bounded sessions whose term was clipped.
        n_sessions: Sessions the bound is computed on (the rest chose ``c``).
        note: Why there is no bound, or empty.
    """

    value: float
    confidence: float
    threshold: float
    clipped_share: float
    n_sessions: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON record; NaN written as None."""
        return {
            "value": float(self.value) if np.isfinite(self.value) else None,
            "confidence": self.confidence,
            "threshold": float(self.threshold) if np.isfinite(self.threshold) else None,
            "clipped_share": self.clipped_share,
            "sessions": self.n_sessions,
            "method": HCOPE_METHOD,
            "note": self.note,
        }


def empirical_bernstein_lower(
    x: np.ndarray, threshold: float | np.ndarray, delta: float, n: int | None = None
) -> np.ndarray:
    """The clipped empirical Bernstein lower bound of ``mean(x)`` for each threshold.

    Args:
        x: (n,) non-negative terms.
        threshold: Clipping threshold(s) ``c`` > 0, scalar or (K,).
        delta: 1 - confidence.
        n: Sample size the bound is stated for (default ``len(x)``); HCOPE's selection step
            predicts the bound on the other sessions with their number.

    Returns:
        (K,) bounds (a scalar threshold gives shape (1,)).
    """
    c = np.atleast_1d(np.asarray(threshold, dtype=np.float64))  # (K,)
    y = np.minimum(np.asarray(x, dtype=np.float64)[None, :], c[:, None])  # (K, n)
    size = len(x) if n is None else n
    log_term = np.log(2.0 / delta)
    variance = y.var(axis=1, ddof=1) if y.shape[1] > 1 else np.zeros(len(c))
    return (
        y.mean(axis=1)
        - 7.0 * c * log_term / (3.0 * (size - 1))
        - np.sqrt(2.0 * log_term * variance / size)
    )


def hcope_lower_bound(
    sessions: LoggedSessions,
    confidence: float = 0.95,
    select_share: float = 0.2,
    seed: int = 0,
) -> HighConfidenceBound:
    """HCOPE's lower bound on the target's value from per-decision IS terms.

    Args:
        sessions: Prepared sessions (rewards must be >= 0).
        confidence: Probability that the bound holds, in (0, 1).
        select_share: Share of sessions that choose the threshold, in (0, 1).
        seed: Seed of the split.

    Returns:
        The bound; NaN with a note when rewards are negative or there are too few sessions.

    Raises:
        UserError: For a ``confidence`` or ``select_share`` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise UserError(f"confidence: expected a level in (0, 1), got {confidence}")
    if not 0 < select_share < 1:
        raise UserError(f"select_share: expected a share in (0, 1), got {select_share}")
    x = PerDecisionIS().terms(sessions)[:, 0]  # (S,)
    n = len(x)
    n_select = round(select_share * n)
    if (sessions.reward < 0).any():
        return HighConfidenceBound(
            np.nan, confidence, np.nan, 0.0, 0, "rewards < 0: the bound needs rewards >= 0"
        )
    if n_select < 2 or n - n_select < 2:
        return HighConfidenceBound(
            np.nan, confidence, np.nan, 0.0, 0, f"{n} sessions: too few to split and bound"
        )
    order = np.random.default_rng(np.random.SeedSequence([seed, 2015])).permutation(n)
    select, rest = x[order[:n_select]], x[order[n_select:]]
    delta = 1.0 - confidence
    positive = select[select > 0]
    if positive.size == 0:
        threshold = 1.0  # any c gives the bound's worst case; it is <= 0 either way
    else:
        candidates = np.quantile(positive, np.linspace(0.0, 1.0, 101))  # (101,)
        predicted = empirical_bernstein_lower(select, candidates, delta, n=len(rest))
        threshold = float(candidates[int(np.argmax(predicted))])
    bound = float(empirical_bernstein_lower(rest, threshold, delta)[0])
    return HighConfidenceBound(
        value=bound,
        confidence=confidence,
        threshold=threshold,
        clipped_share=float(np.mean(rest > threshold)),
        n_sessions=len(rest),
    )
