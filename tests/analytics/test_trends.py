from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.analytics.periods import DAY_MS, period_log
from rlrec.analytics.trends import (
    category_trends,
    population_trend,
    segment_trends,
    within_user_trend,
)
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


def test_within_user_slope_agrees_with_conditional_logit() -> None:
    from statsmodels.discrete.conditional_models import ConditionalLogit

    # ConditionalLogit's cost grows fast with group size: 250 users of 15 events.
    user, period, category = _independent_events(0.15, n_users=250, n_periods=5, per_period=3)
    test = within_user_trend(user, period, category, 5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # users with no variation are dropped: said, not news
        fit = ConditionalLogit(category, period[:, None].astype(float), groups=user).fit(disp=0)
    # Independent events: the user-clustered sandwich is near the model-based error.
    assert test.z[1] == pytest.approx(fit.params[0] / fit.bse[0], rel=0.15)
    assert test.slope[1] == pytest.approx(fit.params[0], rel=0.15)
    assert test.z[0] == pytest.approx(-test.z[1])  # two categories: one's rise is the other's fall


def test_population_trend_is_statsmodels_gee_with_user_clusters() -> None:
    import statsmodels.api as sm

    # Sessions of one category: events cluster within users, as in a real log.
    rng = np.random.default_rng(4)
    n_users, n_periods = 120, 6
    taste = rng.beta(1.0, 3.0, n_users)
    user, period, category = [], [], []
    for u in range(n_users):
        for _ in range(rng.integers(1, 6)):
            t = rng.integers(0, n_periods)
            size = rng.integers(1, 8)
            c = int(rng.random() < min(taste[u] * np.exp(0.1 * t), 1.0))
            user += [u] * size
            period += [t] * size
            category += [c] * size
    user_a, period_a, category_a = np.array(user), np.array(period), np.array(category)
    test = population_trend(user_a, period_a, category_a, n_periods, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gee = sm.GEE(
            category_a.astype(float),
            sm.add_constant(period_a.astype(float)),
            groups=user_a,
            family=sm.families.Binomial(),
            cov_struct=sm.cov_struct.Independence(),
        ).fit()
    g = len(np.unique(user_a))  # clusters: every user
    assert test.slope[1] == pytest.approx(gee.params[1], rel=1e-5)
    # statsmodels' robust covariance has no small-sample factor: ours is CR1, G / (G - 1).
    assert test.se[1] * np.sqrt((g - 1) / g) == pytest.approx(gee.bse[1], rel=1e-4)
    # The clustering is real: the sandwich is wider than the binomial model's error.
    naive = sm.GLM(
        category_a, sm.add_constant(period_a.astype(float)), family=sm.families.Binomial()
    )
    assert test.se[1] > 1.3 * naive.fit().bse[1]


def test_null_worlds_flag_about_five_percent(null_worlds: list[Path]) -> None:
    """Synthetic logs with nothing planted: p-values near uniform, no discoveries.

    The event-level test this replaced flagged 0-6 categories per seed at q < 0.05 and gave
    p < 0.05 to 18% of the categories on these worlds.
    """
    p_values, flagged = [], 0
    for path in null_worlds:
        log = period_log(load_dataset(path), DAY_MS)
        result = category_trends(log, log.active_range())
        p_values.append(result.tests["p_value"].dropna().to_numpy())
        flagged += len(result.rising) + len(result.falling)
    p = np.concatenate(p_values)
    assert len(p) >= 150
    assert np.mean(p < 0.05) <= 0.09, np.mean(p < 0.05)
    assert np.mean(p < 0.5) == pytest.approx(0.5, abs=0.12)
    assert flagged <= 1


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


def test_trend_injected_into_taobao_is_the_top_gain(taobao_csv: Path, tmp_path: Path) -> None:
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
    # The largest gain in share, with a user-clustered interval above zero. 44 users carry
    # information on the category's within-user slope, 36 users' events were duplicated: the
    # slope test (p = 0.05) does not pass Benjamini-Hochberg (q = 0.40).
    assert "__other__" in set(result.tests["category"])
    assert "__other__" not in {g["category"] for g in result.gainers(60)}
    best = result.gainers(1)[0]
    assert best["category"] == str(top), result.gainers()
    assert best["gain_low"] > 0
    row = result.tests.set_index("category").loc[str(top)]
    assert row["users"] == 44 and row["slope"] > 0
