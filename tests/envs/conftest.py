"""Small hand-built SimModels and PreparedDatasets for the env tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rlrec.data.dataset import PreparedDataset, load_dataset, write_dataset
from rlrec.models.sim_model import SimModel

K = 4
N_ITEMS = 20
N_DATASET_ITEMS = 25  # 20 catalog items + 5 that only appear in logs


def make_sim_model(seed: int = 0, **overrides: Any) -> SimModel:
    """A valid SimModel: K=4 categories, 20 catalog items (dataset items 0..19)."""
    rng = np.random.default_rng(seed)
    switch = rng.random((K, K)) + 0.1
    np.fill_diagonal(switch, 0.0)
    switch /= switch.sum(axis=1, keepdims=True)
    item_category = np.arange(N_ITEMS) % K
    pop = rng.random(N_ITEMS) + 0.05
    pop /= np.bincount(item_category, weights=pop, minlength=K)[item_category]
    kwargs: dict[str, Any] = {
        "category_ids": ("c0", "c1", "c2", "c3"),
        "switch_matrix": switch,
        "stay_by_streak": np.array([0.8, 0.7, 0.5, 0.3]),
        "initial_category": np.array([0.4, 0.3, 0.2, 0.1]),
        "leave_hazard": np.array([0.02, 0.04, 0.06, 0.08, 0.1]),
        "item_ids": np.arange(N_ITEMS, dtype=np.int64),
        "item_category": item_category.astype(np.int64),
        "item_popularity": pop,
        "p_cart": np.array([0.2, 0.1, 0.3, 0.15]),
        "p_buy": np.array([0.05, 0.02, 0.1, 0.04]),
        "category_of_dataset_category": np.arange(K, dtype=np.int64),
        "engage_base_rate": 0.3,
        "leave_engaged_factor": 0.7,
        "leave_miss_factor": 1.2,
    }
    kwargs.update(overrides)
    return SimModel(**kwargs)


# Logged sessions: (split, [(item, category), ...]); consecutive repeats are one step.
SESSIONS: list[tuple[int, list[tuple[int, int]]]] = [
    (0, [(1, 1), (1, 1), (5, 1), (22, 2), (2, 2), (3, 3)]),  # 5 steps (item 1 twice)
    (0, [(4, 0), (8, 0), (12, 0), (21, 1)]),  # 4 steps
    (0, [(7, 3)]),  # 1 step
    (1, [(9, 1), (10, 2)]),  # valid
    (2, [(11, 3), (15, 3), (24, 0)]),  # test
]


def write_tiny_dataset(out: Path) -> PreparedDataset:
    rows = []
    for session, (split, events) in enumerate(SESSIONS):
        for step, (item, category) in enumerate(events):
            rows.append(
                {
                    "user": session % 3,
                    "session": session,
                    "step": step,
                    "item": item,
                    "category": category,
                    "event": 0,
                    "timestamp": 1_000 * (10 * session + step),
                    "split": split,
                }
            )
    events = pd.DataFrame(rows)
    item_category = [i % K for i in range(N_ITEMS)] + [1, 1, 2, 3, 0]
    items = pd.DataFrame(
        {
            "item": np.arange(N_DATASET_ITEMS),
            "raw_id": [f"i{i}" for i in range(N_DATASET_ITEMS)],
            "category": item_category,
            "count": np.ones(N_DATASET_ITEMS, dtype=np.int64),
        }
    )
    categories = pd.DataFrame(
        {"category": np.arange(K), "raw_id": [f"c{i}" for i in range(K)], "count": [1] * K}
    )
    users = pd.DataFrame({"user": [0, 1, 2], "raw_id": ["u0", "u1", "u2"]})
    write_dataset(out, events, users, items, categories, {"source": "test"})
    return load_dataset(out)


@pytest.fixture
def sim_model() -> SimModel:
    return make_sim_model()


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> PreparedDataset:
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture
def sim_dir(tmp_path: Path, sim_model: SimModel) -> Path:
    return sim_model.save(tmp_path / "sim")
