"""Category demand: views, carts and buys per category for the next periods.

**Model** (interest migration at the period scale). A user's interest in period ``p`` is their
share of events per category, ``a_{u,p}``; in the next period they produce counts
``b_{u,p+1}``. The period migration matrix ``G[c, c'] ~ sum_u a_{u,p}[c] b_{u,p+1}[c']``
(summed over the history's consecutive periods with weights halving every ``half_life``
periods back, so that the model follows a migration that changes; rows normalised) says where
the interest of returning users goes; users new to a period (no events in the one before) bring
the category mix ``n`` that new users brought in the history (same weights), a share ``nu`` of
the events. The forecast share of period ``t`` propagates the current interest distribution
``s_{t-1}``: ``s_t = (1 - nu) s_{t-1} G + nu n`` (``h`` periods ahead: ``h`` times). Each event
type's volume is the last period's total (the same as the last-period baseline, so the
comparison isolates the category mix) spread over categories by ``s_t`` times the category's
rate of that event type per event (smoothed toward the overall rate with ``funnel_prior``
pseudo-events, as the transition fit smooths its funnel).

**Memory**: the half-life is chosen per forecast origin among :data:`HALF_LIVES` by the
WAPE of the one-step forecasts of the :data:`VALIDATION_ORIGINS` origins before it
(:func:`choose_half_life`): a long memory averages out the noise of a stable mix, a short one
follows a mix that shifts (a fixed 2 lost to the last period on every planted log).

**Baselines**: ``last_period`` (each cell as in the period before) and ``seasonal_naive``
(each cell as one season before: 7 periods for daily periods, 24 for hourly ones; none for
periods of a week or longer).

**Evaluation**: one-step-ahead forecasts of each of the last ``holdout`` complete periods,
each from the complete periods before it (a rolling origin); WAPE (``sum |y - f| / sum y``
over categories, event types and periods) and MAPE (mean ``|y - f| / y`` over cells with
``y > 0``). Only complete periods are used: the log's cut first and last periods would look
like a collapse of demand; so are periods at either end with under 10% of the busiest
period's events (:func:`demand_series`).

**Intervals**: ``f +- 1.96 sqrt(phi f)``, a quasi-Poisson 95% interval whose dispersion ``phi``
(per event type) is the mean Pearson residual ``(y - f)^2 / f`` of the rolling forecasts of
the periods *before* the holdout, so the holdout's coverage is an honest check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from rlrec.analytics.periods import DAY_MS, PeriodLog

__all__ = [
    "EVENT_KINDS",
    "HALF_LIVES",
    "DemandResult",
    "DemandSeries",
    "choose_half_life",
    "demand_forecast",
    "demand_series",
    "forecast_errors",
    "season_length",
]

EVENT_KINDS = ("view", "cart", "buy")
HALF_LIFE = 2.0
"""Periods after which a past period's migration weighs half as much in the forecast, when
no earlier forecast origin is left to choose it on."""
HALF_LIVES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
"""Half-lives the forecast chooses among on its validation origins: from nearly the last
period's migration alone (0.1: the pair before weighs 0.001) to a long memory. Without 0.1 and
0.25 the model lost to the last period at 3M events and more on the planted log (WAPE 0.150 vs
0.148 at 3M), where the last period's mix is nearly free of noise; with them it wins there
(0.148 vs 0.148) and on every smaller log, with a little less lead on some."""
VALIDATION_ORIGINS = 3
"""Earlier forecast origins on which each forecast's half-life is chosen."""
Z95 = 1.959963984540054


