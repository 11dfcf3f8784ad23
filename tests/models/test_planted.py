from __future__ import annotations

import numpy as np
import pytest

from rlrec.config import from_mapping
from rlrec.models.ground_truth import PlantedChange, PlantedTrend, SyntheticConfig
from rlrec.models.planted import changed_switch_matrix
from rlrec.models.synthetic import generate_events, true_model


def test_planted_trend_grows_the_category_and_keeps_items_consistent() -> None:
    base = SyntheticConfig(n_users=300, seed=5)
    planted = SyntheticConfig(n_users=300, seed=5, trend=PlantedTrend(category=3, growth=2.0))
    frame0, truth0 = generate_events(base)
    frame, truth = generate_events(planted)
    assert truth0.planted == {} and truth.planted["trend"] == {"category": "c3", "growth": 2.0}
    # Times, users, sessions and event kinds are the unplanted log's; only categories move.
    for column in ("user", "time", "session", "event"):
        assert np.array_equal(frame[column].to_numpy(), frame0[column].to_numpy()), column
    early = frame["time"] < frame["time"].quantile(0.3)
    late = frame["time"] > frame["time"].quantile(0.7)
    share = lambda rows: (frame.loc[rows, "category"] == "c3").mean()  # noqa: E731
    assert share(late) > 2 * share(early)
    model = true_model(planted)
    item_category = np.asarray(model.item_category)[frame["item"].to_numpy()]
    assert np.array_equal(
        np.asarray(model.category_ids)[item_category], frame["category"].astype(str).to_numpy()
    )


def test_planted_change_records_the_new_matrix_and_date() -> None:
    config = SyntheticConfig(n_users=200, seed=1, change_point=PlantedChange(at=0.4, strength=1.0))
    _, truth = generate_events(config)
    after = np.asarray(truth.planted["change_point"]["switch_after"])
    assert np.allclose(after, changed_switch_matrix(truth.model.switch_matrix, 1.0, 1))
    assert np.allclose(after.sum(axis=1), 1.0) and np.allclose(np.diag(after), 0.0)
    assert truth.planted["change_point"]["date"].startswith("2017-")


def test_planted_config_round_trips_and_is_checked() -> None:
    config = from_mapping(
        SyntheticConfig, {"trend": {"category": 2, "growth": 1.0}, "change_point": {"at": 0.5}}
    )
    assert config.trend == PlantedTrend(2, 1.0) and config.change_point == PlantedChange(0.5, 1.0)
    with pytest.raises(ValueError, match=r"trend\.category"):
        SyntheticConfig(trend=PlantedTrend(category=99))
    with pytest.raises(ValueError, match=r"change_point\.at"):
        SyntheticConfig(change_point=PlantedChange(at=1.5))
