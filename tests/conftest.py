"""Shared fixtures: where the real sample data lives, and the rule for when it is absent.

Real logs live in ``../shared/data`` beside the project. Tests that need them skip with a
reason when it is absent, except under ``CI=true``, where a missing ``../shared`` is an error:
no real-data test may silently skip in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """Path of a real-data file under ``../shared/data``; skips (or fails in CI) if missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {path} is missing: CI must have ../shared beside the clone")
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the project)")
    return path


@pytest.fixture
def taobao_csv() -> Path:
    """The 10,000-row Taobao UserBehavior sample."""
    return shared_data("taobao_sample/UserBehavior.csv")


@pytest.fixture
def diginetica_csv() -> Path:
    """The DIGINETICA train-item-views sample (no categories)."""
    return shared_data("diginetica_sample/train-item-views.csv")


@pytest.fixture
def obd_dir() -> Path:
    """The Open Bandit Dataset sample folder (random.csv, bts.csv, reference results)."""
    return shared_data("obd_all")


@pytest.fixture(scope="session")
def serving_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny trained runs and their serving exports (``tests/serving/fixtures.py``)."""
    from tests.serving.fixtures import build_world  # torch and SB3 load only when used

    return build_world(tmp_path_factory.mktemp("serving"))
