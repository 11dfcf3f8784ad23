"""The lifecycle return model: a reference fit, recovery of its own and the synthetic truth's
parameters, posterior predictions against simulation, JSON round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rlrec.data.schema import EVENT_CODE
from rlrec.models.ground_truth import ReturnTruthConfig, SyntheticConfig
from rlrec.models.lifecycle import (
    DAY_MS,
    ReturnModel,
    ReturnModelConfig,
    Timelines,
    build_timelines,
    fit_return_model,
    session_table,
)
from rlrec.models.synthetic import generate_events

TRUE = ReturnModel(
    feature_names=("z",),
    feature_mean=np.zeros(1),
    feature_std=np.ones(1),
    shape=0.8,
    scale_days=3.0,
    frailty_var=0.7,
    beta=np.array([0.5]),
    gamma_0=-2.5,
    gamma=np.array([-0.8]),
)


def simulate(model: ReturnModel, n_users: int, end: float, seed: int) -> Timelines:
    """Users start over 30 days; each session draws z ~ N(0, 1) and the next gap from model."""
    rng = np.random.default_rng(seed)
    u = model.sample_user_rate(rng, n_users)
    clock = rng.uniform(0, 30, n_users)
    users, starts, zs = [], [], []
    alive = np.ones(n_users, bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        z = rng.normal(size=len(idx))
        users.append(idx)
        starts.append(clock[idx])
        zs.append(z)
        clock[idx] += model.sample_next(rng, z[:, None], u[idx])
        alive[idx] = clock[idx] < end
    user, start, z = (np.concatenate(a) for a in (users, starts, zs))
    order = np.lexsort((start, user))
    user, start, z = user[order], start[order], z[order]
    last = np.r_[user[1:] != user[:-1], True]
    gap = np.where(last, end - start, np.r_[start[1:], end] - start)
    return Timelines(user, start, z[:, None], ("z",), gap, ~last, end)


def test_frailty_and_cure_free_fit_matches_scipy_censored_weibull():
    rng = np.random.default_rng(0)
    n = 4000
    gaps = stats.weibull_min.rvs(1.4, scale=2.0, size=n, random_state=rng)
    censor = rng.uniform(0.5, 6.0, n)
    observed = gaps <= censor
    times = np.minimum(gaps, censor)
    # One gap per user: the first is observed or censored; model it as a user with one gap.
    user = np.repeat(np.arange(n), 2)
    gap_days = np.c_[times, np.full(n, 1.0)].ravel()
    obs = np.c_[observed, np.zeros(n, bool)].ravel()
    keep = np.c_[np.ones(n, bool), observed].ravel()  # a censored gap is the user's last
    tl = Timelines(
        user[keep],
        np.zeros(keep.sum()),
        np.zeros((keep.sum(), 0)),
        (),
        gap_days[keep],
        obs[keep],
        10.0,
    )
    # Users whose gap was observed have a trailing censored gap of 1 day: cancel its
    # contribution by fitting the reference on the same data.
    ref_data = stats.CensoredData(
        uncensored=np.r_[times[observed]],
        right=np.r_[times[~observed], np.full(observed.sum(), 1.0)],
    )
    shape, _, scale = stats.weibull_min.fit(ref_data, floc=0)
    model = fit_return_model(tl, ReturnModelConfig(cure=False, frailty=False, offset_days=0.0))
    assert model.shape == pytest.approx(shape, rel=1e-3)
    assert model.scale_days == pytest.approx(scale, rel=1e-3)
    assert model.frailty_var == 0 and model.gamma_0 == -math.inf


def test_fit_recovers_its_own_parameters():
    tl = simulate(TRUE, 8000, 90.0, seed=1)
    model = fit_return_model(tl, ReturnModelConfig(offset_days=0.0))
    # Stated tolerances (8,000 users, ~60k sessions): shape +-0.05, scale +-10%, frailty
    # variance +-0.15, slopes +-0.1 per standardised unit (z is N(0,1): std ~ 1).
    assert model.shape == pytest.approx(0.8, abs=0.05)
    assert model.scale_days == pytest.approx(3.0, rel=0.1)
    assert model.frailty_var == pytest.approx(0.7, abs=0.15)
    assert model.beta[0] * 1 / model.feature_std[0] == pytest.approx(0.5, abs=0.1)
    assert model.gamma[0] / model.feature_std[0] == pytest.approx(-0.8, abs=0.1)
    assert model.gamma_0 - model.gamma[0] * model.feature_mean[0] / model.feature_std[0] == (
        pytest.approx(-2.5, abs=0.15)
    )
    assert model.fit_info["converged"]


def test_posterior_p_return_matches_simulation():
    # A user with 3 past gaps of known load, silent for 2 days: simulate from the posterior
    # (frailty ~ Gamma(1/theta + m, 1/theta + load), churned or not) and compare.
    m = TRUE
    X = np.array([[0.3]])
    history = {"n_gaps": np.array([3.0]), "load": np.array([2.5])}
    elapsed, horizon = np.array([2.0]), 5.0
    p = m.p_return(elapsed, horizon, X, history)[0]
    alive = m.p_alive(elapsed, X, history)[0]
    rng = np.random.default_rng(4)
    n = 200_000
    a = 1 / m.frailty_var
    u = rng.gamma(a + 3, 1 / (a + 2.5 + m.cumulative_hazard(elapsed, X)[0]), n)
    gap = m.sample_next(rng, np.repeat(X, n, 0), u, elapsed_days=np.full(n, 2.0))
    simulated = (rng.random(n) < alive) & (gap < 2.0 + horizon)
    assert p == pytest.approx(simulated.mean(), abs=0.005)
    expected = m.expected_sessions(elapsed, horizon, X, history, seed=0, n_draws=20_000)[0]
    assert expected >= p  # at least one session whenever there is a return
    # Same seed, same answer.
    again = m.expected_sessions(elapsed, horizon, X, history, seed=0, n_draws=20_000)[0]
    assert again == expected


def test_survival_of_new_user_matches_sampling():
    rng = np.random.default_rng(5)
    X = np.zeros((100_000, 1))
    gaps = TRUE.sample_next(rng, X)
    for t in (0.5, 3.0, 20.0):
        assert TRUE.survival(t, X[:1])[0] == pytest.approx((gaps > t).mean(), abs=0.005)
    assert np.isinf(gaps).mean() == pytest.approx(TRUE.p_leave(X[:1])[0], abs=0.005)


def test_json_round_trip_keeps_every_parameter():
    model = fit_return_model(simulate(TRUE, 500, 60.0, seed=2))
    again = ReturnModel.from_json(model.to_json())
    assert again.to_json() == model.to_json()
    assert set(model.provenance) >= {"shape", "scale_days", "frailty_var", "beta", "gamma_0"}
    X = np.array([[0.0], [1.0]])
    np.testing.assert_allclose(again.survival(2.0, X), model.survival(2.0, X))
    with pytest.raises(ValueError, match="not a return model"):
        ReturnModel.from_json('{"kind": "other"}')


def test_session_table_counts_content_and_engaged_steps():
    events = pd.DataFrame(
        {
            "user": [0, 0, 0, 0, 1],
            "session": [0, 0, 0, 1, 2],
            "item": [5, 5, 6, 7, 8],
            "category": [1, 1, 2, 1, 3],
            "event": [
                EVENT_CODE["view"],
                EVENT_CODE["cart"],
                EVENT_CODE["view"],
                EVENT_CODE["buy"],
                EVENT_CODE["view"],
            ],
            "timestamp": [0, 1000, 2000, DAY_MS, 5],
        }
    )
    table = session_table(events)
    assert table["n_events"].tolist() == [3, 1, 1]
    assert table["n_engaged"].tolist() == [1, 1, 0]
    assert table["n_carts"].tolist() == [1, 0, 0]
    assert table["n_buys"].tolist() == [0, 1, 0]
    assert table["n_categories"].tolist() == [2, 1, 1]
    assert table["end_ms"].tolist() == [2000, DAY_MS, 5]
    tl = build_timelines(events, end_ms=2 * DAY_MS)
    assert tl.observed.tolist() == [True, False, False]
    assert tl.gap_days[0] == pytest.approx((DAY_MS - 2000) / DAY_MS)
    # Events at or after the end of observation are not read.
    assert build_timelines(events, end_ms=DAY_MS).n_sessions == 2


def test_fit_recovers_the_synthetic_truth():
    returns = ReturnTruthConfig(observation_days=30.0)
    config = SyntheticConfig(
        n_users=1500, n_items=2000, start_spread_days=10.0, seed=3, returns=returns
    )
    raw, truth = generate_events(config)
    events = pd.DataFrame(
        {
            "user": raw["user"].to_numpy(),
            "session": raw["session"].to_numpy(),
            "item": raw["item"].to_numpy(),
            "event": raw["event"].map(EVENT_CODE).to_numpy(np.int8),
            "timestamp": raw["time"].to_numpy(),
        }
    )
    end_ms = int(events["timestamp"].max()) + 1
    tl = build_timelines(events, end_ms, feature_names=("satisfaction",))
    model = fit_return_model(tl)
    sd, mean = model.feature_std[0], model.feature_mean[0]
    k = returns.gap_shape
    # The truth: P(churn) = sigmoid(c0 - c1 z); gap - 30 min ~ Weibull(k) with rate
    # a_u exp(b z), i.e. a hazard multiplier exp(k b z). Stated tolerances (1,500 users):
    # shape +-0.1; k b and c1 +-30%; c0 +-0.6.
    assert model.shape == pytest.approx(k, abs=0.1)
    assert model.beta[0] / sd == pytest.approx(k * returns.satisfaction_effect, rel=0.3)
    assert -model.gamma[0] / sd == pytest.approx(returns.churn_slope, rel=0.3)
    assert model.gamma_0 - model.gamma[0] * mean / sd == pytest.approx(
        returns.churn_intercept, abs=0.6
    )
    del truth


HETEROGENEOUS = ReturnModel(
    feature_names=("z",),
    feature_mean=np.zeros(1),
    feature_std=np.ones(1),
    shape=0.8,
    scale_days=3.0,
    frailty_var=0.7,
    beta=np.array([0.5]),
    gamma_0=-2.0,
    gamma=np.array([-0.8]),
    dropout_sd=1.5,
)


def simulate_window(
    model: ReturnModel, n_users: int, end: float, horizon: float, seed: int
) -> tuple[Timelines, np.ndarray]:
    """Users simulated up to ``end + horizon``, each with its own frailty and dropout effect.

    Sessions before ``end`` draw z ~ N(0, 1); sessions after it have z = 0 (the user's mean,
    what :meth:`ReturnModel.expected_sessions` assumes of future sessions here). Returns the
    timelines censored at ``end`` and every user's session count in ``[end, end + horizon)``.
    """
    rng = np.random.default_rng(seed)
    u = model.sample_user_rate(rng, n_users)
    effect = model.sample_dropout_effect(rng, n_users)
    clock = rng.uniform(0, 30, n_users)
    users, starts, zs = [], [], []
    alive = np.ones(n_users, bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        z = np.where(clock[idx] < end, rng.normal(size=len(idx)), 0.0)
        users.append(idx)
        starts.append(clock[idx])
        zs.append(z)
        clock[idx] += model.sample_next(rng, z[:, None], u[idx], dropout_effect=effect[idx])
        alive[idx] = clock[idx] < end + horizon
    user, start, z = (np.concatenate(a) for a in (users, starts, zs))
    order = np.lexsort((start, user))
    user, start, z = user[order], start[order], z[order]
    future = start >= end
    count = np.bincount(user[future], minlength=n_users).astype(np.float64)
    user, start, z = user[~future], start[~future], z[~future]
    last = np.r_[user[1:] != user[:-1], True]
    gap = np.where(last, end - start, np.r_[start[1:], end] - start)
    return Timelines(user, start, z[:, None], ("z",), gap, ~last, end), count


def test_heterogeneous_dropout_expectations_match_simulation_of_the_model():
    # The posterior expectations integrate the dropout random effect, the frailty and the
    # renewal process: over 6,000 simulated users, the predicted P(return) and expected
    # count must match what the same model did in the window, overall and by quartile of
    # the prediction (a posterior that ignored the user's own evidence would not).
    tl, count = simulate_window(HETEROGENEOUS, 6000, 90.0, 30.0, seed=1)
    h = HETEROGENEOUS.history(tl)
    assert h["stay_nodes"].shape == (6000, HETEROGENEOUS.quadrature_nodes)
    # Future sessions have z = 0 in this simulation: say so (the mean-covariate path).
    past = ("session_X", "session_first", "session_count")
    history = {k: v for k, v in h.items() if k not in past} | {"X_mean": 0 * h["X_last"]}
    expected = HETEROGENEOUS.expected_sessions(
        h["elapsed"], 30.0, h["X_last"], history, seed=0, n_draws=200
    )
    p = HETEROGENEOUS.p_return(h["elapsed"], 30.0, h["X_last"], h)
    # Tolerances: 4 standard errors of the simulated means (count sd ~3.5 over 6,000 users).
    assert expected.mean() == pytest.approx(count.mean(), abs=0.18)
    assert p.mean() == pytest.approx((count > 0).mean(), abs=0.02)
    for part in np.array_split(np.argsort(expected, kind="stable"), 4):
        se = count[part].std() / math.sqrt(len(part))
        assert expected[part].mean() == pytest.approx(count[part].mean(), abs=4 * se + 0.01)
    # The same model without its random effect under-predicts the busiest users, who are
    # still coming back because their own dropout is low.
    homogeneous = ReturnModel(**{**HETEROGENEOUS.__dict__, "dropout_sd": 0.0})
    flat = homogeneous.expected_sessions(
        h["elapsed"], 30.0, h["X_last"], {**history, "stay_nodes": np.zeros((6000, 1))}, seed=0
    )
    top = np.argsort(expected, kind="stable")[-1500:]
    assert flat[top].mean() < count[top].mean() - 0.2


def test_heterogeneous_dropout_is_recovered_and_reduces_to_the_homogeneous_model():
    tl, _ = simulate_window(HETEROGENEOUS, 6000, 90.0, 0.0, seed=2)
    model = fit_return_model(tl, ReturnModelConfig(offset_days=0.0))
    # Stated tolerances (6,000 users, ~40k sessions): dropout sd +-0.4, slopes +-0.15.
    assert model.dropout_sd == pytest.approx(1.5, abs=0.4)
    assert model.gamma[0] / model.feature_std[0] == pytest.approx(-0.8, abs=0.15)
    assert model.shape == pytest.approx(0.8, abs=0.05)
    assert model.provenance["dropout_sd"].startswith("fitted")
    again = ReturnModel.from_json(model.to_json())
    assert again.dropout_sd == model.dropout_sd
    # Without the random effect the likelihood is the homogeneous one: fitting with it off
    # gives dropout_sd 0 and a lower likelihood on heterogeneous data.
    flat = fit_return_model(tl, ReturnModelConfig(offset_days=0.0, dropout_heterogeneity=False))
    assert flat.dropout_sd == 0.0
    assert flat.fit_info["log_likelihood"] < model.fit_info["log_likelihood"] - 50
    # The population-average dropout of a new user integrates the random effect.
    X = np.zeros((200_000, 1))
    rng = np.random.default_rng(3)
    left = rng.random(len(X)) < HETEROGENEOUS.p_leave(
        X, HETEROGENEOUS.sample_dropout_effect(rng, len(X))
    )
    assert HETEROGENEOUS.p_leave(X[:1])[0] == pytest.approx(left.mean(), abs=0.004)


def test_expected_sessions_count_the_time_each_future_session_lasts():
    # A gap runs from a session's last event, so a user whose sessions last half a day comes
    # back less often per calendar day than one whose sessions are instants. Simulate users
    # whose sessions last U(0, 1) days, then check that the expected count in the window
    # matches what they did, and that a forecast that ignores the durations over-counts.
    model = ReturnModel(**{**TRUE.__dict__, "scale_days": 1.0, "gamma_0": -3.0})
    rng = np.random.default_rng(4)
    n_users, end, horizon = 4000, 40.0, 20.0
    u = model.sample_user_rate(rng, n_users)
    clock = rng.uniform(0, 20, n_users)
    users, starts, zs, lasts = [], [], [], []
    alive = np.ones(n_users, bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        z, lasting = rng.normal(size=len(idx)), rng.uniform(0.0, 1.0, len(idx))
        users.append(idx)
        starts.append(clock[idx])
        zs.append(z)
        lasts.append(lasting)
        clock[idx] += lasting + model.sample_next(rng, z[:, None], u[idx])
        alive[idx] = clock[idx] < end + horizon
    user, start, z, lasting = (np.concatenate(a) for a in (users, starts, zs, lasts))
    order = np.lexsort((start, user))
    user, start, z, lasting = user[order], start[order], z[order], lasting[order]
    future = start >= end
    count = np.bincount(user[future], minlength=n_users).astype(np.float64)
    user, start, z, lasting = user[~future], start[~future], z[~future], lasting[~future]
    last = np.r_[user[1:] != user[:-1], True]
    stop = np.minimum(start + lasting, end)
    gap = np.maximum(np.where(last, end, np.r_[start[1:], end]) - stop, 1e-9)
    tl = Timelines(user, start, z[:, None], ("z",), gap, ~last, end)
    h = model.history(tl)
    assert h["session_duration"] == pytest.approx(stop - start, abs=1e-9)
    expected = model.expected_sessions(h["elapsed"], horizon, h["X_last"], h, seed=0, n_draws=50)
    # 4 standard errors of the simulated mean (count sd ~4 over 4,000 users) plus MC noise.
    se = count.std() / math.sqrt(n_users)
    assert expected.mean() == pytest.approx(count.mean(), abs=4 * se + 0.02)
    instant = {k: v for k, v in h.items() if k not in ("session_duration", "duration_mean")}
    ignored = model.expected_sessions(
        h["elapsed"], horizon, h["X_last"], instant, seed=0, n_draws=50
    )
    # Ignoring them over-counts by ~18% here (2.68 against 2.27 simulated).
    assert ignored.mean() > count.mean() + 4 * se + 0.1
