"""The readers' SQL expressions, run in DuckDB on values whose results are known by hand."""

from __future__ import annotations

import duckdb
import pytest

from rlrec.data.sql import (
    TIME_CLAMP_MS,
    TimeUnit,
    quote_ident,
    quote_str,
    time_bad_sql,
    time_sql,
)

# 2017-11-25 00:00:00 UTC.
DAY_S = 1_511_568_000


def scalar(sql: str, value: object, type_name: str) -> object:
    con = duckdb.connect()
    return con.execute(
        f"SELECT {sql} FROM (SELECT CAST(? AS {type_name}) AS x)", [value]
    ).fetchone()[0]


@pytest.mark.parametrize(
    ("value", "type_name", "unit", "numeric", "expected"),
    [
        (DAY_S, "BIGINT", "s", True, DAY_S * 1000),
        (DAY_S * 1000 + 7, "BIGINT", "ms", True, DAY_S * 1000 + 7),
        (1.5, "DOUBLE", "ms", False, 2),  # fractional ms round to the nearest
        (DAY_S + 0.25, "DOUBLE", "s", False, DAY_S * 1000 + 250),
        ("2017-11-25T00:00:00Z", "VARCHAR", "iso", False, DAY_S * 1000),
        ("2017-11-25 01:00:00+01:00", "VARCHAR", "iso", False, DAY_S * 1000),
        ("not a time", "VARCHAR", "iso", False, None),
        (float("nan"), "DOUBLE", "s", False, None),
        # Beyond the clamp, before the unit's scaling (int64 seconds would overflow it).
        (2**62, "BIGINT", "s", True, TIME_CLAMP_MS),
        (-(2**62), "BIGINT", "ms", True, -TIME_CLAMP_MS),
        (1e300, "DOUBLE", "s", False, TIME_CLAMP_MS),
    ],
)
def test_time_sql(
    value: object, type_name: str, unit: TimeUnit, numeric: bool, expected: int | None
) -> None:
    assert scalar(time_sql("x", unit, numeric), value, type_name) == expected


@pytest.mark.parametrize(
    ("value", "bad"), [("2017-11-25T00:00:00Z", False), ("25/11/2017 noon", True), (None, False)]
)
def test_time_bad_sql_flags_present_but_unparseable_times(value: str | None, bad: bool) -> None:
    assert scalar(time_bad_sql("x"), value, "VARCHAR") is bad


def test_quoting_survives_quotes_in_names_and_values() -> None:
    con = duckdb.connect()
    name, text = 'odd "column"', "it's"
    con.execute(f"CREATE TABLE t ({quote_ident(name)} VARCHAR)")
    con.execute(f"INSERT INTO t VALUES ({quote_str(text)})")
    assert con.execute(f"SELECT {quote_ident(name)} FROM t").fetchone() == (text,)
