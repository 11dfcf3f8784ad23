"""Interest trends: each category's share of events per period, and which rise or fade.

**The test is within users.** In a log of a few hundred users, a period's category shares move
mostly because different users happen to be active (a heavy user of one category shows up for
two days); a category is *rising* when users' own interest moves toward it. For every category
``c`` the model is a logistic regression of "this event is in ``c``" on the period ``t`` with
one intercept per user, ``logit P(c | u, t) = a_u + b * t``, and the test of ``b = 0`` is its
score test, which has a closed form (the stratified Cochran-Armitage trend test): with
``n_ut`` a user's events in period ``t``, ``k_ut`` those in ``c``, ``p_u`` the user's overall
share of ``c`` and ``tbar_u`` the user's event-weighted mean period,

    U = sum_{u,t} (t - tbar_u) k_ut,    V = sum_u p_u (1 - p_u) sum_t n_ut (t - tbar_u)^2,

``z = U / sqrt(phi V)`` and ``b ~ U / V`` (log-odds per period). Events are clustered (a
session holds many events of one category), so the variance is scaled by the Pearson
dispersion ``phi`` of the user-period cells (at least 1): a quasi-likelihood score test. It is
written here in numpy, vectorised over categories, because statsmodels' ``ConditionalLogit``
fits the same model one category at a time on every event (minutes at 10M events); the tests
check the statistic against ``ConditionalLogit`` on a small log. P-values are two-sided normal;
Benjamini-Hochberg (``statsmodels.stats.multitest.multipletests``) controls the false
discovery rate over categories. **Rising**: ``b > 0`` and ``q < alpha``, the largest gain in
share (percentage points, last third of the periods against the first third) first, so that a
big category gaining ground comes before a niche one doubling; **falling** likewise.

Per-period shares carry Wilson intervals (statsmodels ``proportion_confint``) on the
effective counts ``k / phi`` and ``n / phi``, ``phi`` the category's dispersion from its test
(Pearson, around the fitted model, so a real trend does not widen them), so the bands are as
wide as the clustering of events makes them. The same test runs per
segment: returning (not the user's first period) events, and high vs low activity users (total
events at or above the median user's). New users' events (each user's first period) hold one
period per user, where a within-user trend is not defined; their test is the period-level
quasi-binomial logistic regression of the category's share on ``t`` (statsmodels ``GLM``).
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
    "period_trend_test",
    "segment_masks",
    "segment_trends",
    "within_user_trend",
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
            period), ``z``, ``p_value``, ``q_value`` (Benjamini-Hochberg), ``dispersion``,
            ``share_first``, ``share_last`` (mean shares of the first and last thirds of the
            periods), ``gain`` (last minus first), ``test`` (``within_user`` or ``period``),
            ``direction`` (rising, falling or flat).
        rising: Raw ids of the rising categories, largest gain first.
        falling: Raw ids of the falling categories, largest loss first.
    """

    shares: pd.DataFrame
    tests: pd.DataFrame
    rising: list[str]
    falling: list[str]


