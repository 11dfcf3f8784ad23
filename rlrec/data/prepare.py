"""Preparation: raw event log -> PreparedDataset, out of core with DuckDB.

The pipeline (all in DuckDB, which spills to disk past its memory limit, so a 100M-row log
needs no more memory than a 1M-row one):

1. **read** the log through its preset (:mod:`rlrec.data.readers`) into canonical columns;
2. **validate** (:mod:`rlrec.data.validate`): no rows, unknown event types, unparseable or
   negative timestamps, a column with no ids at all -> one-line :class:`UserError`;
3. **drop** rows, counting each reason: a missing user / item / time / session id, exact
   duplicates, items below ``min_item_count``;
4. **sessionize** (:mod:`rlrec.data.sessionize`) by session id or inactivity gap, and tag
   each event with its **split** (:mod:`rlrec.data.split`); a session that straddles a cut-off
   becomes two; sessions shorter than ``min_session_length`` are dropped (counted);
5. **vocabularies**: contiguous indices for users, items and categories (raw ids kept), and
   optionally categories derived from co-occurrence (:mod:`rlrec.data.categories`);
6. **write** ``events.parquet`` sorted by (session, step) and the vocabulary tables with
   ``COPY ... TO``, then ``meta.json`` last, inside :func:`atomic_directory`.

Row accounting: ``rows.read == rows.kept + sum(rows.dropped.values())`` always holds and is
checked before anything is written.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from rlrec import __version__
from rlrec.config import to_mapping
from rlrec.data import validate
from rlrec.data.categories import cooccurrence_categories
from rlrec.data.dataset import META_FILE, atomic_directory, write_json_atomic
from rlrec.data.readers import ReadOptions, Source, open_source
from rlrec.data.schema import (
    EVENT_TYPES,
    OPTIONAL_EVENT_COLUMNS,
    SCHEMA_VERSION,
    SPLITS,
    UNKNOWN_CATEGORY,
)
from rlrec.data.sessionize import (
    collect_sessions,
    flag_events,
    number_events,
    number_sessions,
    sort_events,
    sort_order,
)
from rlrec.data.split import check_fractions, split_code_sql, time_cutoffs
from rlrec.data.sql import quote_ident, quote_str
from rlrec.errors import UserError, quote_value
from rlrec.fsutil import check_output, make_parent, output_lock

__all__ = [
    "DERIVED_CATEGORY_PREFIX",
    "DROP_REASONS",
    "FUTURE_MARGIN_MS",
    "STAGES",
    "PrepareConfig",
    "prepare",
]

DROP_REASONS: tuple[str, ...] = (
    "missing_user_id",
    "missing_item_id",
    "missing_timestamp",
    "future_timestamp",
    "missing_session_id",
    "exact_duplicate",
    "min_item_count",
    "min_session_length",
)
"""Reasons a row can be dropped, in the order they are applied; all appear in ``meta.json``."""

FUTURE_MARGIN_MS = 86_400_000
"""Events later than the time of preparation plus this (a day, for clock skew) are dropped
as ``future_timestamp``: otherwise the time split would make them the test split."""

STAGES: tuple[str, ...] = ("read", "validate", "sessionize", "vocabulary", "write")
"""Stages reported to :func:`prepare`'s ``progress`` callback, in order."""

