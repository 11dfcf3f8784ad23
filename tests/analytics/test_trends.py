from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.analytics.periods import DAY_MS, period_log
from rlrec.analytics.trends import category_trends, segment_trends, within_user_trend
from rlrec.data import load_dataset
from rlrec.data.prepare import prepare
from tests.analytics.conftest import T0


def _independent_events(
    slope: float, n_users: int = 300, n_periods: int = 8, seed: int = 0, per_period: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events that are independent Bernoulli draws of category 1 with a per-user intercept."""
    rng = np.random.default_rng(seed)
    a = rng.normal(-1.0, 0.7, n_users)
    user = np.repeat(np.arange(n_users), n_periods * per_period)
    period = np.tile(np.repeat(np.arange(n_periods), per_period), n_users)
    p = 1 / (1 + np.exp(-(a[user] + slope * period)))
    category = (rng.random(len(user)) < p).astype(np.int64)
    return user, period, category


def test_within_user_score_test_agrees_with_conditional_logit() -> None:
    from statsmodels.discrete.conditional_models import ConditionalLogit

    # ConditionalLogit's cost grows fast with group size: 250 users of 15 events.
    user, period, category = _independent_events(0.15, n_users=250, n_periods=5, per_period=3)
    slope, z, phi = within_user_trend(user, period, category, 5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # users with no variation are dropped: said, not news
        fit = ConditionalLogit(category, period[:, None].astype(float), groups=user).fit(disp=0)
    wald_z = fit.params[0] / fit.bse[0]
    # Independent events: the dispersion is near 1, the score test near the Wald test.
    assert phi[1] == pytest.approx(1.0, abs=0.15)
    assert z[1] == pytest.approx(wald_z, rel=0.1)
    assert slope[1] == pytest.approx(fit.params[0], rel=0.15)
    assert z[0] == pytest.approx(-z[1])  # two categories: one's rise is the other's fall


def test_no_trend_gives_no_discoveries(make_log) -> None:
    user, period, category = _independent_events(slope=0.0, n_periods=6, seed=3)
    ts = T0 + period * DAY_MS + 1000 * np.arange(len(user)) % (DAY_MS // 2)
    ds = make_log(user, category, ts)
    result = category_trends(period_log(ds, DAY_MS))
    assert result.rising == [] and result.falling == []
    assert set(result.tests["direction"]) == {"flat"}
    # Shares and their intervals: every period's shares sum to 1 and hold their share.
    shares = result.shares
    assert np.allclose(shares.groupby("period")["share"].sum(), 1.0)
    assert (shares["share_low"] <= shares["share"]).all()
    assert (shares["share"] <= shares["share_high"]).all()


def test_planted_trend_is_among_the_top_three_rising(planted_trend: Path) -> None:
    log = period_log(load_dataset(planted_trend), DAY_MS)
    result = category_trends(log, log.active_range())
    assert "c10" in result.rising[:3], result.rising
    truth = json.loads((planted_trend / "ground_truth.json").read_text())
    assert truth["planted"]["trend"] == {"category": "c10", "growth": 1.5}
    segments = segment_trends(log, periods=log.active_range())
    returning = segments[(segments["segment"] == "returning") & (segments["category"] == "c10")]
    assert returning["direction"].item() == "rising"
    assert set(segments["segment"]) == {"new", "returning", "high_activity", "low_activity"}


def test_trend_injected_into_taobao_is_the_top_rising(taobao_csv: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(taobao_csv, header=None)
    top = raw[2].value_counts().index[0]  # the most frequent category
    second_half = raw[4] >= raw[4].median()
    duplicate = raw[(raw[2] == top) & second_half].copy()
    duplicate[4] += 1  # one second later: a repeated view, not an exact duplicate row
    log_file = tmp_path / "injected.csv"
    pd.concat([raw, duplicate]).to_csv(log_file, header=False, index=False)
    ds = load_dataset(prepare([log_file], preset="taobao", out=tmp_path / "ds"))
    log = period_log(ds, DAY_MS)
    result = category_trends(log, log.active_range())
    assert result.rising[0] == str(top), result.rising
