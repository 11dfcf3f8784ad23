"""The PreparedDataset: a directory that every later stage reads.

Layout (see ``docs/architecture.md``)::

    DIR/
      events.parquet      one row per kept event, sorted by (session, step)
      users.parquet       user index -> raw id
      items.parquet       item index -> raw id, category index, event count
      categories.parquet  category index -> raw id, event count
      meta.json           schema version, source, row accounting, split cut-offs, sizes

A dataset directory is written next to its final place and renamed into it in one step, so a
crash mid-write never leaves a directory that loads as a dataset (``meta.json`` is written
last, and :func:`load_dataset` refuses a directory without it). :func:`atomic_directory` and
:func:`write_json_atomic` live in :mod:`rlrec.fsutil` (locks, ``force``, fsync) and are
re-exported here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlrec.data.ragged import Ragged
from rlrec.data.schema import EVENT_COLUMNS, EVENT_TYPES, SCHEMA_VERSION, SPLITS
from rlrec.errors import UserError, quote_value
from rlrec.fsutil import atomic_directory, write_json_atomic

__all__ = [
    "META_FILE",
    "TABLE_FILES",
    "PreparedDataset",
    "SessionArrays",
    "atomic_directory",
    "load_dataset",
    "session_arrays",
    "write_dataset",
    "write_json_atomic",
]

META_FILE = "meta.json"
TABLE_FILES = ("events.parquet", "users.parquet", "items.parquet", "categories.parquet")

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "users.parquet": ("user", "raw_id"),
    "items.parquet": ("item", "raw_id", "category"),
    "categories.parquet": ("category", "raw_id"),
}
"""Columns each vocabulary table must have (``events.parquet``: ``schema.EVENT_COLUMNS``)."""


@dataclass(frozen=True)
class SessionArrays(Ragged):
    """Sessions of one split as flat arrays in CSR form (fast to slice, cheap to keep).

    Session ``s`` spans ``offsets[s]:offsets[s + 1]`` in every per-event array.

    Attributes:
        offsets: (S + 1,) int64 start offsets, ``offsets[0] == 0``, ``offsets[-1] == E``.
        user: (S,) int32 user index of each session.
        items: (E,) int32 item indices.
        categories: (E,) int32 category indices.
        events: (E,) int8 event codes into ``EVENT_TYPES``.
        timestamps: (E,) int64 milliseconds.
    """

    user: np.ndarray
    items: np.ndarray
    categories: np.ndarray
    events: np.ndarray
    timestamps: np.ndarray

    def session(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and categories of session ``s``, each (length,)."""
        lo, hi = self.offsets[s], self.offsets[s + 1]
        return self.items[lo:hi], self.categories[lo:hi]


@dataclass(frozen=True)
class PreparedDataset:
    """A loaded PreparedDataset.

    Attributes:
        path: The directory it was loaded from.
        events: One row per event, columns as in ``schema.EVENT_COLUMNS`` (plus any optional
            ones), sorted by (session, step).
        users: Columns ``user`` (index) and ``raw_id`` (str).
        items: Columns ``item`` (index), ``raw_id`` (str), ``category`` (index), ``count``.
        categories: Columns ``category`` (index), ``raw_id`` (str), ``count``.
        meta: The parsed ``meta.json``.
    """

    path: Path
    events: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    categories: pd.DataFrame
    meta: dict[str, Any]

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary."""
        return len(self.items)

    @property
    def n_categories(self) -> int:
        """Size of the category vocabulary."""
        return len(self.categories)

    @property
    def n_users(self) -> int:
        """Size of the user vocabulary."""
        return len(self.users)

    def _content(self, key: str, default: bool) -> bool:
        content = self.meta.get("content")
        if isinstance(content, dict) and isinstance(content.get(key), bool):
            return bool(content[key])
        return default

    @property
    def has_items(self) -> bool:
        """Whether the log has items (False: user and time only, one placeholder item).

        A dataset prepared before ``meta.json`` recorded its content has items.
        """
        return self._content("items", True)

    @property
    def has_categories(self) -> bool:
        """Whether the events carry categories (from the log, or derived from co-occurrence).

        A dataset prepared before ``meta.json`` recorded its content has them unless its
        ``category_source`` says ``none``.
        """
        return self._content("categories", self.meta.get("category_source") != "none")

    @property
    def has_value(self) -> bool:
        """Whether ``events`` has a monetary ``value`` column (float64, NaN where unknown)."""
        return self._content("value", False) and "value" in self.events.columns

    @property
    def item_category(self) -> np.ndarray:
        """(n_items,) int32 category index of each item."""
        return self.items["category"].to_numpy(np.int32)

    def split_events(self, split: str) -> pd.DataFrame:
        """Events of one split (``train``, ``valid`` or ``test``), sorted by (session, step)."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        mask = self.events["split"].to_numpy() == SPLITS.index(split)
        return self.events.loc[mask]

    def sessions(self, split: str | None = None) -> SessionArrays:
        """Sessions of one split (or of all events) as CSR arrays.

        A session is never shared between splits (preparation cuts a session that straddles
        a cut-off into two), so the arrays of a split hold whole sessions.
        """
        frame = self.events if split is None else self.split_events(split)
        return session_arrays(frame)


