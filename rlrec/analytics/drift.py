"""Migration drift: the category switch matrix per period, how far it moves, and when it changes.

The unit is the transition fit's (:mod:`rlrec.models.transition`): a **switch** is a pair of
consecutive steps of a session in different categories, counted in the period of the step
switched to. Per period ``t`` the counts ``N_t[c, c']`` give a row-stochastic matrix ``P_t``.

* **Distance between consecutive periods**: the total variation between their rows, weighted
  by the origin categories' share of the two periods' switches,
  ``d_t = sum_c w_c * 0.5 * sum_c' |P_t[c, c'] - P_{t-1}[c, c']|``. Its 95% interval is a
  session-level Poisson bootstrap (every session's switches get one Poisson(1) weight per
  replicate; sessions, not switches, are the independent units): cheap on millions of
  switches, and it keeps a session's switches together. Sampling noise alone makes the plug-in
  TV positive, more so in sparse periods; the reported ``tv`` is bias-corrected with the
  bootstrap (``2 tv - mean``) and the interval is the basic bootstrap interval around it.
* **Change points**: binary segmentation over periods. For a segment, the statistic of a
  split is the likelihood ratio ``G`` of "one matrix left of the split, another right" against
  "one matrix for the segment" (multinomial rows), maximised over splits; its significance is
  a permutation test. **The test is within users**: a unit is a user's switches in one session
  and period, and a shuffle permutes the period labels of each user's units among that user's
  own units in the segment (under stationarity a user's units are exchangeable; every period
  keeps the users it had and how many units each, so a period's mix of users, heavy users of
  one category, new users arriving, cannot make a change). Shuffling whole periods instead is
  valid too, but its p-value cannot go below the chance that a shuffle puts the same periods
  on each side, ``2 / C(T, s)`` for a split ``s`` of ``T`` periods: 0.016 for the best split
  of a 9-day log by day, above ``alpha = 0.01`` whatever the evidence. It is what
  :func:`change_points` does without the switches (a table of counts only). A split with
  ``p < alpha`` is a change point; both sides are searched again. The first test, over all
  periods, is the **stationarity test**. ``ruptures`` was not used: its costs are for
  continuous signals with a penalty, not for multinomial count tables with a significance
  level.
* :class:`MigrationMatrix`: the pooled matrix as an object to inspect: top transitions,
  stationary distribution, mixing time, and which categories feed others (send more users
  than they receive) and which drain them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlrec.models.transition import smoothed_switch_matrix

__all__ = [
    "ChangePointResult",
    "DriftResult",
    "MigrationMatrix",
    "SwitchUnits",
    "change_points",
    "consecutive_tv",
    "migration_drift",
    "period_switch_counts",
    "total_variation",
]


@dataclass(frozen=True)
class MigrationMatrix:
    """Switch counts between categories, with what one wants to know about them.

    Attributes:
        category_ids: (K,) raw category ids.
        counts: (K, K) switch counts ``c -> c'`` (zero diagonal).
        smoothing: Pseudo-count pulling each row toward the overall switch destinations
            (:func:`rlrec.models.transition.smoothed_switch_matrix`), so that every row is a
            distribution and the chain is irreducible.
    """

    category_ids: tuple[str, ...]
    counts: np.ndarray
    smoothing: float = 1.0

    @property
    def matrix(self) -> np.ndarray:
        """(K, K) row-stochastic switch probabilities (zero diagonal)."""
        return smoothed_switch_matrix(np.asarray(self.counts, dtype=float), self.smoothing)

    def top_transitions(self, n: int = 20) -> pd.DataFrame:
        """The ``n`` most frequent switches.

        Columns ``source``, ``target``, ``count``, ``probability`` (of the target given the
        source) and ``share`` (of all switches).
        """
        counts = np.asarray(self.counts, dtype=float)
        flat = np.argsort(-counts, axis=None, kind="stable")[:n]
        src, dst = np.unravel_index(flat, counts.shape)
        keep = counts[src, dst] > 0
        src, dst = src[keep], dst[keep]
        p = self.matrix
        ids = np.asarray(self.category_ids)
        return pd.DataFrame(
            {
                "source": ids[src],
                "target": ids[dst],
                "count": counts[src, dst].astype(np.int64),
                "probability": p[src, dst],
                "share": counts[src, dst] / max(counts.sum(), 1.0),
            }
        )

    def stationary_distribution(self) -> np.ndarray:
        """(K,) the distribution ``pi`` with ``pi P = pi``: where switching users end up.

        Solved as a linear system (``pi (P - I) = 0``, ``sum pi = 1``, one balance equation
        replaced by the normalisation); the smoothed chain is irreducible, so it is unique.
        """
        p = self.matrix
        k = len(p)
        a = p.T - np.eye(k)
        a[-1] = 1.0
        b = np.zeros(k)
        b[-1] = 1.0
        pi = np.linalg.solve(a, b)
        pi = np.clip(pi, 0.0, None)
        return pi / pi.sum()

    def mixing_time(self, eps: float = 0.25, max_steps: int = 1000) -> int | None:
        """Switches until every start is within total variation ``eps`` of stationarity.

        The lazy chain ``(I + P) / 2`` is used (the standard definition for chains that may be
        periodic, such as a two-category switch chain), so the figure counts steps of a walk
        that switches half the time. None if it does not mix within ``max_steps``.
        """
        p = 0.5 * (np.eye(len(self.counts)) + self.matrix)
        pi = self.stationary_distribution()
        dist = np.eye(len(p))
        for t in range(1, max_steps + 1):
            dist = dist @ p
            if 0.5 * np.abs(dist - pi).sum(axis=1).max() <= eps:
                return t
        return None

    def flows(self) -> pd.DataFrame:
        """Which categories feed others and which drain them.

        Per category: ``inflow`` and ``outflow`` (switches in and out, as shares of all
        switches), ``net`` (in minus out) and ``role`` (``feeder`` if it sends more than it
        receives, ``drain`` if it receives more), sorted by ``net``.
        """
        counts = np.asarray(self.counts, dtype=float)
        total = max(counts.sum(), 1.0)
        inflow, outflow = counts.sum(axis=0) / total, counts.sum(axis=1) / total
        net = inflow - outflow
        table = pd.DataFrame(
            {
                "category": list(self.category_ids),
                "inflow": inflow,
                "outflow": outflow,
                "net": net,
                "role": np.where(net > 0, "drain", np.where(net < 0, "feeder", "balanced")),
            }
        )
        return table.sort_values("net", kind="stable").reset_index(drop=True)


def period_switch_counts(
    period: np.ndarray,
    current: np.ndarray,
    following: np.ndarray,
    n_periods: int,
    k: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """(T, K, K) switch counts per period (``weights`` per switch, e.g. bootstrap weights)."""
    flat = np.bincount(
        (period * k + current) * k + following, weights=weights, minlength=n_periods * k * k
    )
    return flat.reshape(n_periods, k, k)


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """Origin-weighted total variation between two count matrices' row distributions.

    Rows with no switches in either matrix carry no weight (no distribution to compare).

    Args:
        a: (K, K) switch counts.
        b: (K, K) switch counts.
    """
    return float(consecutive_tv(np.stack([a, b]))[0])


def consecutive_tv(counts: np.ndarray) -> np.ndarray:
    """(T - 1,) :func:`total_variation` between each period and the one before, vectorised.

    Args:
        counts: (T, K, K) switch counts per period.

    Returns:
        NaN where no row has switches in both periods.
    """
    rows = counts.sum(axis=2)  # (T, K)
    p = counts / np.where(rows > 0, rows, 1.0)[:, :, None]
    a, b = p[:-1], p[1:]
    both = (rows[:-1] > 0) & (rows[1:] > 0)  # (T-1, K)
    w = np.where(both, rows[:-1] + rows[1:], 0.0)
    tv = 0.5 * np.abs(a - b).sum(axis=2)  # (T-1, K)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * tv).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)


def _loglik(counts: np.ndarray) -> np.ndarray:
    """Multinomial row log-likelihood at the MLE, summed over rows; counts (..., K, K)."""
    rows = counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log(counts / np.where(rows > 0, rows, 1)), 0.0)
    return terms.sum(axis=(-2, -1))


def _best_split(counts: np.ndarray) -> tuple[int, float]:
    """The split ``s`` (left = periods < s) of the max LR statistic ``G`` over a segment.

    Args:
        counts: (T, K, K) switch counts of the segment's periods, T >= 2.
    """
    cum = np.cumsum(counts, axis=0)  # (T, K, K)
    total = cum[-1]
    left = cum[:-1]  # (T-1, K, K): periods < s for s = 1..T-1
    right = total[None] - left
    g = 2.0 * (_loglik(left) + _loglik(right) - _loglik(total))
    s = int(np.argmax(g))
    return s + 1, float(g[s])


@dataclass(frozen=True)
class ChangePointResult:
    """Change points of the migration matrix.

    Attributes:
        periods: Sorted period indices where a new regime starts.
        tests: One row per segment tested: ``start`` and ``stop`` (periods, stop excluded),
            ``split`` (best split period), ``statistic`` (G), ``p_value`` (permutation),
            ``change`` (whether the split was accepted).
        stationarity_p: The permutation p-value of the test over all periods.
    """

    periods: list[int]
    tests: pd.DataFrame
    stationarity_p: float


@dataclass(frozen=True)
class SwitchUnits:
    """Switches grouped into units for the within-user permutation test.

    A unit is a user's switches in one session and period; its cells are the distinct switch
    types ``c -> c'`` it holds, with their counts.

    Attributes:
        user: (U,) the user of each unit.
        period: (U,) the period of each unit.
        unit: (M,) the unit of each (unit, cell) pair.
        cell: (M,) the switch type ``c * K + c'`` of each pair.
        count: (M,) switches of that type in the unit.
        k: Number of categories K.
    """

    user: np.ndarray
    period: np.ndarray
    unit: np.ndarray
    cell: np.ndarray
    count: np.ndarray
    k: int

    @classmethod
    def from_switches(
        cls,
        period: np.ndarray,
        current: np.ndarray,
        following: np.ndarray,
        session: np.ndarray,
        user: np.ndarray,
        k: int,
    ) -> SwitchUnits:
        """Units of per-switch arrays (period, categories, session and user of each switch)."""
        period = np.asarray(period, dtype=np.int64)
        session = np.asarray(session, dtype=np.int64)
        key = np.stack([np.asarray(user, dtype=np.int64), session, period], axis=1)
        units, unit = np.unique(key, axis=0, return_inverse=True)
        unit = unit.ravel()
        cell = np.asarray(current, dtype=np.int64) * k + np.asarray(following, dtype=np.int64)
        pairs, count = np.unique(unit * (k * k) + cell, return_counts=True)
        return cls(
            user=units[:, 0],
            period=units[:, 2],
            unit=pairs // (k * k),
            cell=pairs % (k * k),
            count=count.astype(float),
            k=k,
        )

    def counts(self, period: np.ndarray, n_periods: int) -> np.ndarray:
        """(n_periods, K, K) switch counts with ``period`` (U,) as the units' periods."""
        kk = self.k * self.k
        flat = np.bincount(
            period[self.unit] * kk + self.cell, weights=self.count, minlength=n_periods * kk
        )
        return flat.reshape(n_periods, self.k, self.k)


