"""Readers: map a raw event log (CSV or Parquet, by preset or column map) onto canonical rows.

A reader does not load anything itself. It checks the files' structure (cheaply, from their
first lines), then describes the log as a DuckDB query that yields one row per raw event with
the canonical columns below; :mod:`rlrec.data.prepare` runs that query out of core. The SQL
itself (quoting, typed relations, time and event expressions) is written by
:mod:`rlrec.data.sql`; this module decides what a preset's columns mean.

Canonical source columns (the table ``src`` that preparation materializes):

=============== ============================================================================
``user``        raw user id (BIGINT or VARCHAR); NULL when missing
``item``        raw item id (BIGINT or VARCHAR); NULL when missing; the placeholder
                ``schema.NO_ITEM`` for a log without items (user and time only)
``category``    raw category id (VARCHAR or BIGINT); NULL when the event has none
``event``       TINYINT code into ``schema.EVENT_TYPES``; a missing value counts as ``view``;
                NULL marks an unknown event type (an error)
``ts``          BIGINT milliseconds since the Unix epoch; NULL when missing or unparseable
``time_bad``    BOOLEAN: a time value was present but could not be parsed
``category_bad`` BOOLEAN: a category value was present but is not a valid id (then
                ``category`` is NULL: the event gets the unknown category, counted)
``session``     raw session id or NULL (then sessions come from the inactivity gap)
``position``    INTEGER slot of a logged recommendation, or NULL
``propensity``  DOUBLE logging propensity, or NULL
``reward``      DOUBLE logged reward, or NULL
``value``       DOUBLE monetary value of the event, or NULL (missing, or NaN in the file)
=============== ============================================================================

Presets: ``taobao``, ``retailrocket``, ``diginetica``, ``obd``, ``generic`` (a column map)
and ``canonical`` (columns already named ``user, item, time, ...``; time in ms). The generic
and canonical presets need only ``user`` and ``time``: a log of visits or transactions
without items (optionally with a monetary ``value``) prepares too, for the stages that need
no items (``rlrec churn``); value rules: :data:`VALUE_RULES`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from rlrec.config import from_mapping, load_yaml
from rlrec.data import validate
from rlrec.data.bandit import OBD_VALUE_RULES
from rlrec.data.schema import (
    CANONICAL_FIELDS,
    REQUIRED_FIELDS,
)
from rlrec.data.sql import (
    TIME_CLAMP_MS,
    TimeUnit,
    bad_value_sql,
    base_exprs,
    csv_relation,
    event_code_sql,
    mapped_exprs,
    null_sql,
    parquet_relation,
    quote_ident,
    quote_str,
    time_bad_sql,
    time_sql,
    value_cast_sql,
    value_sql,
)
from rlrec.errors import UserError, quote_value

__all__ = [
    "NULL_STRINGS",
    "OPTIONAL_SOURCE_COLUMNS",
    "PRESETS",
    "SOURCE_COLUMNS",
    "VALUE_RULES",
    "ColumnMapFile",
    "ReadOptions",
    "RowCheck",
    "Source",
    "load_column_map",
    "open_source",
    "parse_columns",
]

PRESETS: tuple[str, ...] = ("taobao", "retailrocket", "diginetica", "obd", "generic", "canonical")
"""Names accepted by ``--preset``."""


SOURCE_COLUMNS: tuple[str, ...] = (
    "user",
    "item",
    "category",
    "event",
    "ts",
    "time_bad",
    "category_bad",
    "session",
    "position",
    "propensity",
    "reward",
    "value",
)
"""Columns of the canonical source table, in order."""

OPTIONAL_SOURCE_COLUMNS: tuple[str, ...] = ("position", "propensity", "reward", "value")

NULL_STRINGS: tuple[str, ...] = ("", "NA", "NaN", "nan", "NULL", "null", "None")
"""CSV field values read as missing in generic files."""

_PARQUET_SUFFIXES = (".parquet", ".pq")
_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"}
_INTEGER_TYPES |= {f"U{t}" for t in _INTEGER_TYPES}
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
_TIMESTAMP_TYPES = {"DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS"}
_TIMESTAMP_TYPES |= {"TIMESTAMP_MS", "TIMESTAMP_S", "TIMESTAMPTZ"}


@dataclass(frozen=True)
class RowCheck:
    """A per-row rule on the raw columns that preparation enforces (refusing the file).

    Attributes:
        column: The file's column, for the message.
        bad_sql: SQL over the relation's raw columns, true on an offending row.
        expected: What a valid value is, for the message (e.g. ``must lie in (0, 1]``).
    """

    column: str
    bad_sql: str
    expected: str


VALUE_RULES: tuple[tuple[str, str], ...] = (
    (
        "{c} IS NOT NULL AND {v} IS NULL",
        "must be a number (a monetary amount such as 12.50; no currency signs or thousands "
        "separators)",
    ),
    ("isinf({v})", "must be finite"),
    (
        "{v} < 0",
        "must be >= 0 (a refund or cancellation: drop the row, or net it into its purchase)",
    ),
)
"""Rules on a mapped ``value`` column (SQL true on an offending row, what a value must be;
``{c}`` is the raw column, ``{v}`` its value as DOUBLE or NULL).

