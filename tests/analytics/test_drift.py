from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrec.analytics.drift import (
    MigrationMatrix,
    SwitchUnits,
    change_points,
    migration_drift,
    period_switch_counts,
    total_variation,
)
from rlrec.analytics.periods import DAY_MS, period_log
from rlrec.data import load_dataset


def _random_chain(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.random((k, k)) ** 3
    np.fill_diagonal(m, 0.0)
    return m / m.sum(axis=1, keepdims=True)


def _counts(matrices: list[np.ndarray], per_row: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([rng.multinomial(per_row, row) for row in m]) for m in matrices])


def test_total_variation() -> None:
    a = np.array([[0, 4, 0], [2, 0, 2], [0, 0, 0]], dtype=float)
    b = np.array([[0, 0, 4], [2, 0, 2], [5, 5, 0]], dtype=float)
    # Row 0 moves all its mass (TV 1), row 1 none, row 2 has no switches in a (no weight).
    assert total_variation(a, b) == pytest.approx(8 / 16)
    assert total_variation(a, a) == 0.0


def test_change_point_found_where_the_matrix_changes_and_not_elsewhere() -> None:
    before, after = _random_chain(6, 0), _random_chain(6, 1)
    counts = _counts([before] * 6 + [after] * 5, per_row=300, seed=2)
    result = change_points(counts, permutations=199, seed=0)
    assert result.periods == [6]
    assert result.stationarity_p <= 0.01
    stationary = change_points(_counts([before] * 11, 300, 3), permutations=199, seed=0)
    assert stationary.periods == [] and stationary.stationarity_p > 0.01


def _user_switches(
    matrices: dict[tuple[int, int], np.ndarray], per_unit: int, seed: int
) -> tuple[np.ndarray, ...]:
    """Switch arrays of one session per (user, period) key, ``per_unit`` switches each.

    Each session walks the chain of its key's matrix from a uniform start.

    Returns:
        ``period``, ``current``, ``following``, ``session`` and ``user`` per switch.
    """
    rng = np.random.default_rng(seed)
    columns: list[list[int]] = [[], [], [], [], []]
    for session, ((user, period), m) in enumerate(sorted(matrices.items(), key=lambda x: x[0])):
        c = int(rng.integers(len(m)))
        for _ in range(per_unit):
            nxt = int(rng.choice(len(m), p=m[c]))
            for column, value in zip(columns, (period, c, nxt, session, user), strict=True):
                column.append(value)
            c = nxt
    return tuple(np.asarray(column, dtype=np.int64) for column in columns)


def test_within_user_test_finds_a_change_in_nine_periods_where_period_shuffles_cannot() -> None:
    before, after = _random_chain(5, 10), _random_chain(5, 11)
    matrices = {(u, t): before if t < 5 else after for u in range(150) for t in range(9)}
    period, cur, nxt, session, user = _user_switches(matrices, per_unit=6, seed=12)
    counts = period_switch_counts(period, cur, nxt, 9, 5)
    units = SwitchUnits.from_switches(period, cur, nxt, session, user, 5)
    found = change_points(counts, permutations=199, seed=0, units=units)
    assert found.periods == [5] and found.stationarity_p <= 0.01
    # Shuffling whole periods: a p-value floor of 2 / C(9, 4) = 0.016, whatever the evidence.
    by_period = change_points(counts, permutations=199, seed=0)
    assert by_period.periods == [] and by_period.stationarity_p > 0.01
    whole = found.tests[(found.tests["start"] == 0) & (found.tests["stop"] == 9)]
    assert by_period.tests["statistic"].iloc[0] == pytest.approx(whole["statistic"].iloc[0])


def test_within_user_test_ignores_a_change_of_which_users_are_active() -> None:
    # Two kinds of users with their own (stationary) chains; the first kind leaves after
    # period 5, the second arrives at period 3: the pooled matrix moves, no user's does.
    a, b = _random_chain(5, 20), _random_chain(5, 21)
    matrices = {(u, t): a for u in range(120) for t in range(6)}
    matrices |= {(u, t): b for u in range(120, 240) for t in range(3, 9)}
    period, cur, nxt, session, user = _user_switches(matrices, per_unit=6, seed=22)
    counts = period_switch_counts(period, cur, nxt, 9, 5)
    units = SwitchUnits.from_switches(period, cur, nxt, session, user, 5)
    result = change_points(counts, permutations=199, seed=0, units=units)
    assert result.periods == [] and result.stationarity_p > 0.01
    with pytest.raises(ValueError, match="add up"):
        change_points(counts[:-1], units=units)


def test_migration_matrix_stationary_distribution_and_mixing() -> None:
    counts = _counts([_random_chain(5, 4)], per_row=2000, seed=5)[0].astype(float)
    m = MigrationMatrix(tuple(f"c{i}" for i in range(5)), counts)
    pi = m.stationary_distribution()
    assert np.allclose(pi @ m.matrix, pi) and pi.sum() == pytest.approx(1.0)
    t = m.mixing_time()
    assert t is not None and t >= 1
    lazy = 0.5 * (np.eye(5) + m.matrix)
    walked = np.linalg.matrix_power(lazy, t)
    assert 0.5 * np.abs(walked - pi).sum(axis=1).max() <= 0.25
    before = np.linalg.matrix_power(lazy, t - 1)
    assert t == 1 or 0.5 * np.abs(before - pi).sum(axis=1).max() > 0.25
    flows = m.flows()
    assert flows["net"].sum() == pytest.approx(0.0, abs=1e-12)
    assert set(flows["role"]) <= {"feeder", "drain", "balanced"}
    top = m.top_transitions(3)
    assert list(top["count"]) == sorted(counts.ravel())[::-1][:3]


def test_planted_change_point_within_one_period(planted_change: Path) -> None:
    log = period_log(load_dataset(planted_change), DAY_MS)
    index, cur, nxt = log.switches()
    starts = log.period_starts()
    drift = migration_drift(
        log.period[index],
        cur,
        nxt,
        log.session[index],
        log.category_ids,
        starts,
        bootstrap=20,
        user=log.user[index],
    )
    truth = json.loads((planted_change / "ground_truth.json").read_text())
    true_period = (truth["planted"]["change_point"]["time_ms"] - log.origin_ms) // DAY_MS
    found = drift.change_points.periods
    assert found, drift.change_points.tests
    assert min(abs(p - true_period) for p in found) <= 1, (found, true_period)
    # The bootstrap interval holds the estimate.
    d = drift.distance.dropna()
    assert ((d["tv_low"] <= d["tv"] + 1e-9) & (d["tv"] <= d["tv_high"] + 1e-9)).mean() > 0.8


def test_too_few_permutations_for_alpha_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 100"):
        change_points(np.ones((4, 2, 2)), alpha=0.01, permutations=99)