DERIVED_CATEGORY_PREFIX = "cooc-"
"""Raw id prefix of categories derived from co-occurrence (``cooc-0`` is the largest)."""


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of :func:`prepare`.

    Attributes:
        session_gap_seconds: Inactivity gap that starts a new session, in seconds (used only
            when the log has no session id). A gap of exactly this length does not cut.
        min_item_count: Drop events of items with fewer events (after deduplication);
            0 keeps everything.
        min_session_length: Drop sessions with fewer events (after the split cut).
        split_fractions: ``(train, valid, test)`` shares of events by global time quantile.
        derive_categories: Replace the categories by communities of item co-occurrence in
            train sessions (for logs without categories, e.g. DIGINETICA).
        derived_max_categories: At most this many derived categories (the largest).
        derived_min_size: Derived communities with fewer items get the unknown category.
        seed: Seed of the category derivation.
        threads: DuckDB worker threads.
        memory_limit_mb: DuckDB memory limit; past it DuckDB spills to a temporary folder
            beside the output.
    """

    session_gap_seconds: float = 1800.0
    min_item_count: int = 0
    min_session_length: int = 1
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    derive_categories: bool = False
    derived_max_categories: int = 200
    derived_min_size: int = 2
    seed: int = 0
    threads: int = 2
    memory_limit_mb: int = 2048

    def __post_init__(self) -> None:
        if self.session_gap_seconds <= 0:
            raise UserError(
                f"session gap {self.session_gap_seconds}s: expected a positive duration"
            )
        if self.min_item_count < 0 or self.min_session_length < 1:
            raise UserError("min_item_count must be >= 0 and min_session_length >= 1")
        if self.threads < 1 or self.memory_limit_mb < 64:
            raise UserError("threads must be >= 1 and memory_limit_mb >= 64")
        check_fractions(self.split_fractions)


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    preset: str,
    out: str | os.PathLike[str],
    config: PrepareConfig = PrepareConfig(),  # frozen, so a shared default is safe
    columns: Mapping[str, str] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    read_options: ReadOptions | None = None,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
    inputs_label: Sequence[str] | None = None,
) -> Path:
    """Prepare event logs into a PreparedDataset directory at ``out``.

    Args:
        inputs: Log files (CSV or Parquet) in the preset's format.
        preset: One of :data:`rlrec.data.readers.PRESETS`.
        out: Output directory; an existing dataset there is replaced (atomically) only with
            ``force``, anything else never (:func:`rlrec.fsutil.check_output`).
        config: Preparation settings.
        columns: For the ``generic`` preset: canonical field -> column.
        extra_files: Files (name -> content) written into the dataset directory, e.g. the
            synthetic generator's ground truth.
        read_options: Time unit, delimiter and header for ``generic`` (overrides for others).
        progress: Called with the name of each stage as it starts (see :data:`STAGES`); the
            CLI draws a progress bar with it.
        force: Replace an existing dataset at ``out``.
        inputs_label: What ``meta.json`` records as the inputs instead of ``inputs`` (the
            synthetic generator's temporary file is gone once the dataset exists).

    Returns:
        The dataset directory.

    Raises:
        UserError: On any problem with the inputs or the settings.
    """
    started = time.perf_counter()
    paths = [Path(p) for p in inputs]
    final = Path(out)
    make_parent(final)
    if not os.access(final.parent, os.W_OK):
        raise UserError(f"{final}: its folder is not writable; choose another --out")
    for name in extra_files or {}:
        if name in (META_FILE, "events.parquet", "users.parquet", "items.parquet") or "/" in name:
            raise ValueError(f"extra file name {name!r} would clash with the dataset's files")
    # One writer per output, checked before any reading: a second one fails at once, and the
    # spill folder of a killed earlier run is removed under the lock.
    with output_lock(final):
        check_output(final, "dataset", force)
        return _prepare_locked(
            paths,
            preset,
            final,
            config,
            columns,
            extra_files,
            read_options,
            progress,
            force,
            started,
            inputs_label,
        )


def _prepare_locked(
    paths: list[Path],
    preset: str,
    final: Path,
    config: PrepareConfig,
    columns: Mapping[str, str] | None,
    extra_files: Mapping[str, bytes] | None,
    read_options: ReadOptions | None,
    progress: Callable[[str], None] | None,
    force: bool,
    started: float,
    inputs_label: Sequence[str] | None,
) -> Path:
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.spill-", dir=final.parent) as spill:
        con = duckdb.connect()
        try:
            _configure(con, config, Path(spill))
            source = open_source(con, paths, preset, columns, read_options)
            if config.derive_categories and not source.has_items:
                raise UserError(
                    "--derive-categories clusters items, and this log has none (no item= in "
                    "--columns); drop --derive-categories or map an item column"
                )
            with atomic_directory(final, "dataset", force) as tmp:
                meta = _run(con, source, config, tmp, progress or _silent)
                if inputs_label is not None:
                    meta["source"]["inputs"] = list(inputs_label)
                for name, blob in (extra_files or {}).items():
                    (tmp / name).write_bytes(blob)
                meta["prepare_seconds"] = round(time.perf_counter() - started, 3)
                # meta.json last: its presence is what makes the directory a dataset.
                write_json_atomic(tmp / META_FILE, meta)
        finally:
            con.close()
    return final


def _configure(con: duckdb.DuckDBPyConnection, config: PrepareConfig, spill: Path) -> None:
    con.execute(f"SET threads = {int(config.threads)}")
    con.execute(f"SET memory_limit = '{int(config.memory_limit_mb)}MB'")
    con.execute(f"SET temp_directory = {quote_str(str(spill))}")
    # Row order is fixed explicitly where it matters (ORDER BY); letting DuckDB drop
    # insertion order elsewhere lets it stream and parallelize.
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    # ISO times without an offset (and dates) are UTC, whatever the machine's time zone.
    con.execute("SET TimeZone = 'UTC'")


def _silent(stage: str) -> None:
    """The default progress callback: report nothing."""


def _run(
    con: duckdb.DuckDBPyConnection,
    source: Source,
    config: PrepareConfig,
    tmp: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    label = ", ".join(str(p) for p in source.files)
    by_session_id = source.has("session")
    # Only the columns the log has: every column is carried through the sort.
    carried = ["user", "item", "event", "ts"] + [
        c for c in ("category", "session", *source.optional_columns) if source.has(c)
    ]
    # The log is read straight into sessionization order: one pass instead of read + sort.
    progress("read")
    _materialize(con, source, sort_order(carried, by_session_id))
    progress("validate")
    future_cutoff = int(time.time() * 1000) + FUTURE_MARGIN_MS
    counts = _source_counts(con, future_cutoff)
    rows_read = counts["rows"]
    validate.check_data_rows(label, rows_read)
    _check_source(con, source, counts, label)
    _check_rows(con, source)

    dropped = dict.fromkeys(DROP_REASONS, 0)
    dropped["missing_user_id"] = counts["no_user"]
    dropped["missing_item_id"] = counts["no_item"]
    dropped["missing_timestamp"] = counts["no_ts"]
    dropped["future_timestamp"] = counts["future"]
    if by_session_id:
        dropped["missing_session_id"] = counts["no_session"]
    present = counts["rows"] - sum(dropped.values())
    if present == 0 and counts["future"]:
        raise UserError(
            f"{label}: every timestamp with an id lies in the future (after "
            f"{_iso(future_cutoff)}); check --time-unit (s or ms) and the time column"
        )
    if present == 0:
        raise UserError(
            f"{label}: every row lacks a user, item, time or session id; "
            "check --columns and the file's contents"
        )

    session_filter = " AND session IS NOT NULL" if by_session_id else ""
    present_filter = (
        f"user IS NOT NULL AND item IS NOT NULL AND ts IS NOT NULL AND ts <= {future_cutoff}"
        f"{session_filter}"
    )
    gap_ms = None if by_session_id else round(config.session_gap_seconds * 1000)
    if config.min_item_count > 0:
        # Item counts are over distinct events, so deduplicate before counting.
        con.execute(
            f"CREATE TABLE clean AS SELECT DISTINCT {', '.join(carried)} FROM src "
            f"WHERE {present_filter}"
        )
        con.execute("DROP TABLE src")
        n_clean = _scalar(con, "SELECT count(*) FROM clean")
        dropped["exact_duplicate"] = present - n_clean
        con.execute(
            "DELETE FROM clean WHERE item IN (SELECT item FROM clean GROUP BY item "
            f"HAVING count(*) < {int(config.min_item_count)})"
        )
        remaining = _scalar(con, "SELECT count(*) FROM clean")
        dropped["min_item_count"] = n_clean - remaining
        if remaining == 0:
            raise UserError(f"--min-item-count {config.min_item_count} drops every event; lower it")
        base, base_filter, presorted = "clean", "true", False
    else:
        base, base_filter, presorted = "src", present_filter, True
    progress("sessionize")
    dropped["exact_duplicate"] += flag_events(
        con, base, "flagged", carried, gap_ms, base_filter, presorted=presorted
    )
    con.execute(f"DROP TABLE {base}")

    valid_start, test_start = time_cutoffs(
        con, "(SELECT ts FROM flagged WHERE NOT dup)", config.split_fractions
    )
    cuts = number_events(
        con, "flagged", "sessd", lambda ts: split_code_sql(valid_start, test_start, ts)
    )
    con.execute("DROP TABLE flagged")
    n_sessions, short_events = collect_sessions(
        con, "sessd", "kept_sessions", config.min_session_length
    )
    dropped["min_session_length"] = short_events
    if n_sessions == 0:
        raise UserError(
            f"--min-session-length {config.min_session_length} drops every session; lower it"
        )
    if short_events:
        con.execute(
            "CREATE OR REPLACE TABLE sessd AS SELECT e.* FROM sessd e "
            "SEMI JOIN kept_sessions k ON e.sess = k.sess"
        )

    progress("vocabulary")
    _vocab(con, "users", "SELECT user AS raw, count(*) AS count FROM kept_sessions GROUP BY user")
    number_sessions(con, "kept_sessions", "users", "sessions")
    _vocab(con, "items", "SELECT item AS raw, count(*) AS count FROM sessd GROUP BY item")
    category_source = _categories(con, config)

    kept = _scalar(con, "SELECT count(*) FROM sessd")
    if kept + sum(dropped.values()) != rows_read:  # a bug, not a user error
        raise AssertionError(f"row accounting broken: {kept} + {dropped} != {rows_read}")

    progress("write")
    _write_tables(con, source, tmp)
    split_rows = con.execute(
        "SELECT split, count(*), sum(n) FROM sessions GROUP BY split ORDER BY split"
    ).fetchall()
    per_split = {name: {"events": 0, "sessions": 0} for name in SPLITS}
    for code, n_sess, n_events in split_rows:
        per_split[SPLITS[code]] = {"events": int(n_events), "sessions": int(n_sess)}
    span = con.execute("SELECT min(ts), max(ts) FROM sessd").fetchall()[0]
    assert span is not None
    no_category = _scalar(
        con, f"SELECT sum(n) FROM ev_cat WHERE raw = {quote_str(UNKNOWN_CATEGORY)}"
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "rlrec_version": __version__,
        "source": {
            "preset": source.preset,
            "inputs": [str(p) for p in source.files],
            **source.notes,
        },
        "config": to_mapping(config),
        "rows": {"read": rows_read, "kept": kept, "dropped": dropped},
        "sessionized_by": "session_id" if by_session_id else "inactivity_gap",
        "session_gap_seconds": None if by_session_id else config.session_gap_seconds,
        "sessions_cut_at_split": cuts,
        "split": {
            "fractions": list(config.split_fractions),
            "cutoffs_ms": {"valid": valid_start, "test": test_start},
            **per_split,
        },
        "category_source": category_source,
        "events_with_unknown_category": no_category,
        # Rows read whose category value was absent or not an id: such events get the
        # unknown category; counted so that a wrong column shows up.
        "category_values": (
            {"missing": counts["no_category"], "unparseable": counts["bad_category"]}
            if source.has("category")
            else None
        ),
        "future_cutoff_ms": future_cutoff,
        "time_range_ms": [int(span[0]), int(span[1])],
        "event_types": list(EVENT_TYPES),
        "optional_columns": list(source.optional_columns),
        # What the log has: stages that need items or categories check these
        # (rlrec.data.content); a dataset prepared before they existed has items.
        "content": {
            "items": source.has_items,
            "categories": source.has_items and category_source != "none",
            "value": "value" in source.optional_columns,
        },
        **({"value": _value_summary(con)} if "value" in source.optional_columns else {}),
        "vocab": {
            "users": _scalar(con, "SELECT count(*) FROM users"),
            "items": _scalar(con, "SELECT count(*) FROM items"),
            "categories": _scalar(con, "SELECT count(*) FROM categories"),
            "sessions": n_sessions,
        },
    }


_READ_ERRORS = (
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.OutOfRangeException,
    duckdb.NotImplementedException,
    duckdb.IOException,
)
"""DuckDB errors that reading a user's file raises (and nothing in rlrec's own SQL does)."""


def _materialize(con: duckdb.DuckDBPyConnection, source: Source, order: str) -> None:
    try:
        sort_events(con, f"SELECT * FROM ({source.select_sql()})", "src", order)
    except _READ_ERRORS as exc:
        # A reading failure (a bad value, a damaged or truncated file, a value out of range)
        # is about the user's file; DuckDB's own message is many lines, this is one. Errors
        # in rlrec's own SQL (binder, parser) stay tracebacks.
        raise validate.duckdb_read_error(exc, source.preset, source.expected) from None
    except duckdb.OutOfMemoryException:
        raise UserError(
            f"{', '.join(str(p) for p in source.files)}: DuckDB ran out of memory reading the "
            f"log; raise --memory-limit-mb or free disk space beside --out for spilling"
        ) from None


def _value_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Sum and missing count of the kept events' ``value`` (``meta.json`` ``value``)."""
    row = con.execute("SELECT sum(value), count(*) - count(value) FROM sessd").fetchall()[0]
    assert row is not None
    return {"sum": float(row[0] or 0.0), "missing": int(row[1] or 0)}


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


