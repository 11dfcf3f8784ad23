"""Time-based train / valid / test split by global cut-offs (no leakage from the future).

The cut-offs are quantiles of all kept events' timestamps: with fractions ``(0.8, 0.1, 0.1)``
``valid_start`` is the 80% quantile and ``test_start`` the 90% quantile. An event belongs to

* ``train`` if ``ts < valid_start``,
* ``valid`` if ``valid_start <= ts < test_start``,
* ``test`` if ``ts >= test_start``,

so every train event is earlier than every valid or test event, and every valid event earlier
than every test event. Cut-offs are actual event times (the discrete, inverted-CDF quantile:
the smallest time with at least that share of events at or before it), so they are
reproducible and easy to read in ``meta.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import duckdb

from rlrec.errors import UserError

__all__ = [
    "check_fractions",
    "split_code_sql",
    "time_cutoffs",
]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, valid, test)`` fractions: three non-negative numbers summing to 1.

    Raises:
        UserError: Otherwise.
    """
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or not math.isclose(sum(values), 1.0):
        raise UserError(
            f"split fractions {list(fractions)}: expected three non-negative numbers "
            "(train, valid, test) that sum to 1, e.g. 0.8,0.1,0.1"
        )
    if values[0] == 0:
        raise UserError("split fractions: the train fraction must be above 0")
    return values[0], values[1], values[2]


def time_cutoffs(
    con: duckdb.DuckDBPyConnection, table: str, fractions: Sequence[float]
) -> tuple[int, int]:
    """Global cut-offs ``(valid_start, test_start)`` in ms from the ``ts`` column of ``table``.

    An empty valid (test) fraction puts its cut-off after the last event, so that split
    gets no events.
    """
    train, valid, _ = check_fractions(fractions)
    row = con.execute(
        f"SELECT quantile_disc(ts, {train}), quantile_disc(ts, {min(train + valid, 1.0)}), "
        f"max(ts) FROM {table}"
    ).fetchall()[0]
    assert row is not None and row[2] is not None, "time_cutoffs needs a non-empty table"
    last = int(row[2])
    valid_start = int(row[0]) if train < 1.0 else last + 1
    test_start = int(row[1]) if train + valid < 1.0 - 1e-12 else last + 1
    return valid_start, max(valid_start, test_start)


def split_code_sql(valid_start: int, test_start: int, ts: str = "ts") -> str:
    """SQL giving the split code (0 train, 1 valid, 2 test) of a timestamp column."""
    return (
        f"CAST(CASE WHEN {ts} < {int(valid_start)} THEN 0 "
        f"WHEN {ts} < {int(test_start)} THEN 1 ELSE 2 END AS TINYINT)"
    )