def session_arrays(frame: pd.DataFrame) -> SessionArrays:
    """Turn an events frame sorted by (session, step) into :class:`SessionArrays`."""
    session = frame["session"].to_numpy(np.int64)
    if len(session) == 0:
        starts = np.zeros(0, dtype=np.int64)
    else:
        # Sorted by session, so a new session starts wherever the id changes.
        starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]]).astype(np.int64)
    offsets = np.append(starts, len(session)).astype(np.int64)
    return SessionArrays(
        offsets=offsets,
        user=frame["user"].to_numpy(np.int32)[starts],
        items=frame["item"].to_numpy(np.int32),
        categories=frame["category"].to_numpy(np.int32),
        events=frame["event"].to_numpy(np.int8),
        timestamps=frame["timestamp"].to_numpy(np.int64),
    )


def load_dataset(path: str | os.PathLike[str]) -> PreparedDataset:
    """Load a PreparedDataset directory in one call.

    Raises:
        UserError: If the directory is missing, incomplete, or of another schema version.
    """
    root = Path(path)
    meta_path = root / META_FILE
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset directory; create one with 'rlrec data prepare'")
    if not meta_path.is_file():
        raise UserError(
            f"{root}: not a prepared dataset (no {META_FILE}); "
            "create one with 'rlrec data prepare' or 'rlrec data synth'"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = (
            f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        )
        raise UserError(f"{meta_path}: invalid JSON{where}; prepare the data again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: expected a JSON object; prepare the data again")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{meta_path}: schema_version {quote_value(version)}, this rlrec reads "
            f"{SCHEMA_VERSION}; prepare the data again with this version"
        )
    _check_meta(meta_path, meta)
    tables = {}
    for name in TABLE_FILES:
        file = root / name
        if not file.is_file():
            raise UserError(f"{root}: missing {name}; prepare the data again")
        tables[name] = _read_table(file)
    events = tables["events.parquet"]
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise UserError(f"{root / 'events.parquet'}: missing columns {missing}; prepare again")
    _check_tables(root, tables, meta)
    return PreparedDataset(
        path=root,
        events=events,
        users=tables["users.parquet"],
        items=tables["items.parquet"],
        categories=tables["categories.parquet"],
        meta=meta,
    )


