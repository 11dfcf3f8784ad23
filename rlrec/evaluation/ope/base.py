r"""What every off-policy estimator shares: the estimate, the estimator base and the ratio.

Bandit estimators (:mod:`rlrec.evaluation.ope.bandit`, units are logged rounds) and
sequential estimators (:mod:`rlrec.evaluation.ope.sequential`, units are logged sessions)
are the same shape of computation: per-unit *terms* (columns) whose column sums *combine*
into the estimate. :class:`Estimator` is that contract, and because an estimate is a
function of column sums, one resampling of the units
(:func:`rlrec.evaluation.ope.bootstrap.bootstrap_estimates`) gives every estimator's
bootstrap interval at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

__all__ = [
    "Estimate",
    "Estimator",
    "EstimatorData",
    "column_sums",
    "ratio",
    "relative_error",
    "relative_errors",
]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval.

    Attributes:
        name: The estimator's name (``dm``, ``ipw``, ...).
        value: The estimate on the full log.
        ci95: (low, high) percentile bootstrap interval at the requested confidence.
        n_resamples: Bootstrap resamples drawn (0: no interval).
        n_nonfinite: Resamples whose estimate was undefined (NaN or infinite, e.g. a
            resample with no weight on the target policy); the interval is over the others,
            so a large count means the interval describes fewer resamples than asked for.
        method: How the interval was computed, in words (empty: not stated, as for the
            bandit estimators, whose one method the bandit report names).
    """

    name: str
    value: float
    ci95: tuple[float, float]
    n_resamples: int = 0
    n_nonfinite: int = 0
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "ci95"}`` (plus ``interval_method`` when stated), NaN written as None."""
        out: dict[str, Any] = {
            "value": _finite_or_none(self.value),
            "ci95": [_finite_or_none(v) for v in self.ci95],
        }
        if self.method:
            out["interval_method"] = self.method
        return out


class EstimatorData(Protocol):
    """The validated logged data an estimator reads: it knows its number of units."""

    @property
    def n_units(self) -> int:
        """Independent units (rounds or sessions), the ones the bootstrap resamples."""
        ...


DataT = TypeVar("DataT", bound=EstimatorData)


@dataclass(frozen=True)
class Estimator(Generic[DataT]):
    """Base of all estimators: per-unit terms and how their column sums combine.

    Subclasses define ``name``, :meth:`terms` and, unless the estimate is the mean of one
    per-unit term, :meth:`combine`; the estimate is
    ``combine(terms.sum(axis=0), n_units, data)``, so bootstrap resamples need only
    resampled column sums. ``requires_model`` marks estimators that read a fitted model (the
    reward model of bandit DM and the DR family, the Q-function of sequential DM, DR, WDR and
    MAGIC); the ``estimate_*_value`` functions skip them by default when there is none.
    """

    name: ClassVar[str] = ""
    requires_model: ClassVar[bool] = False

    def terms(self, data: DataT) -> np.ndarray:
        """(n_units, n_terms) float64 per-unit terms."""
        raise NotImplementedError

    def combine(self, sums: np.ndarray, n_units: np.ndarray | int, data: DataT) -> np.ndarray:
        """Estimates from column sums; by default the mean of the one per-unit term.

        Most estimators are a plain mean over units (IPW, DM, DR and their sequential
        forms); self-normalised ones override this with their own ratio.

        Args:
            sums: (B, n_terms) sums of :meth:`terms` over (resampled) units.
            n_units: The number of units each sum is over (scalar or (B,)).
            data: The full log, for shape information (horizon, discount); never resampled.

        Returns:
            (B,) estimates.
        """
        return ratio(sums[:, 0], n_units)

    def estimate(self, data: DataT) -> float:
        """The point estimate on all logged units."""
        return float(self.combine(column_sums(self.terms(data)), data.n_units, data)[0])


def column_sums(terms: np.ndarray) -> np.ndarray:
    """(1, k) sums of (n, k) terms, column by column.

    ``np.sum`` of one column uses pairwise summation, like OBP's ``np.mean``, which keeps
    the agreement with OBP at ~1e-15 rather than ~n * 1e-16.
    """
    return np.array([[np.sum(terms[:, j]) for j in range(terms.shape[1])]])


def ratio(
    num: np.ndarray | float, den: np.ndarray | float, where_zero: float = np.nan
) -> np.ndarray:
    """Elementwise ``num / den`` (broadcast), with ``where_zero`` where ``den == 0``.

    NaN (the default) marks an undefined estimate, e.g. a self-normalised estimator on a
    resample with no weight on the policy; per-step normalisers pass 0 instead, because a
    step nobody reaches under the target policy contributes nothing.
    """
    num_arr = np.asarray(num, dtype=np.float64)
    den_arr = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num_arr.shape, den_arr.shape), where_zero)
    np.divide(num_arr, den_arr, out=out, where=den_arr != 0)
    return out


def relative_error(value: float, truth: float) -> float:
    """``|value - truth| / |truth|``; NaN when either is undefined or truth is 0."""
    if not (np.isfinite(value) and np.isfinite(truth)) or truth == 0:
        return float("nan")
    return float(abs(value - truth) / abs(truth))


def relative_errors(estimates: Mapping[str, Estimate], truth: float) -> dict[str, float]:
    """:func:`relative_error` of every estimate against the ground truth."""
    return {name: relative_error(e.value, truth) for name, e in estimates.items()}


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
