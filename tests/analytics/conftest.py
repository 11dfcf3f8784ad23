"""Small logs for the analytics tests: hand-made tables and planted synthetic worlds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.data.dataset import PreparedDataset, load_dataset, write_dataset
from rlrec.models.ground_truth import PlantedChange, PlantedTrend, SyntheticConfig
from rlrec.models.synthetic import generate_dataset

DAY_MS = 86_400_000
T0 = 1_511_568_000_000  # 2017-11-25 00:00 UTC


def write_log(
    out: Path,
    user: np.ndarray,
    category: np.ndarray,
    timestamp: np.ndarray,
    item: np.ndarray | None = None,
    categories: list[str] | None = None,
) -> PreparedDataset:
    """A PreparedDataset of one event per row (each user's events one session per day)."""
    order = np.lexsort((timestamp, user))
    user, category, timestamp = user[order], category[order], timestamp[order]
    item = np.arange(len(user)) if item is None else item[order]
    day = (timestamp - T0) // DAY_MS
    session = np.cumsum(np.r_[True, (user[1:] != user[:-1]) | (day[1:] != day[:-1])]) - 1
    step = np.arange(len(user)) - np.flatnonzero(np.r_[True, session[1:] != session[:-1]])[session]
    n_items = int(item.max()) + 1
    names = categories or [f"c{c}" for c in range(int(category.max()) + 1)]
    events = pd.DataFrame(
        {
            "user": user,
            "session": session,
            "step": step,
            "item": item,
            "category": category,
            "event": np.zeros(len(user), dtype=np.int8),
            "timestamp": timestamp,
            "split": np.zeros(len(user), dtype=np.int8),
        }
    )
    item_category = np.zeros(n_items, dtype=np.int64)
    item_category[item] = category
    write_dataset(
        out,
        events,
        pd.DataFrame(
            {
                "user": np.arange(int(user.max()) + 1),
                "raw_id": [f"u{u}" for u in range(int(user.max()) + 1)],
            }
        ),
        pd.DataFrame(
            {
                "item": np.arange(n_items),
                "raw_id": [str(i) for i in range(n_items)],
                "category": item_category,
            }
        ),
        pd.DataFrame({"category": np.arange(len(names)), "raw_id": names}),
        {"source": "test"},
    )
    return load_dataset(out)


@pytest.fixture
def make_log(tmp_path: Path) -> Callable[..., PreparedDataset]:
    """Build a hand-made dataset under tmp_path."""
    counter = iter(range(1000))

    def make(*args, **kwargs) -> PreparedDataset:  # type: ignore[no-untyped-def]
        return write_log(tmp_path / f"log{next(counter)}", *args, **kwargs)

    return make


@pytest.fixture(scope="session")
def planted_trend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 synthetic users; category c10's odds grow by e^1.5 over the log."""
    out = tmp_path_factory.mktemp("analytics") / "trend"
    config = SyntheticConfig(n_users=1500, seed=1, trend=PlantedTrend(category=10, growth=1.5))
    return generate_dataset(out, config)


@pytest.fixture(scope="session")
def null_worlds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four synthetic worlds of 1,500 users with nothing planted (seeds 0-3)."""
    root = tmp_path_factory.mktemp("analytics-null")
    return [
        generate_dataset(root / f"null{seed}", SyntheticConfig(n_users=1500, seed=seed))
        for seed in range(4)
    ]


@pytest.fixture(scope="session")
def planted_change(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 synthetic users; the switch matrix changes at the median session start."""
    out = tmp_path_factory.mktemp("analytics") / "change"
    config = SyntheticConfig(n_users=1500, seed=2, change_point=PlantedChange(at=0.5, strength=0.6))
    return generate_dataset(out, config)


@pytest.fixture(scope="session")
def default_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic world (2,000 users, no planted effect)."""
    out = tmp_path_factory.mktemp("analytics") / "default"
    return generate_dataset(out, SyntheticConfig(seed=0))
