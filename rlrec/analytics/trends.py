"""Interest trends: each category's share of events per period, and which rise or fade.

For every category ``c`` the events of period ``t`` are ``n_t`` trials of which ``k_t`` fall in
``c``. A binomial GLM with a logit link, ``logit P(c | t) = a + b * (t - mean t)``, fitted by
statsmodels, gives the trend ``b`` (change of the log-odds of the share per period). Events
are not independent trials (one user's session holds many events of one category), so the
model is quasi-binomial: the scale is Pearson's chi-square over the residual degrees of
freedom (computed from the fit's ``pearson_chi2``), which widens the standard errors by the
extra period-to-period variation that the clustering causes. The Wald test of ``b = 0``
gives a p-value per category (Student's t with the residual degrees of freedom, as ``phi`` is
estimated from few periods); Benjamini-Hochberg
(``statsmodels.stats.multitest.multipletests``) controls the false discovery rate over
categories. Rising categories are those with ``b > 0`` and ``q < alpha``,
strongest (largest ``b``) first; falling likewise with ``b < 0``.

Per-period shares carry Wilson intervals (``proportion_confint``) computed on the effective
counts ``k / phi`` and ``n / phi`` (``phi`` the category's dispersion, at least 1), so the
bands are as wide as the clustering makes them. The same analysis runs per user segment: new
(the user's first period) vs returning events, and high vs low activity users (total events
at or above the median user's).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlrec.analytics.periods import PeriodLog

__all__ = [
    "SEGMENTS",
    "TrendResult",
    "category_trends",
    "segment_counts",
    "segment_trends",
]

SEGMENTS = ("new", "returning", "high_activity", "low_activity")
"""User segments of :func:`segment_trends`."""


@dataclass(frozen=True)
class TrendResult:
    """Shares per period and the trend test per category.

    Attributes:
        shares: One row per (period, category): ``period`` (index), ``start`` (ISO),
            ``category``, ``count``, ``total``, ``share``, ``share_low``, ``share_high``
            (95% interval).
        tests: One row per category: ``category``, ``events``, ``slope`` (log-odds per
            period), ``slope_se``, ``z``, ``p_value``, ``q_value`` (Benjamini-Hochberg),
            ``dispersion``, ``share_first``, ``share_last`` (mean shares of the first and last
            thirds of the periods), ``direction`` (rising, falling or flat).
        rising: Raw ids of the rising categories, strongest first.
        falling: Raw ids of the falling categories, strongest first.
    """

    shares: pd.DataFrame
    tests: pd.DataFrame
    rising: list[str]
    falling: list[str]


def _trend_test(k: np.ndarray, n: np.ndarray) -> tuple[float, float, float, float]:
    """Quasi-binomial logit slope over the periods with events.

    Returns:
        ``slope``, ``se``, ``p_value`` and ``dispersion`` (NaN slope and p-value 1 when the
        category never or always occurs, where the slope is not identified).
    """
    import statsmodels.api as sm
    from scipy import stats

    used = n > 0
    k, n = k[used].astype(float), n[used].astype(float)
    if len(k) < 3 or k.sum() == 0 or np.all(k == n):
        return float("nan"), float("nan"), 1.0, 1.0
    t = np.flatnonzero(used).astype(float)
    exog = np.column_stack([np.ones_like(t), t - t.mean()])
    with warnings.catch_warnings():
        # Separation (a share of 0 in some periods) is handled by the p-value being large;
        # statsmodels' convergence warnings would only repeat that per category.
        warnings.simplefilter("ignore")
        fit = sm.GLM(np.column_stack([k, n - k]), exog, family=sm.families.Binomial()).fit()
    # Quasi-binomial: Pearson's chi-square over the residual degrees of freedom scales the
    # variance. Computed here, not with ``fit(scale="X2")``, whose scale for the two-column
    # (successes, failures) form is on the proportion scale in statsmodels 0.15 (about 0.007
    # where Pearson's X2 / df is 2.2), which would shrink the errors instead of widening them.
    df = max(int(fit.df_resid), 1)
    phi = max(float(fit.pearson_chi2) / df, 1.0)
    slope = float(fit.params[1])
    se = float(fit.bse[1]) * np.sqrt(phi)
    if not (np.isfinite(slope) and np.isfinite(se) and se > 0):
        return float("nan"), float("nan"), 1.0, 1.0
    # Student's t with the residual degrees of freedom: phi is estimated from few periods.
    p = float(2.0 * stats.t.sf(abs(slope / se), df))
    return slope, se, p, phi


def category_trends(
    counts: np.ndarray,
    category_ids: tuple[str, ...],
    period_starts: list[str],
    alpha: float = 0.05,
    skip: int | None = None,
) -> TrendResult:
    """Shares with intervals, and rising and falling categories, from per-period counts.

    Args:
        counts: (T, K) events per period and category.
        category_ids: (K,) raw category ids.
        period_starts: (T,) ISO start of each period.
        alpha: False discovery rate of the rising and falling lists.
        skip: A category index left out of the lists (``__other__``: a fold of many
            categories is not one a merchandiser can act on); it keeps its row.
    """
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportion_confint

    counts = np.asarray(counts, dtype=np.int64)
    n_periods, k = counts.shape
    total = counts.sum(axis=1)
    rows = []
    share_rows = []
    third = max(1, n_periods // 3)
    for c in range(k):
        slope, se, p, phi = _trend_test(counts[:, c], total)
        share = np.divide(counts[:, c], total, out=np.zeros(n_periods), where=total > 0)
        low, high = proportion_confint(
            counts[:, c] / phi, np.maximum(total, 1) / phi, alpha=0.05, method="wilson"
        )
        low, high = np.where(total > 0, low, np.nan), np.where(total > 0, high, np.nan)
        rows.append(
            {
                "category": category_ids[c],
                "events": int(counts[:, c].sum()),
                "slope": slope,
                "slope_se": se,
                "z": slope / se if se and np.isfinite(se) and se > 0 else float("nan"),
                "p_value": p,
                "dispersion": phi,
                "share_first": float(share[:third].mean()),
                "share_last": float(share[-third:].mean()),
            }
        )
        for t in range(n_periods):
            share_rows.append(
                (
                    t,
                    period_starts[t],
                    category_ids[c],
                    int(counts[t, c]),
                    int(total[t]),
                    float(share[t]),
                    float(low[t]),
                    float(high[t]),
                )
            )
    tests = pd.DataFrame(rows)
    tests["q_value"] = multipletests(tests["p_value"].to_numpy(), method="fdr_bh")[1]
    significant = (tests["q_value"] < alpha) & tests["slope"].notna()
    if skip is not None:
        significant.iloc[skip] = False
    tests["direction"] = np.where(
        significant & (tests["slope"] > 0),
        "rising",
        np.where(significant & (tests["slope"] < 0), "falling", "flat"),
    )
    rising = tests[tests["direction"] == "rising"].sort_values("slope", ascending=False)
    falling = tests[tests["direction"] == "falling"].sort_values("slope")
    shares = pd.DataFrame(
        share_rows,
        columns=[
            "period",
            "start",
            "category",
            "count",
            "total",
            "share",
            "share_low",
            "share_high",
        ],
    )
    return TrendResult(
        shares=shares,
        tests=tests,
        rising=[str(c) for c in rising["category"]],
        falling=[str(c) for c in falling["category"]],
    )


def segment_counts(log: PeriodLog) -> dict[str, np.ndarray]:
    """(T, K) event counts of each segment of :data:`SEGMENTS`.

    ``new``: events in the user's first period; ``returning``: the others. ``high_activity``:
    users with at least the median user's total events; ``low_activity``: the others.
    """
    n_users = int(log.user.max()) + 1
    first = np.full(n_users, np.iinfo(np.int64).max)
    np.minimum.at(first, log.user, log.period)
    is_new = log.period == first[log.user]
    per_user = np.bincount(log.user, minlength=n_users)
    active = per_user[per_user > 0]
    high_user = per_user >= np.median(active)
    is_high = high_user[log.user]
    k = log.n_categories
    out = {}
    for name, mask in (
        ("new", is_new),
        ("returning", ~is_new),
        ("high_activity", is_high),
        ("low_activity", ~is_high),
    ):
        flat = np.bincount(log.period[mask] * k + log.category[mask], minlength=log.n_periods * k)
        out[name] = flat.reshape(log.n_periods, k)
    return out


def segment_trends(
    log: PeriodLog, alpha: float = 0.05, periods: tuple[int, int] | None = None
) -> pd.DataFrame:
    """The trend tests of every segment, stacked with a ``segment`` column.

    Args:
        log: The period log.
        alpha: False discovery rate per segment.
        periods: ``(lo, hi)``, the periods tested (inclusive); None for all.
    """
    lo, hi = periods if periods is not None else (0, log.n_periods - 1)
    starts = log.period_starts()[lo : hi + 1]
    frames = []
    for name, counts in segment_counts(log).items():
        result = category_trends(
            counts[lo : hi + 1], log.category_ids, starts, alpha, skip=log.other
        )
        frames.append(result.tests.assign(segment=name))
    table = pd.concat(frames, ignore_index=True)
    return table[["segment", *[c for c in table.columns if c != "segment"]]]