def _source_counts(con: duckdb.DuckDBPyConnection, future_cutoff: int) -> dict[str, int]:
    ids = "user IS NOT NULL AND item IS NOT NULL AND ts IS NOT NULL"
    row = con.execute(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE user IS NULL),
               count(*) FILTER (WHERE user IS NOT NULL AND item IS NULL),
               count(*) FILTER (WHERE user IS NOT NULL AND item IS NOT NULL AND ts IS NULL),
               count(*) FILTER (WHERE {ids} AND ts > {future_cutoff}),
               count(*) FILTER (WHERE {ids} AND ts <= {future_cutoff} AND session IS NULL),
               count(session),
               count(*) FILTER (WHERE event IS NULL),
               count(*) FILTER (WHERE time_bad),
               count(*) FILTER (WHERE ts < 0),
               count(*) FILTER (WHERE category IS NULL AND NOT category_bad),
               count(*) FILTER (WHERE category_bad),
               count(user), count(item), count(ts)
        FROM src
        """
    ).fetchall()[0]
    assert row is not None
    keys = (
        "rows",
        "no_user",
        "no_item",
        "no_ts",
        "future",
        "no_session",
        "has_session",
        "bad_event",
        "bad_time",
        "negative_time",
        "no_category",
        "bad_category",
        "users",
        "items",
        "times",
    )
    return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}


def _check_rows(con: duckdb.DuckDBPyConnection, source: Source) -> None:
    """The source's per-row rules on raw columns (e.g. OBD propensities in (0, 1])."""
    if not source.row_checks:
        return
    # One scan counts every rule's offenders; an offender is located only after.
    counts = con.execute(
        "SELECT "
        + ", ".join(f"count(*) FILTER (WHERE {c.bad_sql})" for c in source.row_checks)
        + f" FROM {source.relation}"
    ).fetchall()[0]
    for check, n in zip(source.row_checks, counts, strict=True):
        if not n:
            continue
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = true")
        try:
            rows = con.execute(
                f"SELECT _file, _line, {quote_ident(check.column)} FROM "
                f"{source.located_relation} WHERE {check.bad_sql} ORDER BY _file, _line LIMIT 1"
            ).fetchall()
        finally:
            con.execute("SET preserve_insertion_order = false")
        file, line, value = rows[0] if rows else (source.files[0], "?", None)
        raise UserError(
            f"{file} line {line}, column {check.column}: {check.expected}, got "
            f"{quote_value(value)}; {n} row(s) violate this; fix the rows"
        )


