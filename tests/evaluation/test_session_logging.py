"""Simulator logging for sequential OPE: policies, features, the log, truth and the check."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig
from rlrec.errors import UserError
from rlrec.evaluation.session_logging import (
    CachedScores,
    CatalogFeatures,
    ScorePolicy,
    SimulatedCheckSettings,
    SoftenedPolicy,
    catalog_features,
    kl_divergence,
    log_sessions,
    sample_actions,
    simulated_ope_check,
    true_value,
)
from tests.envs.conftest import N_ITEMS, make_sim_model, write_tiny_dataset

CONFIG = EnvConfig(history_length=5, max_steps=8, catalog_size=N_ITEMS, start="stationary")


@pytest.fixture
def make_env():
    model = make_sim_model()
    return lambda n: BatchedInterestDrift(n, model, None, CONFIG)


class OneHot:
    """A deterministic policy: always ``action``."""

    def __init__(self, action: int, n: int = N_ITEMS) -> None:
        self.action, self.n = action, n

    def action_probabilities(self, obs):
        out = np.zeros((len(obs["item_history"]), self.n))
        out[:, self.action] = 1.0
        return out


class Scores:
    """A scoring policy that counts its forward passes."""

    def __init__(self) -> None:
        self.calls = 0

    def catalog_scores(self, obs):
        self.calls += 1
        items = np.asarray(obs["item_history"])
        return np.tile(np.linspace(0, 2, N_ITEMS), (len(items), 1)) + items[:, -1:] * 0.01


OBS = {
    "item_history": np.array([[0, 1, 2, 3, 4], [0, 0, 0, 5, 5]]),
    "category_history": np.array([[0, 2, 3, 4, 2], [0, 0, 0, 1, 1]]),
    "step": np.array([[4], [2]]),
}


def test_softened_policy_is_an_epsilon_mixture_of_a_softmax():
    p = SoftenedPolicy(OneHot(3), "popular,eps=0.2", epsilon=0.2).action_probabilities(OBS)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 3] == pytest.approx(0.8 + 0.2 / N_ITEMS)
    assert p[0, 0] == pytest.approx(0.2 / N_ITEMS)
    # A one-hot base stays one-hot at any temperature.
    sharp = SoftenedPolicy(OneHot(3), "x", temperature=0.3).action_probabilities(OBS)
    assert sharp[0, 3] == pytest.approx(1.0)
    scores = np.linspace(0, 1, N_ITEMS)
    soft = SoftenedPolicy(ScorePolicy(scores, "s"), "s", temperature=0.5).action_probabilities(OBS)
    expected = np.exp(scores / 0.5) / np.exp(scores / 0.5).sum()
    np.testing.assert_allclose(soft[1], expected)
    with pytest.raises(UserError, match="temperature"):
        SoftenedPolicy(OneHot(1), "x", temperature=0.0)
    with pytest.raises(UserError, match="epsilon"):
        SoftenedPolicy(OneHot(1), "x", epsilon=1.5)


def test_cached_scores_share_one_forward_pass_per_batch():
    scores = Scores()
    cached = CachedScores(scores)
    a = SoftenedPolicy(cached, "a", temperature=1.0)
    b = SoftenedPolicy(cached, "b", temperature=0.5)
    a.action_probabilities(OBS)
    b.action_probabilities(OBS)
    assert scores.calls == 1
    a.action_probabilities({k: v.copy() for k, v in OBS.items()})
    assert scores.calls == 2


def test_sampling_follows_the_probabilities_and_kl():
    p = np.array([[0.1, 0.6, 0.3]] * 20000)
    draws = sample_actions(p, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), p[0], atol=0.015)
    q = np.array([[0.5, 0.25, 0.25]])
    kl = kl_divergence(np.array([[0.5, 0.5, 0.0]]), q)
    assert kl[0] == pytest.approx(0.5 * np.log(0.5 / 0.5) + 0.5 * np.log(0.5 / 0.25))
    assert np.isinf(kl_divergence(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]))[0])


def test_expected_features_equal_the_average_over_every_action():
    rng = np.random.default_rng(0)
    feat = CatalogFeatures(
        action_item_token=np.arange(N_ITEMS) + 1,
        action_category_token=np.arange(N_ITEMS) % 4 + 1,
        action_log_popularity=rng.normal(size=N_ITEMS),
        n_item_tokens=N_ITEMS + 1,
        n_category_tokens=5,
    )
    probs = rng.dirichlet(np.ones(N_ITEMS), size=2)
    brute = sum(probs[:, a : a + 1] * feat.features(OBS, np.full(2, a)) for a in range(N_ITEMS))
    np.testing.assert_allclose(feat.expected(OBS, probs), brute, atol=1e-12)
    assert feat.features(OBS, np.array([0, 1])).shape == (2, feat.n_features)


def test_log_sessions_records_consistent_sessions(make_env):
    behaviour = SoftenedPolicy(OneHot(0), "b", epsilon=0.5)
    target = SoftenedPolicy(OneHot(1), "t", epsilon=0.5)
    env = make_env(64)
    log = log_sessions(env, behaviour, {"t": target, "same": behaviour}, seed=3)
    again = log_sessions(make_env(64), behaviour, {"t": target, "same": behaviour}, seed=3)
    assert log.n_sessions == 64
    lengths = np.diff(log.session_offsets)
    assert lengths.min() >= 1 and lengths.max() <= CONFIG.max_steps
    np.testing.assert_array_equal(log.action, again.action)
    np.testing.assert_array_equal(log.reward, again.reward)
    # Propensities are the behaviour's probabilities of the logged actions.
    expected = np.where(log.action == 0, 0.5 + 0.5 / N_ITEMS, 0.5 / N_ITEMS)
    np.testing.assert_allclose(log.behaviour_prob, expected)
    np.testing.assert_allclose(log.targets["same"].prob, log.behaviour_prob)
    assert np.all(log.targets["same"].kl == pytest.approx(0.0, abs=1e-12))
    assert np.all(log.targets["t"].kl > 0)
    assert log.features.shape == (len(log.reward), catalog_features(env).n_features)


def test_true_value_is_the_mean_on_policy_return(make_env):
    policy = SoftenedPolicy(OneHot(2), "p", epsilon=0.3, seed=1)
    a = true_value(policy, make_env(300), seed=5)
    b = true_value(policy, make_env(300), seed=5)
    assert a == b
    assert a.ci95[0] <= a.value <= a.ci95[1]
    assert a.episodes == 300


def test_simulated_check_with_the_behaviour_as_target(make_env):
    behaviour = SoftenedPolicy(OneHot(0), "b", epsilon=0.5, seed=1)
    settings = SimulatedCheckSettings(n_sessions=200, truth_sessions=200, n_bootstrap=20)
    report = simulated_ope_check(make_env, behaviour, {"b": behaviour}, settings)
    t = report["targets"]["b"]
    for name in ("is", "wis", "pdis", "wpdis"):
        assert t["estimates"][name]["value"] == pytest.approx(report["behaviour_value"])
    assert t["kl_per_step"] == pytest.approx(0.0, abs=1e-12)
    assert set(t["relative_error"]) == set(t["estimates"])
    assert set(t["truth_in_ci95"]) == set(t["estimates"])
    assert report["default_estimator"] == "wdr"
    with pytest.raises(UserError, match="gamma"):
        SimulatedCheckSettings(gamma=0.9)


def test_catalog_features_of_an_env_with_a_dataset(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "data")
    env = BatchedInterestDrift(4, make_sim_model(), dataset, CONFIG)
    feat = catalog_features(env)
    obs, _ = env.reset(seed=0)
    f = feat.features(obs, np.zeros(4, dtype=np.int64))
    assert np.all(np.isfinite(f)) and f.shape == (4, feat.n_features)
