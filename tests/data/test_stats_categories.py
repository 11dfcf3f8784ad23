"""Dataset statistics and co-occurrence categories on small hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.data.categories import cooccurrence_categories
from rlrec.data.dataset import load_dataset, write_dataset
from rlrec.data.schema import UNKNOWN_CATEGORY
from rlrec.data.stats import category_continuation_rate, dataset_stats


def test_continuation_rate_counts_steps_not_events() -> None:
    # Session 0: items 1,1 (one step, a view then a cart), 2, 3; categories A A A B.
    # Steps: (1:A) -> (2:A) stays, (2:A) -> (3:B) switches. Session 1: one step, no transition.
    session = np.array([0, 0, 0, 0, 1])
    item = np.array([1, 1, 2, 3, 4])
    category = np.array([0, 0, 0, 1, 0])
    rate, n = category_continuation_rate(session, item, category, unknown=None)
    assert (rate, n) == (0.5, 2)
    # Transitions touching the unknown category are not counted.
    rate, n = category_continuation_rate(session, item, np.array([0, 0, 0, 2, 0]), unknown=2)
    assert (rate, n) == (1.0, 1)
    assert category_continuation_rate(session[:0], item[:0], category[:0], None) == (None, 0)


def test_dataset_stats_on_a_hand_made_dataset(tmp_path: Path) -> None:
    events = pd.DataFrame(
        {
            "user": [0, 0, 0, 1, 1],
            "session": [0, 0, 1, 2, 2],
            "step": [0, 1, 0, 0, 1],
            "item": [0, 1, 0, 2, 2],
            "category": [0, 0, 0, 1, 1],
            "event": [0, 0, 0, 0, 4],
            "timestamp": [1, 2, 3, 4, 5],
            "split": [0, 0, 1, 2, 2],
        }
    )
    users = pd.DataFrame({"user": [0, 1], "raw_id": ["a", "b"]})
    items = pd.DataFrame(
        {"item": [0, 1, 2], "raw_id": ["x", "y", "z"], "category": [0, 0, 1], "count": [2, 1, 2]}
    )
    cats = pd.DataFrame({"category": [0, 1], "raw_id": ["c0", UNKNOWN_CATEGORY], "count": [3, 2]})
    meta = {"rows": {"read": 7, "kept": 5, "dropped": {"exact_duplicate": 2}}}
    ds = load_dataset(write_dataset(tmp_path / "ds", events, users, items, cats, meta))
    stats = dataset_stats(ds)
    assert stats["rows_read"] == 7 and stats["rows_dropped"] == 2 and stats["events"] == 5
    assert (stats["users"], stats["sessions"], stats["items"], stats["categories"]) == (2, 3, 3, 2)
    assert stats["session_length"]["min"] == 1 and stats["session_length"]["max"] == 2
    assert stats["event_mix"]["view"] == pytest.approx(0.8)
    assert stats["event_mix"]["buy"] == pytest.approx(0.2)
    assert stats["top_categories"][0] == {"category": 0, "raw_id": "c0", "events": 3, "share": 0.6}
    # Session 0: x -> y, both c0 (stay). Session 2 is one step on item z. Unknown excluded.
    assert stats["category_continuation_rate"] == 1.0 and stats["category_transitions"] == 1
    assert stats["splits"]["test"] == {"events": 2, "sessions": 1}


def _two_cliques(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src, dst = [], []
    for offset in (0, size):
        for a in range(size):
            for b in range(a + 1, size):
                src.append(offset + a)
                dst.append(offset + b)
    src.append(0)  # one weak bridge between the cliques
    dst.append(size)
    weight = np.ones(len(src))
    weight[-1] = 0.1
    return np.array(src), np.array(dst), weight


def test_cooccurrence_finds_two_cliques_deterministically() -> None:
    src, dst, w = _two_cliques(6)
    labels = cooccurrence_categories(src, dst, w, n_items=14, seed=1)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:12])) == 1
    assert labels[0] != labels[6]
    assert (labels[12:] == -1).all()  # isolated items stay unknown
    np.testing.assert_array_equal(labels, cooccurrence_categories(src, dst, w, 14, seed=1))
    assert sorted(set(labels[:12])) == [0, 1]


def test_cooccurrence_caps_categories_and_sizes() -> None:
    src, dst, w = _two_cliques(5)
    one = cooccurrence_categories(src, dst, w, n_items=10, seed=0, max_categories=1)
    assert set(one) == {0, -1} and (one == 0).sum() == 5
    none = cooccurrence_categories(src, dst, w, n_items=10, seed=0, min_size=6)
    assert (none == -1).all()
    with pytest.raises(ValueError, match="same shape"):
        cooccurrence_categories(src, dst[:-1], w, n_items=10)
