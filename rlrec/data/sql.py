"""SQL building for the readers: quoting, DuckDB relations over CSV/Parquet, time and event codes.

:mod:`rlrec.data.readers` decides *what* a log's columns mean (its presets and column maps);
this module writes the DuckDB SQL that reads them: ``read_csv``/``read_parquet`` relations with
fixed types (and located variants that carry each row's file and line), and the expressions
that turn raw time and event values into the canonical ``ts``, ``time_bad`` and ``event``
columns. Everything here returns SQL text and runs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from rlrec.data.schema import EVENT_ALIASES, EVENT_CODE, EVENT_TYPES, NO_ITEM

__all__ = [
    "TIME_CLAMP_MS",
    "TimeUnit",
    "bad_value_sql",
    "base_exprs",
    "csv_relation",
    "event_code_int_sql",
    "event_code_sql",
    "file_list_sql",
    "mapped_exprs",
    "null_sql",
    "parquet_relation",
    "quote_ident",
    "quote_str",
    "time_bad_sql",
    "time_sql",
    "value_cast_sql",
    "value_sql",
]

TimeUnit = Literal["s", "ms", "iso"]
"""Unit of a raw time column: seconds or milliseconds since the epoch, or ISO strings."""

TIME_CLAMP_MS = 10**17
"""Numeric times beyond +-this many ms (year 3 million) are clamped to it before the unit's
scaling, which would overflow int64 otherwise; preparation then drops them as far-future
times (or refuses them as negative ones)."""


def quote_ident(name: str) -> str:
    """Quote a column name for SQL."""
    return '"' + name.replace('"', '""') + '"'


def quote_str(text: str) -> str:
    """Quote a string literal for SQL."""
    return "'" + text.replace("'", "''") + "'"


def event_code_sql(expr: str) -> str:
    """SQL mapping a raw event name (or code ``0``..``4``) to its code.

    NULL input -> view (0); an unknown name -> NULL (reported as an error).
    """
    codes = {str(code): name for code, name in enumerate(EVENT_TYPES)}
    names = {**{name: name for name in EVENT_TYPES}, **EVENT_ALIASES, **codes}
    cases = " ".join(f"WHEN {quote_str(raw)} THEN {EVENT_CODE[c]}" for raw, c in names.items())
    return (
        f"CAST(CASE WHEN {expr} IS NULL THEN 0 "
        f"ELSE CASE lower(trim(CAST({expr} AS VARCHAR))) {cases} END END AS TINYINT)"
    )


def event_code_int_sql(expr: str) -> str:
    """SQL keeping an integer event code ``0``..``4`` (NULL -> view; out of range -> NULL)."""
    last = len(EVENT_TYPES) - 1
    return (
        f"CAST(CASE WHEN {expr} IS NULL THEN 0 WHEN {expr} BETWEEN 0 AND {last} "
        f"THEN {expr} END AS TINYINT)"
    )


def file_list_sql(paths: Sequence[Path]) -> str:
    """A DuckDB list literal of the file paths."""
    return "[" + ", ".join(quote_str(str(p)) for p in paths) + "]"


def csv_relation(
    paths: Sequence[Path],
    delimiter: str,
    header: bool,
    types: Mapping[str, str],
    located: bool,
    nullstr: Sequence[str] = ("",),
) -> str:
    """A ``read_csv`` call with fixed column names and types (no type sniffing).

    Fixing the types makes a bad value fail with its line instead of turning a whole column
    into strings, and skips DuckDB's sniffing pass over the data.
    """
    cols = "{" + ", ".join(f"{quote_str(k)}: {quote_str(v)}" for k, v in types.items()) + "}"
    nulls = "[" + ", ".join(quote_str(s) for s in nullstr) + "]"
    call = (
        f"read_csv({file_list_sql(paths)}, delim={quote_str(delimiter)}, "
        f"header={str(header).lower()},"
        f" columns={cols}, nullstr={nulls}, quote='\"', escape='\"', auto_detect=false"
        f"{', filename=true' if located else ''})"
    )
    if not located:
        return call
    # One row per line in file order (the located query runs single-threaded); +1 for a header.
    offset = 1 if header else 0
    return (
        f"(SELECT *, filename AS _file, row_number() OVER (PARTITION BY filename) + {offset} "
        f"AS _line FROM {call})"
    )


def parquet_relation(paths: Sequence[Path], located: bool) -> str:
    """A ``read_parquet`` call; ``located`` adds ``_file`` and 1-based ``_line`` columns."""
    if not located:
        return f"read_parquet({file_list_sql(paths)})"
    return (
        f"(SELECT *, filename AS _file, file_row_number + 1 AS _line FROM "
        f"read_parquet({file_list_sql(paths)}, filename=true, file_row_number=true))"
    )


def null_sql(type_name: str) -> str:
    """A typed NULL (marks a canonical column the log does not have)."""
    return f"CAST(NULL AS {type_name})"


def base_exprs() -> dict[str, str]:
    """The optional canonical columns, all absent: a preset overrides the ones it reads."""
    return {
        "category": null_sql("VARCHAR"),
        "session": null_sql("VARCHAR"),
        "position": null_sql("INTEGER"),
        "propensity": null_sql("DOUBLE"),
        "reward": null_sql("DOUBLE"),
        "value": null_sql("DOUBLE"),
        "time_bad": "false",
        "category_bad": "false",
    }


def bad_value_sql(ok_sql: str, column: str) -> str:
    """A missing value or one failing ``ok_sql`` (``{c}``: the column)."""
    col = quote_ident(column)
    return f"{col} IS NULL OR NOT ({ok_sql.replace('{c}', col)})"


def time_sql(expr: str, unit: TimeUnit, numeric: bool) -> str:
    """SQL turning a raw time (``unit``; a number column or text) into ms, clamped."""
    if unit == "iso":
        return _iso_ms(expr)
    scale = 1000 if unit == "s" else 1
    limit = TIME_CLAMP_MS // scale
    if numeric:
        value = f"CAST({expr} AS BIGINT) * {scale}"
    else:
        value = f"CAST(round(CAST({expr} AS DOUBLE) * {scale}) AS BIGINT)"
    # Clamped before scaling: int64-max seconds would overflow the multiplication.
    nan = "" if numeric else f"WHEN isnan(CAST({expr} AS DOUBLE)) THEN NULL "
    return (
        f"(CASE {nan}WHEN {expr} > {limit} THEN {TIME_CLAMP_MS} "
        f"WHEN {expr} < -{limit} THEN -{TIME_CLAMP_MS} ELSE {value} END)"
    )


def _iso_ms(expr: str) -> str:
    """SQL: ms since the epoch of an ISO 8601 time (NULL when unparseable).

    Extended format (2019-11-24, with a time and an offset) or a basic-format date (20191124,
    as transaction logs such as CDNOW write it; UTC).
    """
    return (
        f"COALESCE(epoch_ms(TRY_CAST({expr} AS TIMESTAMPTZ)), "
        f"epoch_ms(TRY_STRPTIME(trim(CAST({expr} AS VARCHAR)), '%Y%m%d')))"
    )


def time_bad_sql(expr: str) -> str:
    """SQL true where an ISO time is present but unparseable."""
    return f"({expr} IS NOT NULL AND {_iso_ms(expr)} IS NULL)"


def value_cast_sql(expr: str, text: bool) -> str:
    """SQL casting a raw value column to DOUBLE, NULL where it is not a number.

    For text, ``trim`` first: DuckDB pushes a bare ``TRY_CAST`` of a CSV column into the
    reader as a strict conversion, which fails on the first bad row with a many-line error;
    a function in between keeps the try semantics, so the row checks can locate the row.
    """
    return f"TRY_CAST(trim({expr}) AS DOUBLE)" if text else f"TRY_CAST({expr} AS DOUBLE)"


def value_sql(expr: str, text: bool) -> str:
    """SQL reading a monetary value (a number or its text) as DOUBLE; NaN is missing (NULL).

    Text that is not a number becomes NULL here; the reader's row checks refuse it first.
    """
    value = value_cast_sql(expr, text)
    return f"(CASE WHEN isnan({value}) THEN NULL ELSE {value} END)"


def mapped_exprs(
    columns: dict[str, str], unit: TimeUnit, time_numeric: bool, event_is_code: bool
) -> dict[str, str]:
    """Canonical column -> SQL for a column-mapped (generic or canonical) log."""
    q = {name: quote_ident(col) for name, col in columns.items()}
    exprs = {
        **base_exprs(),
        "user": q["user"],
        # A log without items gets one placeholder item (see schema.NO_ITEM).
        "item": q["item"] if "item" in q else quote_str(NO_ITEM),
        "ts": time_sql(q["time"], unit, numeric=time_numeric),
        "event": "CAST(0 AS TINYINT)",
    }
    if unit == "iso":
        exprs["time_bad"] = time_bad_sql(q["time"])
    if "category" in q:
        exprs["category"] = q["category"]
    if "session" in q:
        exprs["session"] = q["session"]
    if "event" in q:
        exprs["event"] = (
            event_code_int_sql(q["event"]) if event_is_code else event_code_sql(q["event"])
        )
    for name, type_name in (
        ("position", "INTEGER"),
        ("propensity", "DOUBLE"),
        ("reward", "DOUBLE"),
    ):
        if name in q:
            exprs[name] = f"CAST({q[name]} AS {type_name})"
    if "value" in q:
        exprs["value"] = value_sql(q["value"], text=not time_numeric)
    return exprs