def season_length(period_ms: int) -> int | None:
    """Periods per season: a week of daily periods, a day of sub-daily ones, else None."""
    for cycle in (7 * DAY_MS, DAY_MS):
        if period_ms < cycle and cycle % period_ms == 0 and (cycle // period_ms) >= 2:
            if cycle == 7 * DAY_MS and period_ms < DAY_MS:
                continue  # hourly periods: the daily cycle is the stronger one
            return int(cycle // period_ms)
    return None


@dataclass(frozen=True)
class DemandSeries:
    """What the forecasts read, over the complete periods only.

    Attributes:
        periods: (T,) period indices of the log (consecutive complete periods).
        starts: (T,) ISO starts.
        counts: (T, K, 3) views, carts, buys.
        events: (T, K) events of every type (the interest shares).
        migration: (T - 1, K, K) ``sum_u a_{u,p}^T b_{u,p+1}`` of each consecutive pair.
        new_events: (T, K) events of users with no event in the period before (row 0: 0).
    """

    periods: np.ndarray
    starts: list[str]
    counts: np.ndarray
    events: np.ndarray
    migration: np.ndarray
    new_events: np.ndarray


def demand_series(log: PeriodLog, min_volume: float = 0.1) -> DemandSeries:
    """The per-period counts and user migration of the log's active complete periods.

    Args:
        log: The period log.
        min_volume: Periods at either end of the log with fewer events than this share of
            the busiest period's are its edges (a few users still arriving or leaving, as in
            the synthetic log's long tail), not demand to forecast; they are left out.
    """
    lo_active, hi_active = log.active_range(min_volume)
    edge = np.ones(log.n_periods, dtype=bool)
    edge[lo_active : hi_active + 1] = False
    complete = np.flatnonzero(log.complete & ~edge)
    if len(complete) == 0:
        lo, hi = 0, -1
    else:
        # The longest run of consecutive complete periods (normally all but the two ends).
        breaks = np.flatnonzero(np.diff(complete) > 1)
        runs = np.split(complete, breaks + 1)
        run = max(runs, key=len)
        lo, hi = int(run[0]), int(run[-1])
    n = hi - lo + 1
    k = log.n_categories
    starts_all = log.period_starts()
    funnel = log.funnel_counts()[lo : hi + 1]
    events = log.event_counts()[lo : hi + 1]
    inside = (log.period >= lo) & (log.period <= hi)
    user, period, cat = log.user[inside], log.period[inside] - lo, log.category[inside]
    n_users = int(log.user.max()) + 1
    # Per (user, period) category counts as a sparse matrix over rows r = user * n + period.
    rows = user * max(n, 1) + period
    m = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cat)), shape=(n_users * max(n, 1), k)
    )  # duplicates are summed
    m.sum_duplicates()
    totals = np.asarray(m.sum(axis=1)).ravel()
    active = totals > 0
    shares = sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=active)) @ m
    r = np.flatnonzero(active)
    r = r[(r % max(n, 1)) < n - 1]
    pair = r[active[r + 1]]  # rows whose user is active in the next period too
    migration = np.zeros((max(n - 1, 0), k, k))
    if len(pair):
        p_of = pair % n
        a = shares[pair]
        b = m[pair + 1]
        # One sparse product over all pairs: A's columns are (period, category).
        a_coo = a.tocoo()
        a_wide = sp.csr_matrix(
            (a_coo.data, (a_coo.row, p_of[a_coo.row] * k + a_coo.col)),
            shape=(len(pair), (n - 1) * k),
        )
        migration = np.asarray((a_wide.T @ b).todense()).reshape(n - 1, k, k)
    prev_active = np.zeros(len(totals), dtype=bool)
    shifted = np.flatnonzero(active)
    shifted = shifted[(shifted % n) < n - 1] + 1
    prev_active[shifted] = True
    is_new = ~prev_active[rows]
    is_new &= period > 0
    new_events = np.bincount(period[is_new] * k + cat[is_new], minlength=n * k).reshape(n, k)
    return DemandSeries(
        periods=np.arange(lo, hi + 1),
        starts=starts_all[lo : hi + 1],
        counts=funnel,
        events=events,
        migration=migration,
        new_events=new_events,
    )