def _check_source(
    con: duckdb.DuckDBPyConnection, source: Source, counts: dict[str, int], label: str
) -> None:
    """Whole-table checks; the offending line is located only once a check has failed."""
    for key, name in (("users", "user"), ("items", "item"), ("times", "time")):
        if counts[key] == 0 and counts["bad_time" if name == "time" else key] == 0:
            raise UserError(
                f"{label}: no row has a {name} value (missing ids in every row); "
                "check --columns / --preset and the file's contents"
            )
    if counts["bad_event"]:
        values, where = _locate(con, source, "event IS NULL", source.event_raw or "NULL")
        validate.unknown_events_error(
            where, source.event_column or "event", [str(v) for v in values]
        )
    if counts["bad_time"]:
        values, where = _locate(con, source, "time_bad", source.time_raw or "NULL")
        shown = f" {quote_value(values[0])}" if values and values[0] is not None else ""
        raise UserError(
            f"{where}: unparseable timestamp{shown}; expected an ISO 8601 date or date-time "
            "such as 2019-11-24, 20191124 or 2019-11-24 00:00:34+00:00 (or pass --time-unit "
            f"s|ms for numbers); {counts['bad_time']} row(s) fail; fix the values"
        )
    if counts["negative_time"]:
        values, where = _locate(con, source, "ts < 0", "ts")
        raise UserError(
            f"{where}: negative timestamp ({values[0]} ms); expected times since 1970 "
            "(check --time-unit) or fix the row"
        )