def within_user_trend(
    user: np.ndarray, period: np.ndarray, category: np.ndarray, n_periods: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The user-stratified trend score test of every category (see the module doc).

    Args:
        user: (E,) user index of each event.
        period: (E,) period of each event, 0..n_periods-1.
        category: (E,) category of each event, 0..k-1.
        n_periods: T.
        k: K.

    Returns:
        ``slope`` (K,) one-step estimate ``U / V`` of the log-odds slope per period, ``z`` (K,)
        the scaled score statistic (NaN where no user has variation), ``dispersion`` (K,).
    """
    n_users = int(user.max()) + 1 if len(user) else 0
    cell = user * n_periods + period
    n_ut = np.bincount(cell, minlength=n_users * n_periods).astype(float)  # (U*T,)
    by_user = n_ut.reshape(n_users, n_periods)
    n_u = by_user.sum(axis=1)
    t_grid = np.arange(n_periods, dtype=float)
    tbar = (by_user * t_grid).sum(axis=1) / np.maximum(n_u, 1.0)  # (U,)
    keys, k_cnt = np.unique(cell * k + category, return_counts=True)
    k_cell, k_cat = keys // k, keys % k
    k_user, k_t = k_cell // n_periods, (k_cell % n_periods).astype(float)
    k_uc = np.bincount(k_user * k + k_cat, weights=k_cnt, minlength=n_users * k).reshape(-1, k)
    p = k_uc / np.maximum(n_u, 1.0)[:, None]  # (U, K) the user's share of each category
    score = np.bincount(k_cat, weights=(k_t - tbar[k_user]) * k_cnt, minlength=k)
    spread = (by_user * (t_grid[None, :] - tbar[:, None]) ** 2).sum(axis=1)  # (U,)
    info = (p * (1.0 - p) * spread[:, None]).sum(axis=0)  # (K,) V
    # Pearson X2 of the null fit n_ut p_u over every cell of the users with 0 < p_u < 1:
    # sum k^2 / (n p (1-p)) - 2 sum k / (1-p) + sum n p / (1-p), zero cells only in the last.
    varying = (p > 0) & (p < 1)
    q = np.where(varying, 1.0 - p, 1.0)
    pu = p[k_user, k_cat]
    ok = (pu > 0) & (pu < 1)
    x2 = np.bincount(
        k_cat[ok], weights=k_cnt[ok] ** 2 / (n_ut[k_cell[ok]] * pu[ok] * (1 - pu[ok])), minlength=k
    )
    x2 += (np.where(varying, -2.0 * k_uc / q + n_u[:, None] * p / q, 0.0)).sum(axis=0)
    cells = (by_user > 0).sum(axis=1)  # (U,) periods each user is active in
    df = (varying * cells[:, None]).sum(axis=0) - varying.sum(axis=0) - 1
    phi = np.maximum(x2 / np.maximum(df, 1), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(info > 0, score / np.sqrt(phi * info), np.nan)
        slope = np.where(info > 0, score / info, np.nan)
    return slope, z, phi


def period_trend_test(k: np.ndarray, n: np.ndarray) -> tuple[float, float, float]:
    """Quasi-binomial logit slope of one category's per-period share (statsmodels ``GLM``).

    Args:
        k: (T,) the category's events per period.
        n: (T,) all events per period.

    Returns:
        ``slope`` (log-odds per period), ``z`` and ``dispersion`` (NaN slope and z when the
        category never or always occurs, or fewer than 3 periods have events).
    """
    import statsmodels.api as sm

    used = n > 0
    k, n = k[used].astype(float), n[used].astype(float)
    if len(k) < 3 or k.sum() == 0 or np.all(k == n):
        return float("nan"), float("nan"), 1.0
    t = np.flatnonzero(used).astype(float)
    exog = np.column_stack([np.ones_like(t), t - t.mean()])
    with warnings.catch_warnings():
        # Separation (a share of 0 in some periods) shows as a large standard error.
        warnings.simplefilter("ignore")
        fit = sm.GLM(np.column_stack([k, n - k]), exog, family=sm.families.Binomial()).fit()
    # Pearson X2 / df computed here, not by ``fit(scale="X2")``: for the two-column
    # (successes, failures) form statsmodels 0.15 returns a scale on the proportion scale
    # (0.007 where X2 / df is 2.2), which would shrink the errors instead of widening them.
    phi = max(float(fit.pearson_chi2) / max(int(fit.df_resid), 1), 1.0)
    slope, se = float(fit.params[1]), float(fit.bse[1]) * np.sqrt(phi)
    if not (np.isfinite(slope) and np.isfinite(se) and se > 0):
        return float("nan"), float("nan"), 1.0
    return slope, slope / se, phi


def category_trends(
    log: PeriodLog,
    periods: tuple[int, int] | None = None,
    alpha: float = 0.05,
    mask: np.ndarray | None = None,
    within_user: bool = True,
) -> TrendResult:
    """Shares with intervals, and rising and falling categories.

    Args:
        log: The period log.
        periods: ``(lo, hi)``, the periods analysed (inclusive); None for all.
        alpha: False discovery rate of the rising and falling lists.
        mask: (E,) bool, the events analysed (a segment); None for all.
        within_user: The user-stratified test (default); False for the period-level one.
    """
    from scipy import stats
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = periods if periods is not None else (0, log.n_periods - 1)
    n_periods, k = hi - lo + 1, log.n_categories
    keep = (log.period >= lo) & (log.period <= hi)
    if mask is not None:
        keep &= mask
    period = log.period[keep] - lo
    category = log.category[keep]
    counts = np.bincount(period * k + category, minlength=n_periods * k).reshape(n_periods, k)
    total = counts.sum(axis=1)
    if within_user:
        slope, z, phi = within_user_trend(log.user[keep], period, category, n_periods, k)
    else:
        slope, z, phi = (
            np.array(v)
            for v in zip(*(period_trend_test(counts[:, c], total) for c in range(k)), strict=True)
        )
    p_value = np.where(np.isfinite(z), 2.0 * stats.norm.sf(np.abs(np.nan_to_num(z))), 1.0)
    q_value = multipletests(p_value, method="fdr_bh")[1]
    share = counts / np.maximum(total, 1)[:, None]
    third = max(1, n_periods // 3)
    first, last = share[:third].mean(axis=0), share[-third:].mean(axis=0)
    tests = pd.DataFrame(
        {
            "category": list(log.category_ids),
            "events": counts.sum(axis=0),
            "slope": slope,
            "z": z,
            "p_value": p_value,
            "q_value": q_value,
            "dispersion": phi,
            "share_first": first,
            "share_last": last,
            "gain": last - first,
            "test": "within_user" if within_user else "period",
        }
    )
    significant = (q_value < alpha) & np.isfinite(z)
    if log.other is not None:
        significant[log.other] = False  # a fold of many categories: nothing to act on
    tests["direction"] = np.where(
        significant & (slope > 0), "rising", np.where(significant & (slope < 0), "falling", "flat")
    )
    rising = tests[tests["direction"] == "rising"].sort_values("gain", ascending=False)
    falling = tests[tests["direction"] == "falling"].sort_values("gain")

    # Shares with intervals as wide as the clustering of events makes them: the test's
    # dispersion (Pearson, around the fitted model, so a real trend does not widen them).
    phi_t = np.where(np.isfinite(phi), np.maximum(phi, 1.0), 1.0)
    starts = log.period_starts()[lo : hi + 1]
    low, high = proportion_confint(
        counts / phi_t[None, :], np.maximum(total, 1)[:, None] / phi_t[None, :], method="wilson"
    )
    empty = total[:, None] == 0
    shares = pd.DataFrame(
        {
            "period": np.repeat(np.arange(lo, hi + 1), k),
            "start": np.repeat(starts, k),
            "category": np.tile(np.asarray(log.category_ids), n_periods),
            "count": counts.ravel(),
            "total": np.repeat(total, k),
            "share": share.ravel(),
            "share_low": np.where(empty, np.nan, low).ravel(),
            "share_high": np.where(empty, np.nan, high).ravel(),
        }
    )
    return TrendResult(
        shares=shares,
        tests=tests,
        rising=[str(c) for c in rising["category"]],
        falling=[str(c) for c in falling["category"]],
    )


def segment_masks(log: PeriodLog) -> dict[str, np.ndarray]:
    """(E,) bool event mask of each segment of :data:`SEGMENTS`.

    ``new``: events in the user's first period; ``returning``: the others. ``high_activity``:
    users with at least the median user's total events; ``low_activity``: the others.
    """
    n_users = int(log.user.max()) + 1
    # Events are sorted by (user, session start): a user's first event is in their first period.
    users, first_index = np.unique(log.user, return_index=True)
    first = np.zeros(n_users, dtype=np.int64)
    first[users] = log.period[first_index]
    is_new = log.period == first[log.user]
    per_user = np.bincount(log.user, minlength=n_users)
    high_user = per_user >= np.median(per_user[per_user > 0])
    is_high = high_user[log.user]
    return {
        "new": is_new,
        "returning": ~is_new,
        "high_activity": is_high,
        "low_activity": ~is_high,
    }


def segment_trends(
    log: PeriodLog, alpha: float = 0.05, periods: tuple[int, int] | None = None
) -> pd.DataFrame:
    """The trend tests of every segment, stacked with a ``segment`` column.

    Args:
        log: The period log.
        alpha: False discovery rate per segment.
        periods: ``(lo, hi)``, the periods tested (inclusive); None for all.
    """
    frames = []
    for name, mask in segment_masks(log).items():
        # New users hold one period each: only a between-period trend is defined for them.
        result = category_trends(log, periods, alpha, mask, within_user=(name != "new"))
        frames.append(result.tests.assign(segment=name))
    table = pd.concat(frames, ignore_index=True)
    return table[["segment", *[c for c in table.columns if c != "segment"]]]
