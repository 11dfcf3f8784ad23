"""Fixtures for the encoder tests: a tiny PreparedDataset with a learnable sequence structure.

The world: ``K`` categories of ``m`` items each. A session starts in a random category; after
one step in a category the user stays with probability 0.9, after two or more steps it always
switches (streak saturation), usually to the next category ``(c + 1) mod K``. A first-order
category model cannot see the streak, so a sequence model that does beats it. Each step emits
a view and sometimes a cart of the same item, so collapsing repeats matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rlrec.data.dataset import PreparedDataset, load_dataset, write_dataset


def make_sequence_dataset(
    out: Path,
    n_sessions: int = 400,
    n_categories: int = 4,
    items_per_category: int = 5,
    seed: int = 0,
    raw_prefix: str = "i",
) -> Path:
    """Write the cyclic-interest dataset described in the module docstring to ``out``."""
    rng = np.random.default_rng(seed)
    n_items = n_categories * items_per_category
    item_category = np.repeat(np.arange(n_categories), items_per_category)
    # Zipf-like popularity within each category.
    weights = 1.0 / np.arange(1, items_per_category + 1)
    weights /= weights.sum()
    rows = []
    ts = 0
    for s in range(n_sessions):
        user = s % 50
        split = 0 if s < 0.7 * n_sessions else (1 if s < 0.85 * n_sessions else 2)
        c = int(rng.integers(n_categories))
        streak = 1
        step = 0
        for t in range(int(rng.integers(4, 13))):
            if t > 0:
                stay = 0.9 if streak == 1 else 0.0
                if rng.random() < stay:
                    streak += 1
                else:
                    if rng.random() < 0.8:
                        c = (c + 1) % n_categories
                    else:
                        others = [k for k in range(n_categories) if k != c]
                        c = int(rng.choice(others))
                    streak = 1
            item = int(c * items_per_category + rng.choice(items_per_category, p=weights))
            n_events = 2 if rng.random() < 0.3 else 1
            for e in range(n_events):
                ts += 1000
                rows.append((user, s, step, item, c, 0 if e == 0 else 2, ts, split))
                step += 1
    events = pd.DataFrame(
        rows,
        columns=["user", "session", "step", "item", "category", "event", "timestamp", "split"],
    )
    users = pd.DataFrame({"user": np.arange(50), "raw_id": [f"u{u}" for u in range(50)]})
    counts = np.bincount(events["item"], minlength=n_items)
    items = pd.DataFrame(
        {
            "item": np.arange(n_items),
            "raw_id": [f"{raw_prefix}{i}" for i in range(n_items)],
            "category": item_category,
            "count": counts,
        }
    )
    categories = pd.DataFrame(
        {
            "category": np.arange(n_categories),
            "raw_id": [f"c{c}" for c in range(n_categories)],
            "count": np.bincount(events["category"], minlength=n_categories),
        }
    )
    return write_dataset(out, events, users, items, categories, {"source": "test-cyclic"})


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    # Encoder tests use tiny tensors: one thread is fastest, and torch's thread pool slows
    # down by an order of magnitude when the machine's CPUs are shared with other jobs.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def make_seq_dataset() -> Callable[..., Path]:
    """The factory :func:`make_sequence_dataset` (test modules cannot import a conftest)."""
    return make_sequence_dataset


@pytest.fixture(scope="session")
def seq_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sequence_dataset(tmp_path_factory.mktemp("seq") / "ds")


@pytest.fixture(scope="session")
def seq_dataset(seq_dataset_dir: Path) -> PreparedDataset:
    return load_dataset(seq_dataset_dir)
