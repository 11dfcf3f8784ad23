"""The canonical event schema and the PreparedDataset column layout.

A raw log, whatever its format, is mapped onto these canonical fields before anything else
happens. After preparation every id is a contiguous integer index; the raw ids live in the
vocabulary tables (``users.parquet``, ``items.parquet``, ``categories.parquet``).
"""

from __future__ import annotations

__all__ = [
    "CANONICAL_FIELDS",
    "EVENT_ALIASES",
    "EVENT_CODE",
    "EVENT_COLUMNS",
    "EVENT_TYPES",
    "NO_ITEM",
    "OPTIONAL_EVENT_COLUMNS",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "SCHEMA_VERSION",
    "SPLITS",
    "UNKNOWN_CATEGORY",
]

SCHEMA_VERSION = 1
"""Version of the on-disk PreparedDataset layout; bumped on any incompatible change."""

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "fav", "buy")
"""Canonical event types; an event's code is its index in this tuple."""

EVENT_CODE: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}

EVENT_ALIASES: dict[str, str] = {
    # Taobao UserBehavior
    "pv": "view",
    # RetailRocket
    "addtocart": "cart",
    "transaction": "buy",
    # common spellings
    "purchase": "buy",
    "order": "buy",
    "favorite": "fav",
    "favourite": "fav",
    "add_to_cart": "cart",
    "page_view": "view",
    "pageview": "view",
}
"""Raw event names accepted besides the canonical ones (matched case-insensitively)."""

UNKNOWN_CATEGORY = "__unknown__"
"""Raw id given to the category of events whose category is missing."""

SPLITS: tuple[str, ...] = ("train", "valid", "test")
"""Split names; a split's code in ``events.parquet`` is its index here."""

NO_ITEM = "__none__"
"""Raw id of the one placeholder item of a log without items (user and time only): the
pipeline sessionizes it like any log, but ``PreparedDataset.has_items`` is False, and stages
that need items refuse it (``rlrec.data.content.require_items``)."""

REQUIRED_FIELDS: tuple[str, ...] = ("user", "time")
OPTIONAL_FIELDS: tuple[str, ...] = (
    "item",
    "value",
    "category",
    "event",
    "session",
    "position",
    "propensity",
    "reward",
)
CANONICAL_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS

# Columns of events.parquet, sorted by (session, step). All ids are contiguous indices.
EVENT_COLUMNS: dict[str, str] = {
    "user": "int32",  # index into users.parquet
    "session": "int64",  # contiguous, ordered by (user, session start)
    "step": "int32",  # 0-based position of the event within its session
    "item": "int32",  # index into items.parquet
    "category": "int32",  # index into categories.parquet
    "event": "int8",  # code into EVENT_TYPES
    "timestamp": "int64",  # milliseconds since the Unix epoch (or since an arbitrary origin)
    "split": "int8",  # code into SPLITS
}
OPTIONAL_EVENT_COLUMNS: dict[str, str] = {
    "position": "int16",
    "propensity": "float64",
    "reward": "float32",
    "value": "float64",  # monetary value of the event; NaN where the log has none
}
