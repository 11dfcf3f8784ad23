"""Calibration statistics on hand-made logs whose steps, streaks and rates are counted by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rlrec.data.schema import EVENT_CODE
from rlrec.models.calibration import (
    SESSION_GAP_MS,
    collapse_steps,
    log_statistics,
    run_positions,
    streak_lengths,
)


def test_collapse_steps_merges_same_item_runs_inside_a_session() -> None:
    # Session 0: item 5 (view, cart), 6 (view), 5 (buy); session 1: item 7 (view, fav).
    codes = [EVENT_CODE[e] for e in ("view", "cart", "view", "buy", "view", "fav")]
    steps = collapse_steps(
        np.array([0, 0, 0, 0, 1, 1]),
        np.array([5, 5, 6, 5, 7, 7]),
        np.array([1, 1, 1, 1, 2, 2]),
        np.array(codes),
    )
    np.testing.assert_array_equal(steps["session"], [0, 0, 0, 1])
    np.testing.assert_array_equal(steps["item"], [5, 6, 5, 7])
    np.testing.assert_array_equal(steps["category"], [1, 1, 1, 2])
    np.testing.assert_array_equal(steps["cart"], [True, False, True, False])  # a buy is a cart
    np.testing.assert_array_equal(steps["buy"], [False, False, True, False])
    np.testing.assert_array_equal(steps["fav"], [False, False, False, True])
    np.testing.assert_array_equal(steps["offsets"], [0, 3, 4])


def test_collapse_steps_splits_the_same_item_across_sessions() -> None:
    steps = collapse_steps(
        np.array([0, 1]), np.array([9, 9]), np.array([0, 0]), np.zeros(2, dtype=np.int8)
    )
    np.testing.assert_array_equal(steps["offsets"], [0, 1, 2])


def test_collapse_steps_of_no_events() -> None:
    empty = np.zeros(0, dtype=np.int64)
    steps = collapse_steps(empty, empty, empty, empty.astype(np.int8))
    assert all(len(steps[k]) == 0 for k in ("session", "item", "category", "cart", "buy", "fav"))
    np.testing.assert_array_equal(steps["offsets"], [0])


@pytest.mark.parametrize(
    ("offsets", "category", "expected"),
    [
        ([0, 2, 5], [1, 1, 2, 2, 2], [2, 3]),
        # A category that continues over a session boundary starts a new streak there.
        ([0, 2, 4], [1, 1, 1, 2], [2, 1, 1]),
        ([0, 1, 2, 3], [4, 4, 4], [1, 1, 1]),
        ([0], [], []),
    ],
)
def test_streak_lengths(offsets: list[int], category: list[int], expected: list[int]) -> None:
    runs = streak_lengths(np.array(offsets), np.array(category, dtype=np.int64))
    np.testing.assert_array_equal(runs, expected)


def test_run_positions() -> None:
    start, position = run_positions(np.array([True, False, False, True, False, True]))
    np.testing.assert_array_equal(start, [0, 0, 0, 3, 3, 5])
    np.testing.assert_array_equal(position, [1, 2, 3, 1, 2, 1])


def hand_log(second_session_gap_ms: int) -> pd.DataFrame:
    """User a: x, x, y, x, z (categories A A A A B), then x after ``second_session_gap_ms``."""
    times = [0, 1_000, 2_000, 3_000, 4_000, 4_000 + second_session_gap_ms]
    return pd.DataFrame(
        {
            "user": ["a"] * 6,
            "item": ["x", "x", "y", "x", "z", "x"],
            "time": times,
            "category": ["A", "A", "A", "A", "B", "A"],
            "event": ["view", "cart", "view", "view", "view", "view"],
        }
    )


def test_log_statistics_on_a_hand_counted_log() -> None:
    stats = log_statistics(hand_log(SESSION_GAP_MS + 1))
    # Steps: session 1 is x(A) y(A) x(A) z(B), session 2 is x(A).
    np.testing.assert_array_equal(stats["session_length"], [4, 1])
    np.testing.assert_array_equal(stats["streak_length"], [3, 1, 1])
    # Pairs in session 1: x->y stays (streak 1), y->x stays (streak 2), x->z switches (3).
    assert stats["continuation_rate"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(stats["stay_by_streak"], [1, 1, 0, 0, 0, 0, 0, 0])
    # One revisit (x again in session 1) among the 3 steps after the sessions' first ones.
    assert stats["revisit_rate"] == pytest.approx(1 / 3)
    assert stats["event_mix"] == pytest.approx({"view": 5 / 6, "cart": 1 / 6})
    assert stats["events_per_session"] == 3.0


def test_log_statistics_cuts_sessions_only_beyond_the_gap() -> None:
    stats = log_statistics(hand_log(SESSION_GAP_MS))
    # A gap of exactly 30 minutes keeps one session: x y x z x, the last x a second revisit.
    np.testing.assert_array_equal(stats["session_length"], [5])
    assert stats["revisit_rate"] == pytest.approx(2 / 4)


def test_log_statistics_refuses_unknown_events() -> None:
    frame = hand_log(SESSION_GAP_MS + 1)
    frame.loc[0, "event"] = "hover"
    with pytest.raises(ValueError, match="hover"):
        log_statistics(frame)
