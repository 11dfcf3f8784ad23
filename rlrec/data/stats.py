"""Summary statistics of a PreparedDataset (the ``rlrec data stats`` contract).

:func:`dataset_stats` returns a JSON-ready dict with at least the integer keys ``rows_read``,
``rows_dropped``, ``events``, ``users``, ``sessions``, ``items``, ``categories`` and
``session_length`` (quantiles), ``event_mix``, ``top_categories`` and
``category_continuation_rate``; ``has_items``, ``has_categories``, ``has_value``, ``value``
(sum, mean, counts; None without a value column) and ``time_range`` (ISO 8601 UTC). A log
without items reports 0 items and categories and no top categories (its one placeholder item
is not a real one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rlrec.data.dataset import PreparedDataset
from rlrec.data.schema import EVENT_TYPES, SPLITS, UNKNOWN_CATEGORY

__all__ = [
    "SESSION_LENGTH_QUANTILES",
    "TOP_CATEGORIES",
    "category_continuation_rate",
    "dataset_stats",
]

SESSION_LENGTH_QUANTILES: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 0.99)
TOP_CATEGORIES = 10


def category_continuation_rate(
    session: np.ndarray, item: np.ndarray, category: np.ndarray, unknown: int | None
) -> tuple[float | None, int]:
    """Share of within-session steps that stay in the same category.

    A step is a maximal run of consecutive events on the same item (a view and the cart or
    buy that follow it; see the user model in ``docs/architecture.md``), so a funnel on one
    item does not count as staying. Transitions from or to the unknown category are left out:
    whether they stay is not known.

    Args:
        session: (E,) session index of each event, sorted by (session, step).
        item: (E,) item index of each event.
        category: (E,) category index of each event.
        unknown: Index of the unknown category, or None if the dataset has none.

    Returns:
        ``(rate, transitions)``: the rate (None when there is no transition) and how many
        step-to-step transitions it is computed from.
    """
    if len(session) == 0:
        return None, 0
    new_step = np.r_[True, (session[1:] != session[:-1]) | (item[1:] != item[:-1])]
    step_session = session[new_step]
    step_category = category[new_step]
    same_session = step_session[1:] == step_session[:-1]
    known = np.ones(len(step_category) - 1, dtype=bool)
    if unknown is not None:
        known = (step_category[1:] != unknown) & (step_category[:-1] != unknown)
    valid = same_session & known
    n = int(valid.sum())
    if n == 0:
        return None, 0
    stay = (step_category[1:] == step_category[:-1]) & valid
    return float(stay.sum() / n), n


def dataset_stats(ds: PreparedDataset) -> dict[str, Any]:
    """Counts, session lengths, event mix, top categories and category continuation.

    Args:
        ds: A loaded dataset.

    Returns:
        A JSON-ready dict (see the module docstring for the guaranteed keys).
    """
    ev = ds.events
    meta = ds.meta
    rows = meta.get("rows", {})
    source = meta.get("source")
    dropped = {str(k): int(v) for k, v in rows.get("dropped", {}).items()}
    session = ev["session"].to_numpy(np.int64)
    n_events = len(ev)
    lengths = np.bincount(session) if n_events else np.zeros(0, dtype=np.int64)
    lengths = lengths[lengths > 0]
    if len(lengths):
        qs = np.quantile(lengths, SESSION_LENGTH_QUANTILES)
        session_length: dict[str, float] = {
            "min": int(lengths.min()),
            **{
                f"p{round(q * 100)}": float(v)
                for q, v in zip(SESSION_LENGTH_QUANTILES, qs, strict=True)
            },
            "max": int(lengths.max()),
            "mean": float(lengths.mean()),
        }
    else:
        session_length = {}
    codes = np.bincount(ev["event"].to_numpy(np.int64), minlength=len(EVENT_TYPES))
    event_counts = {name: int(codes[i]) for i, name in enumerate(EVENT_TYPES)}
    event_mix = {name: (event_counts[name] / n_events if n_events else 0.0) for name in EVENT_TYPES}

    category = ev["category"].to_numpy(np.int64)
    cat_counts = np.bincount(category, minlength=ds.n_categories)
    raw = ds.categories.set_index("category")["raw_id"]
    order = np.lexsort((np.arange(len(cat_counts)), -cat_counts))[:TOP_CATEGORIES]
    top = [
        {
            "category": int(c),
            "raw_id": str(raw.get(c, "")),
            "events": int(cat_counts[c]),
            "share": float(cat_counts[c] / n_events) if n_events else 0.0,
        }
        for c in order
        if cat_counts[c] > 0
    ]
    unknown_rows = ds.categories.loc[ds.categories["raw_id"] == UNKNOWN_CATEGORY, "category"]
    unknown = int(unknown_rows.iloc[0]) if len(unknown_rows) else None
    rate, transitions = category_continuation_rate(
        session, ev["item"].to_numpy(np.int64), category, unknown
    )
    if not ds.has_items:
        # One placeholder item: never shown as a real item, category or transition.
        top, rate, transitions = [], None, 0
    split_codes = ev["split"].to_numpy(np.int64)
    splits = {}
    for code, name in enumerate(SPLITS):
        mask = split_codes == code
        splits[name] = {"events": int(mask.sum()), "sessions": len(np.unique(session[mask]))}
    return {
        "path": str(ds.path),
        "preset": source.get("preset") if isinstance(source, dict) else source,
        "rows_read": int(rows.get("read", n_events)),
        "rows_kept": int(rows.get("kept", n_events)),
        "rows_dropped": int(sum(dropped.values())),
        "dropped": dropped,
        "events": int(n_events),
        "users": int(ds.n_users),
        "sessions": len(lengths),
        "items": int(ds.n_items) if ds.has_items else 0,
        "categories": int(ds.n_categories) if ds.has_items else 0,
        "has_items": ds.has_items,
        "has_categories": ds.has_categories,
        "has_value": ds.has_value,
        "value": _value_stats(ev) if ds.has_value else None,
        "category_source": meta.get("category_source"),
        "session_length": session_length,
        "event_mix": event_mix,
        "event_counts": event_counts,
        "top_categories": top,
        "category_continuation_rate": rate,
        "category_transitions": transitions,
        "splits": splits,
        "time_range_ms": meta.get("time_range_ms"),
        "time_range": _iso_range(meta.get("time_range_ms")),
    }


def _value_stats(ev: pd.DataFrame) -> dict[str, float | int]:
    """Sum, mean (over events with a value), and counts of the events' monetary value."""
    value = ev["value"].to_numpy(np.float64)
    known = ~np.isnan(value)
    n = int(known.sum())
    return {
        "sum": float(value[known].sum()),
        "mean": float(value[known].mean()) if n else 0.0,
        "events_with_value": n,
        "missing": int(len(value) - n),
    }


def _iso_range(span: Any) -> list[str] | None:
    """``time_range_ms`` as two ISO 8601 UTC date-times, or None."""
    if not (isinstance(span, list) and len(span) == 2):
        return None
    return [
        pd.Timestamp(int(t), unit="ms", tz="UTC").isoformat().replace("+00:00", "Z") for t in span
    ]
