"""Simulator logging for sequential OPE: policies, features, the log, truth and the check."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig
from rlrec.errors import UserError
from rlrec.evaluation.ope.fqe import FQEConfig, fitted_q_evaluation
from rlrec.evaluation.ope.q_features import (
    CatalogFeatures,
    catalog_features,
    category_switch_matrix,
    engaged_reward,
)
from rlrec.evaluation.ope.simulated_check import SimulatedCheckSettings, simulated_ope_check
from rlrec.evaluation.ope.simulated_logging import (
    TRUTH_CHUNK_SEED_STRIDE,
    log_sessions,
    true_value,
)
from rlrec.evaluation.ope.stochastic_policies import (
    CachedScores,
    ScorePolicy,
    SoftenedPolicy,
    kl_divergence,
    sample_actions,
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
    lengths = np.diff(log.offsets)
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


def test_true_value_pools_batches_of_other_users(make_env):
    """Repeats pool batches: the first is the single batch, the rest other users; the pooled
    interval narrows by about sqrt(repeats)."""
    policy = SoftenedPolicy(OneHot(2), "p", epsilon=0.3, seed=1)
    one = true_value(policy, make_env(300), seed=5)
    pooled = true_value(policy, make_env(300), seed=5, repeats=4)
    second = true_value(policy, make_env(300), seed=5 + TRUTH_CHUNK_SEED_STRIDE)
    assert pooled.episodes == 1200
    assert second.value != one.value  # another batch, not the first one again
    # Equal batch sizes: the pooled mean is the mean of the batch means.
    third = true_value(policy, make_env(300), seed=5 + 2 * TRUTH_CHUNK_SEED_STRIDE)
    fourth = true_value(policy, make_env(300), seed=5 + 3 * TRUTH_CHUNK_SEED_STRIDE)
    batch_means = [one.value, second.value, third.value, fourth.value]
    assert pooled.value == pytest.approx(np.mean(batch_means))
    width = lambda t: t.ci95[1] - t.ci95[0]  # noqa: E731
    assert 0.3 < width(pooled) / width(one) < 0.7
    assert pooled == true_value(policy, make_env(300), seed=5, repeats=4)
    with pytest.raises(UserError, match="repeats"):
        true_value(policy, make_env(300), seed=5, repeats=0)


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
    assert report["default_estimator"] == "magic"
    with pytest.raises(UserError, match="gamma"):
        SimulatedCheckSettings(gamma=0.9)


def test_catalog_features_of_an_env_with_a_dataset(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "data")
    env = BatchedInterestDrift(4, make_sim_model(), dataset, CONFIG)
    feat = catalog_features(env)
    obs, _ = env.reset(seed=0)
    f = feat.features(obs, np.zeros(4, dtype=np.int64))
    assert np.all(np.isfinite(f)) and f.shape == (4, feat.n_features)


def _tiny_features(**kwargs):
    rng = np.random.default_rng(0)
    return CatalogFeatures(
        action_item_token=np.arange(N_ITEMS) + 1,
        action_category_token=np.arange(N_ITEMS) % 4 + 1,
        action_log_popularity=rng.normal(size=N_ITEMS),
        n_item_tokens=N_ITEMS + 1,
        n_category_tokens=5,
        **kwargs,
    )


def test_expected_features_with_misses_and_switches_equal_the_average():
    transition = np.random.default_rng(1).random((5, 5))
    feat = _tiny_features(category_transition=transition)
    probs = np.random.default_rng(2).dirichlet(np.ones(N_ITEMS), size=2)
    misses = np.array([0, 6])
    brute = sum(
        probs[:, a : a + 1] * feat.features(OBS, np.full(2, a), misses) for a in range(N_ITEMS)
    )
    np.testing.assert_allclose(feat.expected(OBS, probs, misses), brute, atol=1e-12)
    with pytest.raises(UserError, match="misses"):
        feat.features(OBS, np.array([0, 1]), np.array([1, 2, 3]))
    with pytest.raises(UserError, match="category_transition"):
        _tiny_features(category_transition=np.ones((3, 3)))


def test_miss_features_change_the_q_fit_on_a_hand_built_log():
    """Same observation and action, returns that depend on the misses so far.

    Sessions of one step: after 0 misses the step earns 2, after 5 misses 0 (a user about to
    leave). Only with the misses in the features can FQE tell them apart.
    """
    feat = _tiny_features()
    n = 40
    obs = {k: np.repeat(v[:1], n, axis=0) for k, v in OBS.items()}
    action = np.zeros(n, dtype=np.int64)
    misses = np.where(np.arange(n) % 2 == 0, 0, 5)
    reward = np.where(misses == 0, 2.0, 0.0)
    offsets = np.arange(n + 1)
    probs = np.zeros((n, N_ITEMS))
    probs[:, 0] = 1.0
    config = FQEConfig(n_folds=1)
    with_misses = fitted_q_evaluation(
        offsets,
        reward,
        feat.features(obs, action, misses),
        feat.expected(obs, probs, misses),
        config=config,
    )
    without = fitted_q_evaluation(
        offsets, reward, feat.features(obs, action), feat.expected(obs, probs), config=config
    )
    np.testing.assert_allclose(with_misses.q_factual, reward, atol=0.01)
    np.testing.assert_allclose(without.q_factual, 1.0, atol=0.01)  # one mean for both


def test_logged_features_count_consecutive_misses(make_env):
    behaviour = SoftenedPolicy(OneHot(0), "b", epsilon=0.5)
    env = make_env(64)
    feat = catalog_features(env)
    log = log_sessions(env, behaviour, {}, seed=4)
    assert log.engaged is not None and log.behaviour_expected_features is not None
    np.testing.assert_array_equal(log.engaged, log.reward > 0)  # default weights are positive
    expected_misses = np.zeros(len(log.reward), dtype=np.int64)
    for lo, hi in zip(log.offsets[:-1], log.offsets[1:], strict=True):
        count = 0
        for t in range(lo, hi):
            expected_misses[t] = count
            count = 0 if log.engaged[t] else count + 1
    assert expected_misses.max() >= 2  # the check below sees several levels
    # Columns j * q of the product block are the state basis times the action constant; the
    # last len(MISS_EDGES) state-basis entries are the miss levels 1, 2, 3-4, 5-8, 9+.
    q = feat.n_action_basis
    p = feat.n_state_basis
    miss_cols = [j * q for j in range(p - len(feat.MISS_EDGES), p)]
    level = np.searchsorted(np.asarray(feat.MISS_EDGES), expected_misses, side="left")
    onehot = np.eye(len(feat.MISS_EDGES) + 1)[level][:, 1:]
    np.testing.assert_array_equal(log.features[:, miss_cols], onehot)


def test_category_switch_matrix_counts_changes_inside_sessions():
    # Sessions [1, 2, 2, 3] and [3, 1]: changes 1->2, 2->3 (first session), 3->1 (second);
    # the 3 -> 3 pair across the session boundary is not a step.
    offsets = np.array([0, 4, 6])
    tokens = np.array([1, 2, 2, 3, 3, 1])
    m = category_switch_matrix(offsets, tokens, 4, smoothing=0.0)
    expected = np.zeros((4, 4))
    expected[1, 2] = expected[2, 3] = expected[3, 1] = 1.0
    np.testing.assert_allclose(m, expected)
    smooth = category_switch_matrix(offsets, tokens, 4, smoothing=0.5)
    np.testing.assert_allclose(smooth.sum(axis=1), 1.0)
    assert np.all(np.diag(smooth) == 0.0)


def test_simulated_check_reports_the_behaviour_q_calibration(make_env):
    behaviour = SoftenedPolicy(OneHot(0), "b", epsilon=0.5, seed=1)
    settings = SimulatedCheckSettings(n_sessions=300, truth_sessions=50, n_bootstrap=10)
    report = simulated_ope_check(make_env, behaviour, {"b": behaviour}, settings)
    cal = report["behaviour_q_calibration"]
    assert set(cal) >= {"r2", "mean_error", "max_bin_error", "first_step_q", "bins"}
    # The logged value is the behaviour's mean return, and on-policy FQE should be close.
    assert cal["first_step_return"] == pytest.approx(report["behaviour_value"])
    assert cal["first_step_q"] == pytest.approx(report["behaviour_value"], rel=0.2)
    blend = report["targets"]["b"]["magic_blend"]
    assert len(blend["steps"]) == len(blend["weights"])


def test_action_reward_features_equal_the_average_and_are_checked():
    """The reward-per-engagement columns: expected = average over actions; bad input named."""
    reward = np.linspace(1.0, 4.0, N_ITEMS)
    feat = _tiny_features(action_reward=reward)
    plain = _tiny_features()
    assert feat.n_features == plain.n_features + 2 * feat.n_state_basis
    probs = np.random.default_rng(3).dirichlet(np.ones(N_ITEMS), size=2)
    brute = sum(probs[:, a : a + 1] * feat.features(OBS, np.full(2, a)) for a in range(N_ITEMS))
    np.testing.assert_allclose(feat.expected(OBS, probs), brute, atol=1e-12)
    # Column n_action_basis - 2 of the first state level (the constant) is the relative reward.
    chi = feat.features(OBS, np.array([0, N_ITEMS - 1]))[:, feat.N_ACTION_BASIS]
    np.testing.assert_allclose(chi, reward[[0, -1]] / reward.mean())
    with pytest.raises(UserError, match="action_reward"):
        _tiny_features(action_reward=np.ones(N_ITEMS + 1))


def test_engaged_reward_follows_the_nested_funnel():
    # Category 0: carts 50%, buys 20% of engaged steps; category 1: never carts.
    out = engaged_reward(
        np.array([0, 1, 0]), np.array([0.5, 0.0]), np.array([0.2, 0.0]), 1.0, 3.0, 10.0
    )
    np.testing.assert_allclose(out, [1 + 2 * 0.5 + 7 * 0.2, 1.0, 1 + 2 * 0.5 + 7 * 0.2])
