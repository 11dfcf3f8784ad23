from __future__ import annotations

import numpy as np
import pytest

from rlrec.analytics.periods import DAY_MS, parse_period, period_log
from rlrec.errors import UserError
from tests.analytics.conftest import T0


def test_parse_period() -> None:
    assert parse_period("1d") == DAY_MS
    assert parse_period("1w") == 7 * DAY_MS
    assert parse_period("12h") == DAY_MS // 2
    for bad in ("soon", "0d", "-1d", ""):
        with pytest.raises(UserError, match="--period"):
            parse_period(bad)


def _days(n_days: int, n_users: int = 20, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n = n_users * n_days * 3
    user = rng.integers(0, n_users, n)
    ts = T0 + rng.integers(0, n_days * DAY_MS, n)
    return user, rng.integers(0, 3, n), ts


def test_periods_are_calendar_days_with_edges_marked(make_log) -> None:
    user, cat, ts = _days(6)
    ds = make_log(user, cat, ts + 3_600_000)  # starts at 01:00: the first day is cut
    log = period_log(ds, DAY_MS)
    assert log.origin_ms == T0 and log.n_periods == 7
    assert log.period_starts()[:2] == ["2017-11-25", "2017-11-26"]
    assert not log.complete[0] and log.complete[1:-1].all() and not log.complete[-1]
    assert log.event_counts().sum() == len(user)
    # The last period holds one hour of events: under 10% of the busiest, an edge.
    assert log.active_range() == (0, 5)


def test_switches_are_category_changes_inside_sessions(make_log) -> None:
    # One user, one day: categories 0 0 1 2 2 -> switches 0->1, 1->2.
    ts = T0 + np.arange(5) * 60_000
    ds = make_log(np.zeros(5, dtype=int), np.array([0, 0, 1, 2, 2]), ts)
    log = period_log(ds, 60_000)  # 1-minute periods: 5 of them
    index, cur, nxt = log.switches()
    ids = np.asarray(log.category_ids)  # folded: ordered by steps, most first
    assert ids[cur].tolist() == ["c0", "c1"] and ids[nxt].tolist() == ["c1", "c2"]
    assert index.tolist() == [2, 3]


@pytest.mark.parametrize(
    ("period", "needle"),
    [("30d", "shorter than the period"), ("3d", "needs at least 4")],
)
def test_too_few_periods_are_refused(make_log, period: str, needle: str) -> None:
    user, cat, ts = _days(6)
    ds = make_log(user, cat, ts)
    with pytest.raises(UserError, match=needle) as info:
        period_log(ds, parse_period(period))
    assert "--period" in str(info.value) and "\n" not in str(info.value)


def test_a_log_without_categories_is_refused(make_log) -> None:
    user, _, ts = _days(6)
    ds = make_log(user, np.zeros(len(user), dtype=int), ts, categories=["__unknown__"])
    with pytest.raises(UserError, match="--derive-categories"):
        period_log(ds, DAY_MS)
