from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlrec.analytics.demand import DemandResult, demand_forecast, forecast_errors, season_length
from rlrec.analytics.periods import DAY_MS, period_log
from rlrec.data import load_dataset


def test_errors_by_hand() -> None:
    y = np.array([[10.0, 0.0], [5.0, 5.0]])
    f = np.array([[8.0, 1.0], [5.0, 10.0]])
    e = forecast_errors(y, f)
    assert e["wape"] == pytest.approx((2 + 1 + 0 + 5) / 20)
    assert e["mape"] == pytest.approx((0.2 + 0.0 + 1.0) / 3)


def test_season_length() -> None:
    assert season_length(DAY_MS) == 7
    assert season_length(3_600_000) == 24
    assert season_length(7 * DAY_MS) is None


def test_model_beats_last_period_on_synthetic(default_world: Path) -> None:
    log = period_log(load_dataset(default_world), DAY_MS)
    result = demand_forecast(log)
    assert isinstance(result, DemandResult)
    model, last = result.metrics["model"], result.metrics["last_period"]
    assert model["wape"] < last["wape"], result.metrics
    assert 0.8 <= result.coverage <= 1.0
    table = result.table
    assert set(table["kind"]) == {"holdout", "forecast"}
    future = table[table["kind"] == "forecast"]
    assert future["actual"].isna().all() and (future["low"] <= future["model"]).all()
    # Totals per event type are the last period's: the model only redistributes them.
    hold = table[table["kind"] == "holdout"]
    first = hold[hold["period"] == hold["period"].min()]
    sums = first.groupby("event")[["model", "last_period"]].sum()
    assert np.allclose(sums["model"], sums["last_period"])


def test_too_few_complete_periods_is_a_reason(make_log) -> None:
    # 12-hour periods over 01:00 day 1 .. 23:00 day 2: four periods, the two middle complete.
    rng = np.random.default_rng(0)
    hour = 3_600_000
    ts = 1_511_568_000_000 + np.r_[hour, 47 * hour, rng.integers(hour, 47 * hour, 398)]
    log = period_log(make_log(rng.integers(0, 10, 400), rng.integers(0, 3, 400), ts), 12 * hour)
    assert log.n_periods == 4 and log.complete.tolist() == [False, True, True, False]
    reason = demand_forecast(log)
    assert isinstance(reason, str) and reason.startswith("2 complete periods")