def _read_table(file: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(file)
    except (OSError, ValueError, pa.ArrowException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(
            f"{file}: not a readable Parquet table ({first}); prepare the data again"
        ) from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_meta(meta_path: Path, meta: dict[str, Any]) -> None:
    """The parts of ``meta.json`` that later stages read have the right types."""
    redo = "prepare the data again (or fix the file)"
    # ``source`` is free-form (a dict from preparation, a plain label from write_dataset).
    for key in ("rows", "vocab", "split"):
        if key in meta and not isinstance(meta[key], dict):
            raise UserError(f"{meta_path}: {key} must be a JSON object; {redo}")
    rows = meta.get("rows", {})
    for key in ("read", "kept"):
        if key in rows and not _is_count(rows[key]):
            raise UserError(
                f"{meta_path}: rows.{key} must be a count, got {quote_value(rows[key])}; {redo}"
            )
    dropped = rows.get("dropped", {})
    if not isinstance(dropped, dict) or not all(_is_count(v) for v in dropped.values()):
        raise UserError(f"{meta_path}: rows.dropped must map reasons to counts; {redo}")
    for key, value in meta.get("vocab", {}).items():
        if not _is_count(value):
            raise UserError(
                f"{meta_path}: vocab.{key} must be a count, got {quote_value(value)}; {redo}"
            )


def _check_tables(root: Path, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> None:
    """The tables agree with each other and with ``meta.json``.

    A file copied in from another dataset, or from another table of this one, loads as
    Parquet but would give wrong counts (or out-of-range indices) later; it is refused here,
    in the loader, so that every command sees the same message.
    """
    redo = "the dataset's files do not belong together; prepare the data again"
    for name, columns in TABLE_COLUMNS.items():
        absent = [c for c in columns if c not in tables[name].columns]
        if absent:
            raise UserError(f"{root / name}: missing columns {absent}; {redo}")
    events = tables["events.parquet"]
    events_file = root / "events.parquet"
    for column in EVENT_COLUMNS:
        if not pd.api.types.is_integer_dtype(events[column].dtype):
            raise UserError(
                f"{events_file}: column {column!r} is {events[column].dtype}, expected integers; "
                f"{redo}"
            )
    sizes = {
        "user": len(tables["users.parquet"]),
        "item": len(tables["items.parquet"]),
        "category": len(tables["categories.parquet"]),
        "event": len(EVENT_TYPES),
        "split": len(SPLITS),
    }
    for column, size in sizes.items():
        values = events[column].to_numpy()
        if len(values) and (values.min() < 0 or values.max() >= size):
            raise UserError(
                f"{events_file}: column {column!r} holds {int(values.min())}..{int(values.max())}, "
                f"outside 0..{size - 1} (the vocabulary); {redo}"
            )
    if "value" in events.columns and not pd.api.types.is_float_dtype(events["value"].dtype):
        raise UserError(
            f"{events_file}: column 'value' is {events['value'].dtype}, expected float64; {redo}"
        )
    item_category = tables["items.parquet"]["category"].to_numpy()
    if len(item_category) and (item_category.min() < 0 or item_category.max() >= sizes["category"]):
        raise UserError(
            f"{root / 'items.parquet'}: category outside 0..{sizes['category'] - 1}; {redo}"
        )
    vocab = meta.get("vocab")
    if isinstance(vocab, dict):
        for key, table in (("users", "users"), ("items", "items"), ("categories", "categories")):
            n = len(tables[f"{table}.parquet"])
            if key in vocab and vocab[key] != n:
                raise UserError(
                    f"{root / (table + '.parquet')}: {n} rows, {META_FILE} says "
                    f"{quote_value(vocab[key])}; {redo}"
                )
    rows = meta.get("rows")
    kept = rows.get("kept") if isinstance(rows, dict) else None
    if kept is not None and kept != len(events):
        raise UserError(
            f"{events_file}: {len(events)} events, {META_FILE} says {quote_value(kept)} kept; "
            f"{redo}"
        )


def write_dataset(
    out: str | os.PathLike[str],
    events: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    categories: pd.DataFrame,
    meta: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    force: bool = False,
) -> Path:
    """Write a PreparedDataset atomically from in-memory tables.

    Large logs are written by the out-of-core preparation path instead; this is for the
    synthetic generator and for tests. ``meta`` gets ``schema_version`` and vocabulary sizes
    filled in. ``extra_files`` (name -> bytes) are written beside the tables, e.g. the
    synthetic generator's ground truth. An existing dataset at ``out`` is replaced only with
    ``force`` (see :func:`rlrec.fsutil.atomic_directory`).
    """
    with atomic_directory(out, "dataset", force) as tmp:
        events = events.astype({c: t for c, t in EVENT_COLUMNS.items()})
        events.to_parquet(tmp / "events.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        categories.to_parquet(tmp / "categories.parquet", index=False)
        for name, blob in (extra_files or {}).items():
            (tmp / name).write_bytes(blob)
        full_meta = {"schema_version": SCHEMA_VERSION, **meta}
        full_meta.setdefault("event_types", list(EVENT_TYPES))
        full_meta.setdefault(
            "vocab",
            {
                "users": len(users),
                "items": len(items),
                "categories": len(categories),
                "sessions": int(events["session"].nunique()),
            },
        )
        # meta.json last: its presence is what makes the directory a dataset.
        write_json_atomic(tmp / META_FILE, full_meta)
    return Path(out)