def _locate(
    con: duckdb.DuckDBPyConnection, source: Source, where: str, value_expr: str
) -> tuple[list[Any], str]:
    """Distinct offending values (up to 20) and ``FILE line N`` of the first offending row."""
    # File order only holds in one thread with insertion order kept; this runs on errors only.
    con.execute("SET threads = 1")
    con.execute("SET preserve_insertion_order = true")
    try:
        rows = con.execute(
            source.located_sql(where, extra=f"{value_expr} AS _value") + " LIMIT 10000"
        ).fetchall()
    finally:
        con.execute("SET preserve_insertion_order = false")
    if not rows:
        return [], ", ".join(str(p) for p in source.files)
    values = list(dict.fromkeys(r[-1] for r in rows))[:20]
    return values, f"{rows[0][0]} line {rows[0][1]}"


def _vocab(con: duckdb.DuckDBPyConnection, table: str, counts_sql: str) -> None:
    """Create ``table (raw, idx, count)``: contiguous indices in natural order of raw ids.

    Numeric ids sort as numbers (so ``'9'`` comes before ``'10'``), other ids as text.
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE _counts AS {counts_sql}")
    raw_type = con.execute("SELECT typeof(raw) FROM _counts LIMIT 1").fetchall()
    if raw_type and raw_type[0][0] in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT"):
        order = "raw"  # already numbers: no casts (millions of items in a large log)
    else:
        order = "TRY_CAST(raw AS DOUBLE) NULLS LAST, CAST(raw AS VARCHAR)"
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {table} AS
        SELECT raw, count, row_number() OVER (ORDER BY {order}) - 1 AS idx FROM _counts
        """
    )
    con.execute("DROP TABLE _counts")