def _normalise(rows: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    total = rows.sum(axis=-1, keepdims=True)
    return np.where(total > 0, rows / np.where(total > 0, total, 1.0), fallback)


def _model_forecast(
    series: DemandSeries, origin: int, horizon: int, funnel_prior: float, half_life: float
) -> np.ndarray:
    """(horizon, K, 3) forecasts of series positions ``origin .. origin + horizon - 1``.

    Only the periods before ``origin`` are read; period ``p``'s migration and new users weigh
    ``0.5 ** ((origin - 1 - p) / half_life)``, so the model follows a migration that changes.
    """
    hist_events = series.events[:origin].sum(axis=0).astype(float)
    pooled = hist_events / max(hist_events.sum(), 1.0)
    age = origin - 1 - np.arange(origin, dtype=float)  # (origin,) periods before the last
    weight = 0.5 ** (age / half_life)
    pairs = max(origin - 1, 0)  # migration[p] is the pair (p, p + 1), p + 1 < origin
    g = _normalise(np.tensordot(weight[1 : pairs + 1], series.migration[:pairs], axes=1), pooled)
    new = series.new_events[1:origin] * weight[1:origin, None]
    seen = (series.events[1:origin] * weight[1:origin, None]).sum()
    nu = new.sum() / max(seen, 1e-12) if origin > 1 else 0.0
    new_mix = _normalise(new.sum(axis=0).astype(float), pooled)
    share = _normalise(series.events[origin - 1].astype(float), pooled)
    hist = series.counts[:origin].sum(axis=0).astype(float)  # (K, 3)
    overall = hist.sum(axis=0) / max(hist_events.sum(), 1.0)  # (3,) per event
    rate = (hist + funnel_prior * overall) / (hist_events[:, None] + funnel_prior)  # (K, 3)
    totals = series.counts[origin - 1].sum(axis=0).astype(float)  # (3,)
    out = np.zeros((horizon, len(share), 3))
    for h in range(horizon):
        share = (1.0 - nu) * share @ g + nu * new_mix
        mix = _normalise((share[:, None] * rate).T, np.full(len(share), 1.0 / len(share))).T
        out[h] = mix * totals[None, :]
    return out


def choose_half_life(
    series: DemandSeries,
    steps: dict[tuple[float, int], np.ndarray],
    origin: int,
    candidates: tuple[float, ...] = HALF_LIVES,
    window: int = VALIDATION_ORIGINS,
) -> tuple[float, dict[float, float]]:
    """The half-life of the forecast from ``origin``, chosen on the origins before it.

    How fast the period migration should forget is what separates the model from the
    last-period baseline: a long memory averages out the noise of a stable mix (the default
    synthetic world), a short one follows a mix that shifts (a planted trend or a change of
    the switch matrix, where a half-life of 2 lost to the last period, WAPE 0.18 against 0.13
    at 10M events). So each forecast takes the candidate with the lowest WAPE of the one-step
    forecasts of the ``window`` origins before ``origin`` (a rolling validation inside the
    training range: nothing at or after ``origin`` is read); with no earlier origin it takes
    :data:`HALF_LIFE`.

    Args:
        series: The demand series.
        steps: ``(half_life, origin)`` -> (K, 3) one-step forecast, for every candidate and
            every origin in ``2 .. origin - 1``.
        origin: The forecast origin (series position of the first forecast period).
        candidates: Half-lives to choose among.
        window: Earlier origins to validate on.

    Returns:
        The chosen half-life and each candidate's validation WAPE (empty with no origin).
    """
    val = list(range(max(2, origin - window), origin))
    if not val:
        return (HALF_LIFE if HALF_LIFE in candidates else candidates[0]), {}
    y = series.counts[val].astype(float)
    scores = {
        h: forecast_errors(y, np.array([steps[(h, t)] for t in val]))["wape"] for h in candidates
    }
    # Ties (a log where every candidate forecasts alike) go to the first, the shortest memory.
    best = min(candidates, key=lambda h: np.nan_to_num(scores[h], nan=np.inf))
    return best, scores


def forecast_errors(actual: np.ndarray, forecast: np.ndarray) -> dict[str, float]:
    """WAPE and MAPE of forecasts (any matching shapes).

    Plus ``wape_<event>`` per event type when the last axis is the 3 event types.
    """
    y, f = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    pos = y > 0
    out = {
        "wape": float(np.abs(y - f).sum() / y.sum()) if y.sum() > 0 else float("nan"),
        "mape": float((np.abs(y - f)[pos] / y[pos]).mean()) if pos.any() else float("nan"),
    }
    if y.shape[-1] == len(EVENT_KINDS):
        for j, name in enumerate(EVENT_KINDS):
            yj, fj = y[..., j], f[..., j]
            out[f"wape_{name}"] = (
                float(np.abs(yj - fj).sum() / yj.sum()) if yj.sum() > 0 else float("nan")
            )
    return out


@dataclass(frozen=True)
class DemandResult:
    """Demand forecasts and their evaluation.

    Attributes:
        metrics: Method (``model``, ``last_period``, ``seasonal_naive``) -> WAPE, MAPE and
            WAPE per event type on the held-out periods (an unavailable baseline says why).
        coverage: Share of held-out cells inside the model's 95% interval.
        table: One row per (period, category, event type): ``kind`` (``holdout`` or
            ``forecast``), ``period``, ``start``, ``category``, ``event``, ``actual`` (NaN
            for the future), ``model``, ``low``, ``high``, ``last_period``,
            ``seasonal_naive``.
        info: Periods used, held out and forecast, season length, dispersions.
    """

    metrics: dict[str, dict[str, Any]]
    coverage: float
    table: pd.DataFrame
    info: dict[str, Any]


def demand_forecast(
    log: PeriodLog,
    holdout: int = 3,
    horizon: int = 2,
    funnel_prior: float = 50.0,
    half_life: float | None = None,
) -> DemandResult | str:
    """Backtest the model and the baselines, then forecast the next ``horizon`` periods.

    Args:
        log: The period log.
        holdout: Last complete periods forecast one step ahead and scored.
        horizon: Periods forecast after the log.
        funnel_prior: Pseudo-events pulling each category's event-type rates to the overall.
        half_life: Periods after which a past period's migration weighs half; None (the
            default) chooses it per forecast origin among :data:`HALF_LIVES` by the WAPE of
            the one-step forecasts of the :data:`VALIDATION_ORIGINS` origins before it (see
            :func:`choose_half_life`).

    Returns:
        The result, or a one-line reason when the log has too few complete periods (fewer
        than 3: two of history and one to hold out).
    """
    series = demand_series(log)
    n = len(series.periods)
    if n < 3:
        return (
            f"{n} complete period{'s' if n != 1 else ''}: demand needs 3 (two of history, "
            "one held out); pass a shorter --period"
        )
    holdout = max(1, min(holdout, n - 2))
    first_test = n - holdout
    season = season_length(log.period_ms)
    k = log.n_categories

    candidates = HALF_LIVES if half_life is None else (half_life,)
    # One-step forecasts of every origin under every candidate: the choices below read them.
    steps = {
        (h, t): _model_forecast(series, t, 1, funnel_prior, h)[0]
        for h in candidates
        for t in range(2, n)
    }
    chosen: dict[int, float] = {}
    validation: dict[int, dict[float, float]] = {}
    for t in range(2, n + 1):
        chosen[t], validation[t] = choose_half_life(series, steps, t, candidates)

    def one_step(origin: int) -> np.ndarray:
        return steps[(chosen[origin], origin)]

    # Dispersion from the rolling forecasts before the holdout (or the holdout itself when
    # there are none: flagged in ``info``).
    calib = list(range(2, first_test)) or list(range(first_test, n))
    phi = np.ones(3)
    for j in range(3):
        y = np.concatenate([series.counts[t, :, j] for t in calib]).astype(float)
        f = np.concatenate([one_step(t)[:, j] for t in calib])
        phi[j] = max(float(np.mean((y - f) ** 2 / np.maximum(f, 1.0))), 1.0)

    ids = np.asarray(log.category_ids)
    rows = []
    model, last, seasonal, actual = [], [], [], []
    for t in range(first_test, n):
        f = one_step(t)
        y = series.counts[t].astype(float)
        lp = series.counts[t - 1].astype(float)
        sn = series.counts[t - season].astype(float) if season and t - season >= 0 else None
        model.append(f)
        last.append(lp)
        actual.append(y)
        seasonal.append(sn)
        rows.append(("holdout", t, y, f, lp, sn))
    future = _model_forecast(series, n, horizon, funnel_prior, chosen[n])
    for h in range(horizon):
        t = n + h
        sn = series.counts[t - season].astype(float) if season and 0 <= t - season < n else None
        rows.append(("forecast", t, None, future[h], series.counts[n - 1].astype(float), sn))

    metrics: dict[str, dict[str, Any]] = {
        "model": forecast_errors(np.array(actual), np.array(model)),
        "last_period": forecast_errors(np.array(actual), np.array(last)),
    }
    if season is not None and all(s is not None for s in seasonal):
        metrics["seasonal_naive"] = forecast_errors(np.array(actual), np.array(seasonal))
    else:
        metrics["seasonal_naive"] = {
            "wape": None,
            "mape": None,
            "unavailable": (
                f"needs {season} periods of history before the first held-out period"
                if season
                else "no season for periods of a week or longer"
            ),
        }
    y_all, f_all = np.array(actual), np.array(model)
    half = Z95 * np.sqrt(phi[None, None, :] * f_all)
    coverage = float(np.mean((y_all >= f_all - half) & (y_all <= f_all + half)))

    records = []
    for kind, t, y, f, lp, sn in rows:
        start = (
            series.starts[t] if t < n else _future_start(log, int(series.periods[-1]) + (t - n + 1))
        )
        half_t = Z95 * np.sqrt(phi[None, :] * f)
        for c in range(k):
            for j, event in enumerate(EVENT_KINDS):
                records.append(
                    (
                        kind,
                        int(series.periods[0]) + t,
                        start,
                        ids[c],
                        event,
                        float("nan") if y is None else float(y[c, j]),
                        float(f[c, j]),
                        max(float(f[c, j] - half_t[c, j]), 0.0),
                        float(f[c, j] + half_t[c, j]),
                        float(lp[c, j]),
                        float("nan") if sn is None else float(sn[c, j]),
                    )
                )
    table = pd.DataFrame(
        records,
        columns=[
            "kind",
            "period",
            "start",
            "category",
            "event",
            "actual",
            "model",
            "low",
            "high",
            "last_period",
            "seasonal_naive",
        ],
    )
    info = {
        "complete_periods": n,
        "holdout_periods": holdout,
        "horizon": horizon,
        "season_length": season,
        "dispersion": dict(zip(EVENT_KINDS, phi.tolist(), strict=True)),
        "dispersion_from_holdout": not list(range(2, first_test)),
        # The half-life each held-out period's forecast used, chosen on the origins before it,
        # and the future's, chosen on the last VALIDATION_ORIGINS (the held-out ones).
        "half_life_holdout": [chosen[t] for t in range(first_test, n)],
        "half_life_future": chosen[n],
        "half_life_validation_wape": {str(h): w for h, w in validation[n].items()},
    }
    return DemandResult(metrics=metrics, coverage=coverage, table=table, info=info)


def _future_start(log: PeriodLog, period: int) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp((log.origin_ms + period * log.period_ms) / 1000, UTC)
    return moment.date().isoformat() if log.period_ms % DAY_MS == 0 else moment.isoformat()