def _within_user_shuffles(
    units: SwitchUnits, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segment's units sorted by user, and what a shuffle needs.

    Returns:
        ``inside`` (the segment's units, sorted by user), ``owner`` (their users' dense
        ranks, as floats: ``owner + U(0, 1/2)`` sorts a user's units in random order and keeps
        users apart, one float sort instead of a two-key one) and ``labels`` (their periods,
        in that order).
    """
    inside = np.flatnonzero((units.period >= start) & (units.period < stop))
    inside = inside[np.argsort(units.user[inside], kind="stable")]
    _, owner = np.unique(units.user[inside], return_inverse=True)
    return inside, owner.astype(float), units.period[inside]


def change_points(
    counts: np.ndarray,
    alpha: float = 0.01,
    permutations: int = 199,
    seed: int = 0,
    min_periods: int = 2,
    units: SwitchUnits | None = None,
) -> ChangePointResult:
    """Binary segmentation of per-period switch counts with permutation tests.

    Args:
        counts: (T, K, K) switch counts per period.
        alpha: Significance level of each split.
        permutations: Shuffles per test (the smallest p-value is ``1 / (permutations + 1)``,
            which must be below ``alpha``).
        seed: Seed of the shuffles.
        min_periods: A segment needs this many periods with switches to be tested.
        units: The switches as :class:`SwitchUnits` (periods indexing ``counts``, which they
            must add up to): the shuffles permute period labels within users (see the module
            doc). None shuffles whole periods, whose p-value cannot go below
            ``2 / C(T, s)`` (``T`` periods, split ``s``), so a short log cannot show a change.
    """
    if 1.0 / (permutations + 1) >= alpha:
        raise ValueError(
            f"{permutations} permutations cannot give a p-value below alpha={alpha}; "
            f"use at least {int(np.ceil(1 / alpha))}"
        )
    if units is not None and (
        (len(units.period) and int(units.period.max()) >= len(counts))
        or not np.allclose(units.counts(units.period, len(counts)), counts)
    ):
        raise ValueError("units do not add up to counts")
    rng = np.random.default_rng(seed)
    found: list[int] = []
    rows = []
    stack = [(0, len(counts))]
    stationarity = float("nan")
    while stack:
        start, stop = stack.pop()
        has = counts[start:stop].sum(axis=(1, 2)) > 0
        segment = counts[start:stop][has]
        if len(segment) < max(2, min_periods) or stop - start < 2:
            continue
        split, stat = _best_split(segment)
        exceed = 0
        if units is None:
            for _ in range(permutations):
                _, null = _best_split(segment[rng.permutation(len(segment))])
                exceed += null >= stat - 1e-9
        else:
            inside, owner, labels = _within_user_shuffles(units, start, stop)
            shuffled = units.period.copy()
            for _ in range(permutations):
                # Grouped by user, in random order within a user: each user's periods land
                # on a random permutation of that user's units.
                order = np.argsort(owner + 0.5 * rng.random(len(inside)))
                shuffled[inside[order]] = labels
                null_counts = units.counts(shuffled, len(counts))[start:stop][has]
                _, null = _best_split(null_counts)
                exceed += null >= stat - 1e-9
        p = (1 + exceed) / (1 + permutations)
        # ``split`` indexes the periods with switches; map it back to a period index.
        active = np.flatnonzero(has) + start
        at = int(active[split])
        change = p < alpha
        rows.append(
            {"start": start, "stop": stop, "split": at, "statistic": stat, "p_value": p}
            | {"change": bool(change)}
        )
        if start == 0 and stop == len(counts):
            stationarity = p
        if change:
            found.append(at)
            stack.extend([(start, at), (at, stop)])
    tests = pd.DataFrame(
        rows, columns=["start", "stop", "split", "statistic", "p_value", "change"]
    ).sort_values(["start", "stop"], kind="stable", ignore_index=True)
    return ChangePointResult(periods=sorted(found), tests=tests, stationarity_p=stationarity)


@dataclass(frozen=True)
class DriftResult:
    """Migration drift over periods.

    Attributes:
        matrix: The pooled :class:`MigrationMatrix` of the whole log.
        period_counts: (T, K, K) switch counts per period.
        distance: One row per period t >= 1: ``period``, ``start`` (ISO), ``switches``,
            ``tv_plugin`` (to period t - 1), ``tv`` (bias-corrected), ``tv_low``, ``tv_high``
            (basic bootstrap 95% interval).
        change_points: The :class:`ChangePointResult`.
    """

    matrix: MigrationMatrix
    period_counts: np.ndarray
    distance: pd.DataFrame
    change_points: ChangePointResult


def migration_drift(
    period: np.ndarray,
    current: np.ndarray,
    following: np.ndarray,
    session: np.ndarray,
    category_ids: tuple[str, ...],
    period_starts: list[str],
    alpha: float = 0.01,
    bootstrap: int = 100,
    permutations: int = 199,
    seed: int = 0,
    active: tuple[int, int] | None = None,
    user: np.ndarray | None = None,
) -> DriftResult:
    """Per-period matrices, distances with bootstrap intervals and change points.

    Args:
        period: (n,) period of each switch.
        current: (n,) category switched from.
        following: (n,) category switched to.
        session: (n,) session of each switch (the bootstrap's unit).
        category_ids: (K,) raw category ids.
        period_starts: (T,) ISO start of each period.
        alpha: Significance level of the change-point tests.
        bootstrap: Poisson-bootstrap replicates of the distances.
        permutations: Shuffles per change-point test.
        seed: Seed of the bootstrap and the shuffles.
        active: ``(lo, hi)``, the periods searched for change points (inclusive; the log's
            edges, a handful of users, only add noise to the tests); None for all.
        user: (n,) user of each switch: the change-point tests shuffle periods within users
            (see the module doc). None shuffles whole periods, which cannot find a change in
            a log of few periods.
    """
    k, n_periods = len(category_ids), len(period_starts)
    counts = period_switch_counts(period, current, following, n_periods, k)
    tv = consecutive_tv(counts)
    rng = np.random.default_rng([seed, 1])
    # Sessions renumbered 0..S-1 so that one weight array serves every switch.
    _, session_index = np.unique(session, return_inverse=True)
    n_sessions = int(session_index.max()) + 1 if len(session_index) else 0
    boot = np.full((bootstrap, max(n_periods - 1, 0)), np.nan)
    for b in range(bootstrap):
        w = rng.poisson(1.0, n_sessions).astype(float)[session_index]
        rep = period_switch_counts(period, current, following, n_periods, k, weights=w)
        boot[b] = consecutive_tv(rep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no switches
        q_low, q_high, mean = (
            (
                np.nanpercentile(boot, 2.5, axis=0),
                np.nanpercentile(boot, 97.5, axis=0),
                np.nanmean(boot, axis=0),
            )
            if bootstrap
            else (tv, tv, tv)
        )
    # TV is biased upward by sampling noise and a resample adds noise again, so the bootstrap
    # distribution sits above the estimate: report the bias-corrected estimate 2 tv - mean and
    # the basic (reverse percentile) interval, which is centred on it, clipped at 0.
    distance = pd.DataFrame(
        {
            "period": np.arange(1, n_periods),
            "start": period_starts[1:],
            "switches": counts[1:].sum(axis=(1, 2)).astype(np.int64),
            "tv_plugin": tv,
            "tv": np.clip(2 * tv - mean, 0.0, 1.0),
            "tv_low": np.clip(2 * tv - q_high, 0.0, 1.0),
            "tv_high": np.clip(2 * tv - q_low, 0.0, 1.0),
        }
    )
    lo, hi = active if active is not None else (0, n_periods - 1)
    units = None
    if user is not None:
        inside = (period >= lo) & (period <= hi)
        units = SwitchUnits.from_switches(
            period[inside] - lo,
            current[inside],
            following[inside],
            session[inside],
            user[inside],
            k,
        )
    cps = change_points(
        counts[lo : hi + 1], alpha=alpha, permutations=permutations, seed=seed, units=units
    )
    if lo:  # back to the log's period indices
        cps = ChangePointResult(
            periods=[p + lo for p in cps.periods],
            tests=cps.tests.assign(
                start=cps.tests["start"] + lo,
                stop=cps.tests["stop"] + lo,
                split=cps.tests["split"] + lo,
            ),
            stationarity_p=cps.stationarity_p,
        )
    return DriftResult(
        matrix=MigrationMatrix(tuple(category_ids), counts.sum(axis=0)),
        period_counts=counts,
        distance=distance,
        change_points=cps,
    )