Refused rather than counted: a negative or infinite amount would silently distort every
monetary feature and baseline downstream, and only the user knows whether a negative row is a
refund to net out or an error. A missing value (an empty field, a null marker, NaN) is kept
as NaN: unknown, not zero.
"""


def _value_checks(column: str, text: bool) -> tuple[RowCheck, ...]:
    col = quote_ident(column)
    value = value_cast_sql(col, text)
    return tuple(
        RowCheck(column, sql.replace("{c}", col).replace("{v}", value), what)
        for sql, what in VALUE_RULES
    )


@dataclass(frozen=True)
class ReadOptions:
    """How to read a file; presets fix these themselves, except where given here.

    Attributes:
        time_unit: Unit of the time column: ``s`` or ``ms`` since the Unix epoch, or ``iso``
            date-time strings. None: the preset's unit (generic: guessed from the first rows
            and recorded in ``meta.json``).
        delimiter: CSV field delimiter; None: the preset's (generic: ``,``).
        header: Whether CSV files start with a header line; None: the preset's (generic: yes).
    """

    time_unit: TimeUnit | None = None
    delimiter: str | None = None
    header: bool | None = None

    def __post_init__(self) -> None:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise UserError(
                f"--delimiter {quote_value(self.delimiter)}: expected a single character such as "
                "',' or ';'"
            )


@dataclass(frozen=True)
class ColumnMapFile:
    """A generic-preset column map stored in YAML (``--columns FILE.yaml``).

    Attributes:
        columns: Canonical field -> the file's column (name, or 0-based index without header).
        time_unit: As :attr:`ReadOptions.time_unit`.
        delimiter: As :attr:`ReadOptions.delimiter`.
        header: As :attr:`ReadOptions.header`.
    """

    columns: dict[str, str] = field(default_factory=dict)
    time_unit: TimeUnit | None = None
    delimiter: str | None = None
    header: bool | None = None


@dataclass(frozen=True)
class Source:
    """A raw log described as DuckDB SQL producing the canonical source columns.

    Attributes:
        preset: The preset that read it.
        files: The event files (not the auxiliary ones such as RetailRocket item properties).
        relation: SQL ``FROM`` target (a table function or subquery) for the fast read.
        located_relation: The same, with ``_file`` (VARCHAR) and ``_line`` (BIGINT, 1-based
            line or row number) columns, read in file order; used only to locate an error.
        exprs: Canonical source column -> SQL expression over the relation's columns.
        event_raw: SQL expression of the raw event value (for listing unknown ones), or None.
        event_column: Name of the file's event column, for messages.
        expected: What the preset expects, for messages (e.g. ``"integer ids"``).
        optional_columns: Which of ``position, propensity, reward`` the log has.
        notes: Facts recorded in ``meta.json`` (e.g. the guessed time unit).
        row_checks: Rules every raw row must satisfy (e.g. OBD's propensity in (0, 1]).
        time_raw: SQL expression of the raw time value (quoted in an unparseable-time error),
            or None.
        has_items: Whether the log has items (False: user and time only, one placeholder).
    """

    preset: str
    files: tuple[Path, ...]
    relation: str
    located_relation: str
    exprs: dict[str, str]
    event_raw: str | None
    event_column: str | None
    expected: str
    optional_columns: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)
    row_checks: tuple[RowCheck, ...] = ()
    time_raw: str | None = None
    has_items: bool = True

    def has(self, column: str) -> bool:
        """Whether the log has this canonical source column (else it is all NULL)."""
        return not self.exprs[column].startswith("CAST(NULL ")

    def select_sql(self) -> str:
        """The query yielding the canonical source columns."""
        cols = ", ".join(f"{self.exprs[c]} AS {c}" for c in SOURCE_COLUMNS)
        return f"SELECT {cols} FROM {self.relation}"

    def located_sql(self, where: str, extra: str = "") -> str:
        """Rows of the located relation where ``where`` (over canonical columns) holds.

        The result has ``_file``, ``_line``, the canonical columns and ``extra`` columns.
        """
        cols = ", ".join(f"{self.exprs[c]} AS {c}" for c in SOURCE_COLUMNS)
        extra_cols = f", {extra}" if extra else ""
        inner = f"SELECT _file, _line, {cols}{extra_cols} FROM {self.located_relation}"
        return f"SELECT * FROM ({inner}) WHERE {where} ORDER BY _file, _line"


def parse_columns(spec: str) -> dict[str, str]:
    """Parse ``user=COL,item=COL,time=COL[,...]`` into a mapping.

    Raises:
        UserError: On a malformed pair or an unknown canonical field.
    """
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise UserError(
                f"--columns: {quote_value(part.strip())} is not FIELD=COLUMN; "
                "write e.g. user=visitor_id,item=sku,time=ts"
            )
        if name in mapping:
            raise UserError(
                f"--columns: {name} is given twice ({quote_value(mapping[name])} and "
                f"{quote_value(column)}); give each field once"
            )
        mapping[name] = column
    return mapping


def load_column_map(path: str | os.PathLike[str]) -> tuple[dict[str, str], ReadOptions]:
    """Read a YAML column map: ``columns: {user: COL, ...}`` plus optional read options.

    A YAML file that is just ``{user: COL, item: COL, time: COL}`` is accepted too.

    Raises:
        UserError: On invalid YAML or an unknown setting.
    """
    data = load_yaml(path)
    if "columns" not in data:
        data = {"columns": data}
    data["columns"] = {str(k): str(v) for k, v in (data.get("columns") or {}).items()}
    parsed = from_mapping(ColumnMapFile, data, where=str(path))
    return dict(parsed.columns), ReadOptions(parsed.time_unit, parsed.delimiter, parsed.header)


def open_source(
    con: duckdb.DuckDBPyConnection,
    inputs: Sequence[Path],
    preset: str,
    columns: Mapping[str, str] | None = None,
    options: ReadOptions | None = None,
) -> Source:
    """Check the inputs' structure and describe them as a :class:`Source`.

    Args:
        con: A DuckDB connection (used to inspect Parquet schemas).
        inputs: Log files; their order is kept in ``meta.json``.
        preset: One of :data:`PRESETS`.
        columns: For ``generic``: canonical field -> column. Ignored for other presets
            (an error if given, because it would be silently unused).
        options: Read options overriding the preset's.

    Raises:
        UserError: On an unknown preset, missing/empty files, or a file that does not match
            the preset (wrong delimiter, missing columns, unexpected header, wrong types).
    """
    options = options or ReadOptions()
    paths = tuple(Path(p) for p in inputs)
    if preset not in PRESETS:
        raise UserError(
            f"--preset {quote_value(preset)}: unknown preset; choose one of {', '.join(PRESETS)}"
        )
    if columns and preset not in ("generic", "canonical"):
        raise UserError(
            f"--columns is only used with --preset generic; the {preset} preset fixes its columns"
        )
    validate.check_input_files(paths)
    if preset == "taobao":
        return _taobao(paths, options)
    if preset == "retailrocket":
        return _retailrocket(paths, options)
    if preset == "diginetica":
        return _diginetica(paths, options)
    if preset == "obd":
        return _obd(paths, options)
    if preset == "canonical":
        return _mapped(con, paths, None, options, preset="canonical")
    if not columns:
        raise UserError(
            "--preset generic needs --columns user=COL,time=COL[,item=COL,category=COL,"
            "value=COL,...] (or --columns FILE.yaml)"
        )
    return _mapped(con, paths, dict(columns), options, preset="generic")


# ----------------------------------------------------------------------------- file checks


def _sniff_all(paths: Sequence[Path], delimiter: str) -> list[validate.CsvShape]:
    for p in paths:
        validate.check_line_lengths(p)
    return [validate.sniff_csv(p, delimiter) for p in paths]


def _reject_parquet(paths: Sequence[Path], preset: str) -> None:
    for p in paths:
        if p.suffix.lower() in _PARQUET_SUFFIXES:
            raise UserError(
                f"{p}: the {preset} preset reads CSV files; for Parquet use --preset generic "
                "--columns or --preset canonical"
            )


# ----------------------------------------------------------------------------- presets

_TAOBAO_LAYOUT = "user,item,category,behavior,unix_seconds"


def _taobao(paths: tuple[Path, ...], options: ReadOptions) -> Source:
    _reject_parquet(paths, "taobao")
    delim = options.delimiter or ","
    shapes = _sniff_all(paths, delim)
    for shape in shapes:
        validate.check_field_count(shape, 5, "taobao", _TAOBAO_LAYOUT)
        validate.check_no_header(shape, (0, 1, 2, 4), "taobao")
    types = {
        "user_id": "BIGINT",
        "item_id": "BIGINT",
        "category_id": "BIGINT",
        "behavior": "VARCHAR",
        "unix_seconds": "BIGINT",
    }
    unit, unit_source = _numeric_unit(options, [row[4:5] for sh in shapes for row in sh.first_rows])
    exprs = {
        **base_exprs(),
        "user": "user_id",
        "item": "item_id",
        "category": "category_id",
        "event": event_code_sql("behavior"),
        "ts": time_sql("unix_seconds", unit, numeric=True),
    }
    if unit == "iso":
        raise UserError("--time-unit iso: Taobao timestamps are Unix seconds; drop --time-unit")
    return Source(
        preset="taobao",
        files=paths,
        relation=csv_relation(paths, delim, False, types, located=False),
        located_relation=csv_relation(paths, delim, False, types, located=True),
        exprs=exprs,
        event_raw="behavior",
        event_column="behavior",
        expected=f"no header and integer ids: {_TAOBAO_LAYOUT}",
        notes={"time_unit": unit, "time_unit_source": unit_source},
    )


_RR_EVENTS = ("timestamp", "visitorid", "event", "itemid")
_RR_PROPERTIES = ("timestamp", "itemid", "property", "value")


def _retailrocket(paths: tuple[Path, ...], options: ReadOptions) -> Source:
    _reject_parquet(paths, "retailrocket")
    delim = options.delimiter or ","
    events: list[Path] = []
    properties: list[Path] = []
    samples: list[Sequence[str]] = []
    for shape in _sniff_all(paths, delim):
        header = {name.strip() for name in (shape.first_rows[0] if shape.first_rows else ())}
        if set(_RR_PROPERTIES) <= header and "visitorid" not in header:
            properties.append(shape.path)
        else:
            validate.check_header(
                shape,
                _RR_EVENTS,
                "retailrocket",
                fix="pass events.csv (and optionally item_properties_part*.csv for categories)",
            )
            events.append(shape.path)
            index = [name.strip() for name in shape.first_rows[0]].index("timestamp")
            samples += [row[index : index + 1] for row in shape.first_rows[1:]]
    if not events:
        raise UserError(
            f"{paths[0]}: only item_properties files given; the retailrocket preset also "
            "needs events.csv (timestamp,visitorid,event,itemid,transactionid)"
        )
    ev_types = {name: "VARCHAR" for name in _header_of(events[0], delim)}
    ev_types.update(timestamp="BIGINT", visitorid="BIGINT", itemid="BIGINT", event="VARCHAR")
    unit, unit_source = _numeric_unit(options, samples)

    def relation(located: bool) -> str:
        base = csv_relation(events, delim, True, ev_types, located=located)
        if not properties:
            return base
        prop_types = {
            "timestamp": "BIGINT",
            "itemid": "BIGINT",
            "property": "VARCHAR",
            "value": "VARCHAR",
        }
        props = csv_relation(properties, delim, True, prop_types, located=False)
        # An item's category is the latest 'categoryid' value in the property snapshots.
        # A value that is not an integer id is no category (counted as unparseable).
        cats = (
            f"(SELECT itemid AS cat_itemid, arg_max(value, timestamp) AS categoryid_raw, "
            "CAST(TRY_CAST(trim(arg_max(value, timestamp)) AS BIGINT) AS VARCHAR) AS categoryid "
            f"FROM {props} WHERE property = 'categoryid' GROUP BY itemid)"
        )
        return f"{base} AS e LEFT JOIN {cats} AS p ON e.itemid = p.cat_itemid"

    exprs = {
        **base_exprs(),
        "user": "visitorid",
        "item": "itemid",
        "category": "categoryid" if properties else null_sql("VARCHAR"),
        "category_bad": "(categoryid_raw IS NOT NULL AND categoryid IS NULL)"
        if properties
        else "false",
        "event": event_code_sql("event"),
        "ts": time_sql("timestamp", unit, numeric=True),
    }
    return Source(
        preset="retailrocket",
        files=tuple(events),
        relation=relation(False),
        located_relation=relation(True),
        exprs=exprs,
        event_raw="event",
        event_column="event",
        expected=f"a header timestamp,visitorid,event,itemid,... with integer ids, times in {unit}",
        notes={
            "time_unit": unit,
            "time_unit_source": unit_source,
            "category_files": [str(p) for p in properties],
        },
    )


_DIGINETICA_COLUMNS = ("session_id", "item_id", "timeframe", "eventdate")


def _diginetica(paths: tuple[Path, ...], options: ReadOptions) -> Source:
    _reject_parquet(paths, "diginetica")
    delim = options.delimiter or ";"
    for shape in _sniff_all(paths, delim):
        validate.check_header(shape, _DIGINETICA_COLUMNS, "diginetica")
    types = {name: "VARCHAR" for name in _header_of(paths[0], delim)}
    types.update(session_id="BIGINT", item_id="BIGINT", timeframe="BIGINT", eventdate="DATE")
    if "user_id" in types:
        types["user_id"] = "BIGINT"
    has_user = "user_id" in types
    # Most DIGINETICA sessions are anonymous (user_id NA): each such session is its own user,
    # so that sessions never merge across people. A session that logs in midway (user_id NA
    # on its first rows only) belongs to that user throughout.
    user = (
        "coalesce(CAST(max(user_id) OVER (PARTITION BY session_id) AS VARCHAR), "
        "'session-' || CAST(session_id AS VARCHAR))"
        if has_user
        else "'session-' || CAST(session_id AS VARCHAR)"
    )

    def relation(located: bool) -> str:
        return csv_relation(paths, delim, True, types, located, nullstr=("", "NA"))

    exprs = {
        **base_exprs(),
        "user": user,
        "item": "item_id",
        "event": "CAST(0 AS TINYINT)",
        # timeframe: milliseconds since the session's start, on the day eventdate (clamped:
        # an absurd offset becomes a far-future time, dropped and counted, not an overflow).
        "ts": f"epoch_ms(CAST(eventdate AS TIMESTAMP)) + least(timeframe, {TIME_CLAMP_MS})",
        "session": "CAST(session_id AS VARCHAR)",
    }
    return Source(
        preset="diginetica",
        files=paths,
        relation=relation(False),
        located_relation=relation(True),
        exprs=exprs,
        event_raw=None,
        event_column=None,
        expected="';'-separated session_id;user_id;item_id;timeframe;eventdate",
        row_checks=(
            RowCheck(
                "timeframe", "timeframe < 0", "must be >= 0 (milliseconds since the session start)"
            ),
        ),
        notes={
            "time_unit": "date + ms offset",
            "user_source": "the session's user_id, else the session",
        },
    )


_OBD_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")


def _obd(paths: tuple[Path, ...], options: ReadOptions) -> Source:
    _reject_parquet(paths, "obd")
    delim = options.delimiter or ","
    for shape in _sniff_all(paths, delim):
        header = shape.first_rows[0] if shape.first_rows else ()
        if "item_feature_0" in header and "click" not in header:
            raise UserError(
                f"{shape.path}: an OBD item-context file; the obd preset reads the logged "
                "feedback files (e.g. random.csv, bts.csv)"
            )
        validate.check_header(shape, _OBD_COLUMNS, "obd")
    header = _header_of(paths[0], delim)
    names = [name or "row_index" for name in header]
    types = {name: "VARCHAR" for name in names}
    types.update(item_id="BIGINT", position="INTEGER", click="INTEGER", propensity_score="DOUBLE")
    features = [n for n in names if n.startswith("user_feature_")]
    # OBD has no user id: the hashed user features are the closest thing to one.
    user = (
        "md5(concat_ws('|', " + ", ".join(quote_ident(f) for f in features) + "))"
        if features
        else null_sql("VARCHAR")
    )
    index = "row_index" if "row_index" in names else None

    # OBD files are small (10,000 rounds each); the session id needs the file name, so the
    # fast read uses the located relation too.
    relation = csv_relation(paths, delim, True, types, located=True)
    # Each logged round is its own one-event session: file name + the round's index.
    round_id = f"CAST({index} AS VARCHAR)" if index else "CAST(_line AS VARCHAR)"
    exprs = {
        **base_exprs(),
        "user": user,
        "item": "item_id",
        "event": "CAST(CASE WHEN click = 1 THEN 1 ELSE 0 END AS TINYINT)",
        "ts": "epoch_ms(TRY_CAST(timestamp AS TIMESTAMPTZ))",
        "time_bad": "(timestamp IS NOT NULL AND TRY_CAST(timestamp AS TIMESTAMPTZ) IS NULL)",
        "session": f"regexp_extract(_file, '([^/\\\\]+)$', 1) || ':' || {round_id}",
        "position": "position",
        "propensity": "propensity_score",
        "reward": "CAST(click AS DOUBLE)",
    }
    return Source(
        preset="obd",
        files=paths,
        relation=relation,
        located_relation=relation,
        exprs=exprs,
        event_raw=None,
        event_column=None,
        expected="Open Bandit Dataset CSV: ,timestamp,item_id,position,click,propensity_score,...",
        optional_columns=("position", "propensity", "reward"),
        # The same rules as 'rlrec ope bandit' (rlrec.data.bandit), so both accept one file.
        row_checks=tuple(
            RowCheck(rule.column, bad_value_sql(rule.ok_sql, rule.column), rule.expected)
            for rule in OBD_VALUE_RULES
        ),
        notes={
            "time_unit": "iso",
            "user_source": "md5 of the user features",
            "session_source": "one session per logged round (file and row index)",
        },
    )


def _mapped(
    con: duckdb.DuckDBPyConnection,
    paths: tuple[Path, ...],
    columns: dict[str, str] | None,
    options: ReadOptions,
    preset: str,
) -> Source:
    """The generic (column map) and canonical presets, for CSV or Parquet."""
    parquet = [p.suffix.lower() in _PARQUET_SUFFIXES for p in paths]
    if any(parquet) and not all(parquet):
        raise UserError(
            f"{paths[parquet.index(False)]}: mixes CSV and Parquet inputs; "
            "convert them to one format"
        )
    if all(parquet):
        available, types = _parquet_schema(con, paths)
        header = True
    else:
        delim = options.delimiter or ","
        header = True if options.header is None else options.header
        shapes = _sniff_all(paths, delim)
        for shape in shapes:
            if not shape.first_rows:
                raise UserError(f"{shape.path}: no rows; pass a log with at least one event")
        first = shapes[0]
        if header:
            available = tuple(name.strip() for name in first.first_rows[0])
        else:
            available = tuple(f"column{i}" for i in range(first.n_fields))
        types = {}
    if columns is None:
        columns = {f: f for f in CANONICAL_FIELDS if f in available}
        if not all(f in columns for f in REQUIRED_FIELDS):
            missing = [f for f in REQUIRED_FIELDS if f not in columns]
            shown = ", ".join(available[:12])
            raise UserError(
                f"{paths[0]}: missing required column(s) {', '.join(missing)} for the canonical "
                f"preset (columns named {', '.join(CANONICAL_FIELDS)}); the file has [{shown}]"
            )
    columns = _resolve_columns(columns, available, header, paths[0], options)
    if all(parquet):
        return _mapped_parquet(paths, columns, types, options, preset, _parquet_sample(con, paths))
    return _mapped_csv(paths, columns, available, header, options, preset)


def _resolve_columns(
    columns: dict[str, str],
    available: Sequence[str],
    header: bool,
    path: Path,
    options: ReadOptions,
) -> dict[str, str]:
    unknown = sorted(set(columns) - set(CANONICAL_FIELDS))
    if unknown:
        raise UserError(
            f"--columns: unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join(CANONICAL_FIELDS)}"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise UserError(
            f"--columns: missing required field(s) {', '.join(missing)}; "
            "give at least user=COL,time=COL (and item=COL for the item-level stages)"
        )
    resolved: dict[str, str] = {}
    for name, column in columns.items():
        if not header and column.isdigit():
            column = f"column{column}"
        if column not in available:
            shown = ", ".join(available[:12]) + (", ..." if len(available) > 12 else "")
            hint = ""
            if len(available) == 1 and options.delimiter is None:
                hint = " (only one column found: is the delimiter right? pass --delimiter)"
            raise UserError(
                f"{path}: missing required column {quote_value(column)} (mapped to {name}); "
                f"the file has [{shown}]{hint}; fix --columns"
            )
        twin = next((f for f, c in resolved.items() if c == column), None)
        if twin is not None:
            raise UserError(
                f"--columns: column {quote_value(column)} is mapped to both {twin} and {name}; "
                "map each field to its own column"
            )
        resolved[name] = column
    return resolved


def _parquet_schema(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path]
) -> tuple[tuple[str, ...], dict[str, str]]:
    types: dict[str, str] = {}
    for p in paths:
        try:
            rows = con.execute(
                f"DESCRIBE SELECT * FROM read_parquet({quote_str(str(p))})"
            ).fetchall()
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0][:160]
            raise UserError(f"{p}: not a readable Parquet file ({first})") from None
        for name, type_name, *_ in rows:
            if name in types and types[name] != type_name:
                raise UserError(
                    f"{p}: column {quote_value(name)} is {type_name} here but {types[name]} in "
                    f"{paths[0]}; write all inputs with the same schema"
                )
            types.setdefault(name, type_name)
    return tuple(types), types


def _guess_time_unit(samples: Sequence[str]) -> TimeUnit:
    values = [s for s in samples if s not in NULL_STRINGS]
    numbers = [x for x in map(_as_float, values) if x is not None and math.isfinite(x)]
    # Mostly numbers: a numeric column with a few bad values, which the typed read then
    # reports on their own lines (guessing ISO would blame the good rows instead).
    if values and len(numbers) * 2 < len(values):
        return "iso"
    if not numbers:
        return "s"
    # Basic-format ISO dates (19970101): as Unix seconds they would all fall in August 1970.
    if len(numbers) == len(values) and all(_basic_date(v) for v in values):
        return "iso"
    # Unix seconds stay below 1e11 until the year 5138; milliseconds exceed it after 1973.
    # The median, not the maximum: a few absurd rows must not flip the unit of the rest.
    return "ms" if float(np.median(np.abs(numbers))) > 1e11 else "s"


def _basic_date(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 basic-format date (YYYYMMDD) between 1900 and 2100."""
    text = text.strip()
    if len(text) != 8 or not text.isdigit() or not "1900" <= text[:4] <= "2100":
        return False
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _numeric_unit(options: ReadOptions, samples: Sequence[Sequence[str]]) -> tuple[TimeUnit, str]:
    """The unit of a preset's numeric time column: ``--time-unit``, else guessed.

    RetailRocket documents milliseconds and Taobao seconds, but copies of both circulate in
    the other unit; read in the wrong one, every event lands in 1970 or in year 49,000.
    """
    if options.time_unit is not None:
        return options.time_unit, "--time-unit"
    guessed = _guess_time_unit([row[0] for row in samples if row])
    if guessed == "iso":  # not numbers: the typed read reports the line
        guessed = "s"
    return guessed, "guessed from the magnitude of the first rows (override with --time-unit)"


def _mapped_csv(
    paths: tuple[Path, ...],
    columns: dict[str, str],
    available: Sequence[str],
    header: bool,
    options: ReadOptions,
    preset: str,
) -> Source:
    delim = options.delimiter or ","
    shape = validate.sniff_csv(paths[0], delim)
    time_col = columns["time"]
    unit: TimeUnit
    if options.time_unit is not None:
        unit = options.time_unit
    elif preset == "canonical":
        unit = "ms"
    else:
        index = list(available).index(time_col)
        rows = shape.first_rows[1:] if header else shape.first_rows
        unit = _guess_time_unit([r[index] for r in rows if index < len(r)])
    types = {name: "VARCHAR" for name in available}
    types[time_col] = "VARCHAR" if unit == "iso" else "DOUBLE"
    for name, type_name in (
        ("position", "INTEGER"),
        ("propensity", "DOUBLE"),
        ("reward", "DOUBLE"),
    ):
        if name in columns:
            types[columns[name]] = type_name
    exprs = mapped_exprs(columns, unit, time_numeric=False, event_is_code=False)
    relation_args = (paths, delim, header, types)
    return Source(
        preset=preset,
        files=paths,
        relation=csv_relation(*relation_args, located=False, nullstr=NULL_STRINGS),
        located_relation=csv_relation(*relation_args, located=True, nullstr=NULL_STRINGS),
        exprs=exprs,
        event_raw=quote_ident(columns["event"]) if "event" in columns else None,
        event_column=columns.get("event"),
        expected=f"the mapped columns with times in {unit}",
        optional_columns=tuple(c for c in OPTIONAL_SOURCE_COLUMNS if c in columns),
        notes={"time_unit": unit, "columns": dict(columns)},
        row_checks=_value_checks(columns["value"], text=True) if "value" in columns else (),
        time_raw=quote_ident(time_col),
        has_items="item" in columns,
    )


def _mapped_parquet(
    paths: tuple[Path, ...],
    columns: dict[str, str],
    types: dict[str, str],
    options: ReadOptions,
    preset: str,
    sample: Mapping[str, Sequence[str]] | None = None,
) -> Source:
    def kind(field_name: str) -> str:
        type_name = types[columns[field_name]]
        base = type_name.split("(")[0].strip()
        if base in _INTEGER_TYPES:
            return "int"
        if base in _FLOAT_TYPES or base.startswith("DECIMAL"):
            return "float"
        if base in _TIMESTAMP_TYPES or base.startswith("TIMESTAMP"):
            return "timestamp"
        if base == "VARCHAR":
            return "str"
        if base == "BOOLEAN":
            return "bool"
        return base

    def wrong(field_name: str, expected: str, fix: str) -> UserError:
        col = columns[field_name]
        return UserError(
            f"{paths[0]}: column {quote_value(col)} ({field_name}) has type {types[col]}, expected "
            f"{expected}; {fix}"
        )

    for name in ("user", "item", "category", "session"):
        if name in columns and kind(name) not in ("int", "str"):
            raise wrong(name, "integer or string ids", "cast the column before writing the file")
    time_kind = kind("time")
    unit: TimeUnit
    unit_source = ""
    if time_kind == "timestamp":
        unit = "ms"
        time_expr = f"epoch_ms(CAST({quote_ident(columns['time'])} AS TIMESTAMP))"
    elif time_kind in ("int", "float"):
        if options.time_unit == "iso":
            raise wrong("time", "strings for --time-unit iso", "drop --time-unit iso or fix it")
        unit = options.time_unit or "ms"
        unit_source = "--time-unit" if options.time_unit else "the canonical preset's ms"
        if options.time_unit is None and preset == "generic" and sample is not None:
            # Like a generic CSV: seconds or ms from the magnitude of the first rows.
            unit = _guess_time_unit(sample.get(columns["time"], ()))
            unit = "ms" if unit == "iso" else unit
            unit_source = "guessed from the magnitude of the first rows (override with --time-unit)"
        time_expr = time_sql(quote_ident(columns["time"]), unit, numeric=time_kind == "int")
    elif time_kind == "str" and (options.time_unit == "iso" or preset == "generic"):
        if options.time_unit not in (None, "iso"):
            raise wrong("time", f"numbers in {options.time_unit}", "write numbers or use iso")
        unit = "iso"
        time_expr = time_sql(quote_ident(columns["time"]), "iso", numeric=False)
    else:
        raise wrong(
            "time",
            "integer milliseconds or a timestamp type",
            "write the time as int64 ms (or pass --preset generic --time-unit iso)",
        )
    event_is_code = False
    if "event" in columns:
        event_kind = kind("event")
        if event_kind not in ("int", "str"):
            raise wrong("event", "event names or integer codes", "write names like view, buy")
        event_is_code = event_kind == "int"
    for name in ("position", "propensity", "reward"):
        allowed = ("int",) if name == "position" else ("int", "float", "bool")
        if name in columns and kind(name) not in allowed:
            raise wrong(name, "a number", "cast the column before writing the file")
    # A value column of text is read like a CSV's: each row is checked (and located).
    if "value" in columns and kind("value") not in ("int", "float", "str"):
        raise wrong("value", "a number", "cast the column to a float before writing the file")
    exprs = mapped_exprs(columns, unit, time_numeric=True, event_is_code=event_is_code)
    exprs["ts"] = time_expr
    value_text = "value" in columns and kind("value") == "str"
    if "value" in columns:
        exprs["value"] = value_sql(quote_ident(columns["value"]), text=value_text)
    if unit == "iso":
        exprs["time_bad"] = time_bad_sql(quote_ident(columns["time"]))
    return Source(
        preset=preset,
        files=paths,
        relation=parquet_relation(paths, located=False),
        located_relation=parquet_relation(paths, located=True),
        exprs=exprs,
        event_raw=quote_ident(columns["event"]) if "event" in columns else None,
        event_column=columns.get("event"),
        expected="the mapped columns with integer or string ids",
        optional_columns=tuple(c for c in OPTIONAL_SOURCE_COLUMNS if c in columns),
        notes={
            "time_unit": unit,
            "columns": dict(columns),
            **({"time_unit_source": unit_source} if time_kind in ("int", "float") else {}),
        },
        row_checks=_value_checks(columns["value"], value_text) if "value" in columns else (),
        time_raw=quote_ident(columns["time"]),
        has_items="item" in columns,
    )


def _parquet_sample(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path], rows: int = 20
) -> dict[str, list[str]]:
    """The first ``rows`` values of each column of the first file, as text (for guessing)."""
    try:
        rel = con.execute(f"SELECT * FROM read_parquet({quote_str(str(paths[0]))}) LIMIT {rows}")
        names = [d[0] for d in rel.description]
        values = rel.fetchall()
    except duckdb.Error as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0][:160]
        raise UserError(f"{paths[0]}: not a readable Parquet file ({first})") from None
    return {n: [str(r[i]) for r in values if r[i] is not None] for i, n in enumerate(names)}


def _header_of(path: Path, delimiter: str) -> tuple[str, ...]:
    shape = validate.sniff_csv(path, delimiter)
    return tuple(name.strip() for name in shape.first_rows[0]) if shape.first_rows else ()