def _categories(con: duckdb.DuckDBPyConnection, config: PrepareConfig) -> str:
    """Create ``categories (raw, idx, count)`` and ``ev_cat`` (category idx per event).

    Also ``item_categories (raw, idx)``: each item's category (its most frequent known one).
    Returns the category source recorded in ``meta.json``.
    """
    unknown = quote_str(UNKNOWN_CATEGORY)
    has = _has_column(con, "sessd", "category")
    if config.derive_categories:
        category_source = "cooccurrence"
        edges = con.sql(
            """
            SELECT a, b, count(*) AS w FROM (
                SELECT i.idx AS a,
                       lead(i.idx) OVER (PARTITION BY e.sess ORDER BY e.pos) AS b
                FROM sessd e JOIN items i ON e.item = i.raw WHERE e.split = 0
            ) WHERE b IS NOT NULL AND a <> b GROUP BY a, b
            """
        ).fetchnumpy()
        n_items = _scalar(con, "SELECT count(*) FROM items")
        labels = cooccurrence_categories(
            edges["a"],
            edges["b"],
            edges["w"].astype(np.float64),
            n_items,
            seed=config.seed,
            max_categories=config.derived_max_categories,
            min_size=config.derived_min_size,
        )
        derived = {"item_idx": np.arange(n_items, dtype=np.int64), "label": labels}
        con.register("_derived", derived)
        con.execute(
            f"""
            CREATE TABLE item_cat_raw AS
            SELECT i.raw AS item,
                   CASE WHEN d.label < 0 THEN {unknown}
                        ELSE '{DERIVED_CATEGORY_PREFIX}' || CAST(d.label AS VARCHAR) END AS cat
            FROM items i JOIN _derived d ON i.idx = d.item_idx
            """
        )
        con.unregister("_derived")
        cat_expr = "ic.cat"
        join = "JOIN item_cat_raw ic ON e.item = ic.item"
        order = (
            f"CASE WHEN raw = {unknown} THEN 1 ELSE 0 END, "
            f"TRY_CAST(replace(raw, '{DERIVED_CATEGORY_PREFIX}', '') AS BIGINT)"
        )
    else:
        category_source = "data" if has and _has_categories(con) else "none"
        cat_expr = f"coalesce(CAST(category AS VARCHAR), {unknown})" if has else unknown
        join = ""
        order = (
            f"CASE WHEN raw = {unknown} THEN 1 ELSE 0 END, TRY_CAST(raw AS DOUBLE) NULLS LAST, raw"
        )
    if config.derive_categories:
        con.execute(
            f"CREATE TABLE ev_cat AS SELECT e.item, {cat_expr} AS raw, count(*) AS n "
            f"FROM sessd e {join} GROUP BY ALL"
        )
    else:
        # Group on the typed category first: casting 10M ids to text costs more than the
        # grouping; only the distinct (item, category) pairs are cast.
        typed = "e.category" if has else "NULL"
        con.execute(
            f"""
            CREATE TABLE ev_cat AS
            SELECT item, {cat_expr} AS raw, n FROM (
                SELECT e.item, {typed} AS category, count(*) AS n FROM sessd e GROUP BY ALL
            ) e
            """
        )
    con.execute(
        f"""
        CREATE TABLE categories AS
        SELECT raw, count, row_number() OVER (ORDER BY {order}) - 1 AS idx
        FROM (SELECT raw, sum(n) AS count FROM ev_cat GROUP BY raw)
        """
    )
    # An item's category: its most frequent known category (unknown only if it has none).
    con.execute(
        f"""
        CREATE TABLE item_categories AS
        SELECT item AS raw, idx FROM (
            SELECT ec.item, c.idx, row_number() OVER (
                PARTITION BY ec.item ORDER BY (ec.raw = {unknown}), ec.n DESC, c.idx) AS rank
            FROM ev_cat ec JOIN categories c ON ec.raw = c.raw
        ) WHERE rank = 1
        """
    )
    if config.derive_categories:
        con.execute(
            "CREATE TABLE ev_cat_map AS SELECT ic.item, c.idx FROM item_cat_raw ic "
            "JOIN categories c ON ic.cat = c.raw"
        )
    elif has:
        # Typed category -> index, so that the events join on the raw type, not on text.
        con.execute(
            "CREATE TABLE cat_keys AS SELECT k.category, c.idx FROM "
            "(SELECT DISTINCT category FROM sessd WHERE category IS NOT NULL) k "
            "JOIN categories c ON CAST(k.category AS VARCHAR) = c.raw"
        )
    return category_source


def _has_categories(con: duckdb.DuckDBPyConnection) -> bool:
    return _scalar(con, "SELECT count(category) FROM sessd") > 0


def _write_tables(con: duckdb.DuckDBPyConnection, source: Source, tmp: Path) -> None:
    unknown = quote_str(UNKNOWN_CATEGORY)
    if _table_exists(con, "ev_cat_map"):
        cat_join = "JOIN ev_cat_map cm ON e.item = cm.item"
        cat_idx = "cm.idx"
    elif _has_column(con, "sessd", "category"):
        cat_join = "LEFT JOIN cat_keys c ON e.category = c.category"
        cat_idx = f"coalesce(c.idx, (SELECT idx FROM categories WHERE raw = {unknown}))"
    else:
        cat_join = ""
        cat_idx = f"(SELECT idx FROM categories WHERE raw = {unknown})"
    optional = "".join(
        f", CAST(e.{name} AS {_SQL_TYPES[OPTIONAL_EVENT_COLUMNS[name]]}) AS {name}"
        for name in source.optional_columns
    )
    events_file = quote_str(str(tmp / "events.parquet"))
    con.execute(
        f"""
        COPY (
            SELECT CAST(s.user_idx AS INTEGER) AS user,
                   CAST(s.session AS BIGINT) AS session,
                   CAST(e.pos - s.first_pos AS INTEGER) AS step,
                   CAST(i.idx AS INTEGER) AS item,
                   CAST({cat_idx} AS INTEGER) AS category,
                   CAST(e.event AS TINYINT) AS event,
                   CAST(e.ts AS BIGINT) AS timestamp,
                   CAST(e.split AS TINYINT) AS split{optional}
            FROM sessd e
            JOIN sessions s ON e.sess = s.sess
            JOIN items i ON e.item = i.raw
            {cat_join}
            ORDER BY session, step
        ) TO {events_file} (FORMAT parquet)
        """
    )
    tables = {
        "users": "SELECT CAST(idx AS INTEGER) AS user, CAST(raw AS VARCHAR) AS raw_id "
        "FROM users ORDER BY idx",
        "items": "SELECT CAST(i.idx AS INTEGER) AS item, CAST(i.raw AS VARCHAR) AS raw_id, "
        "CAST(ic.idx AS INTEGER) AS category, CAST(i.count AS BIGINT) AS count "
        "FROM items i JOIN item_categories ic ON i.raw = ic.raw ORDER BY i.idx",
        "categories": "SELECT CAST(idx AS INTEGER) AS category, CAST(raw AS VARCHAR) AS raw_id, "
        "CAST(count AS BIGINT) AS count FROM categories ORDER BY idx",
    }
    for name, sql in tables.items():
        target = quote_str(str(tmp / f"{name}.parquet"))
        con.execute(f"COPY ({sql}) TO {target} (FORMAT parquet)")


_SQL_TYPES = {"int16": "SMALLINT", "float64": "DOUBLE", "float32": "FLOAT"}


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    sql = (
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = "
        f"{quote_str(table)} AND column_name = {quote_str(column)}"
    )
    return _scalar(con, sql) > 0


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return (
        _scalar(con, f"SELECT count(*) FROM duckdb_tables() WHERE table_name = {quote_str(name)}")
        > 0
    )


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchall()[0]
    assert row is not None
    return int(row[0] or 0)
