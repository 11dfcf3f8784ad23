"""Real logged sessions as decisions, the count behaviour, OPE on them, replay metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlrec.data.schema import EVENT_TYPES
from rlrec.errors import UserError
from rlrec.evaluation.ope.fqe import FQEConfig
from rlrec.evaluation.ope.logged_sessions import (
    BEHAVIOUR_METHOD,
    Q_FEATURES_USED,
    estimate_count_behaviour,
    evaluate_real_sessions,
    item_features,
    replay_metrics,
    session_decisions,
)
from rlrec.evaluation.ope.sequential import SESSION_ESTIMATOR_NAMES
from tests.envs.conftest import N_DATASET_ITEMS, write_tiny_dataset


@pytest.fixture
def dataset(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    events = data.events.copy()
    # Session 0's second event (item 1 again) is a cart: the collapsed step's reward is 3.
    events.loc[(events["session"] == 0) & (events["step"] == 1), "event"] = EVENT_TYPES.index(
        "cart"
    )
    events.loc[(events["session"] == 4) & (events["step"] == 2), "event"] = EVENT_TYPES.index("buy")
    return dataclasses.replace(data, events=events)


def test_decisions_of_the_test_split(dataset):
    d = session_decisions(dataset, "test", history_length=3)
    # Test session: items 11, 15, 24 (categories 3, 3, 0): two decisions.
    np.testing.assert_array_equal(d.offsets, [0, 2])
    np.testing.assert_array_equal(d.item, [15, 24])
    np.testing.assert_array_equal(d.item_history, [[0, 0, 12], [0, 12, 16]])
    np.testing.assert_array_equal(d.category_history, [[0, 0, 4], [0, 4, 4]])
    np.testing.assert_array_equal(d.step[:, 0], [1, 2])
    np.testing.assert_array_equal(d.reward, [1.0, 10.0])


def test_decisions_collapse_repeats_and_keep_the_strongest_event(dataset):
    d = session_decisions(dataset, "train", history_length=2)
    # Session 0 has 5 steps (4 decisions), session 1 has 4 (3), session 2 one step (none).
    np.testing.assert_array_equal(d.offsets, [0, 4, 7])
    np.testing.assert_array_equal(d.item[:4], [5, 22, 2, 3])
    np.testing.assert_array_equal(d.item_history[0], [0, 2])  # item 1 (cart) once
    np.testing.assert_array_equal(d.reward, np.ones(7))  # the cart was on the first step
    with pytest.raises(UserError, match="no session with 2 or more steps"):
        session_decisions(
            dataclasses.replace(dataset, events=dataset.events[dataset.events["session"] == 2]),
            "train",
            2,
        )


def test_count_behaviour_is_a_distribution_over_items(dataset):
    b = estimate_count_behaviour(dataset)
    obs = {"category_history": np.array([[0, 1], [0, 4]])}
    p = b.action_probabilities(obs)
    assert p.shape == (2, N_DATASET_ITEMS)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(
        b.probability(np.array([0, 3]), np.array([4, 24])), p[:, [4, 24]][[0, 1], [0, 1]]
    )


def test_ope_on_real_sessions_with_the_behaviour_as_target(dataset):
    behaviour = estimate_count_behaviour(dataset)
    report = evaluate_real_sessions(
        dataset, behaviour.action_probabilities, "behaviour", split="train", n_bootstrap=20
    )
    # The report says the propensities were estimated, not logged.
    assert report["propensities"] == BEHAVIOUR_METHOD
    assert report["propensities"].startswith("estimated")
    assert report["decisions"] == 7 and report["sessions"] == 2
    for name in ("is", "wis", "pdis", "wpdis"):
        assert report["estimates"][name]["value"] == pytest.approx(report["logged_value"])
    assert report["kl_per_step"] == pytest.approx(0.0, abs=1e-12)
    assert set(report["estimates"]) == set(SESSION_ESTIMATOR_NAMES)
    assert "refitted" in report["estimates"]["magic"]["interval_method"]
    assert set(report["q_features"]["unavailable"]) == {"consecutive_misses"}
    assert report["fqe_ratio_power"] == FQEConfig().ratio_power
    assert not report["extrapolating"] and report["verdict"]


def test_decisions_carry_the_dwell_on_the_previous_item(dataset):
    d = session_decisions(dataset, "train", history_length=3)
    first = d.offsets[:-1]
    # A session's first decision has one previous step: no dwell; later ones have one.
    assert np.isnan(d.dwell_seconds[first]).all()
    later = np.setdiff1d(np.arange(d.n_decisions), first)
    assert np.isfinite(d.dwell_seconds[later]).all() and (d.dwell_seconds[later] >= 0).all()
    obs = d.feature_observations(slice(None))
    assert "dwell_seconds" in obs and "dwell_seconds" not in d.observations(slice(None))
    feat = item_features(dataset)
    assert feat.dwell_levels
    basis = feat.state_basis(obs)
    # The dwell one-hot: no level for "no gap", exactly one for every later decision.
    dwell_cols = basis[:, -(len(feat.DWELL_EDGES) + 1) :]
    assert (dwell_cols[first].sum(axis=1) == 0).all()
    assert (dwell_cols[later].sum(axis=1) == 1).all()


def test_replay_metrics(dataset):
    def oracle(obs):
        # Knows the next item of the test session from the last one: 11 -> 15 -> 24.
        nxt = {12: 15, 16: 24}
        out = np.zeros((len(obs["item_history"]), N_DATASET_ITEMS))
        for row, last in enumerate(obs["item_history"][:, -1]):
            out[row, nxt[int(last)]] = 1.0
        return out

    perfect = replay_metrics(dataset, oracle, "test", history_length=3, k=10)
    assert perfect["hr@10"] == 1.0 and perfect["ndcg@10"] == 1.0 and perfect["decisions"] == 2

    def uniform(obs):
        return np.full((len(obs["item_history"]), N_DATASET_ITEMS), 1.0 / N_DATASET_ITEMS)

    flat = replay_metrics(dataset, uniform, "test", history_length=3, k=5)
    # All 25 items tie: rank 12 (ties count half) is outside the top 5.
    assert flat["hr@5"] == 0.0 and flat["mrr"] == pytest.approx(1 / 13)
    with pytest.raises(UserError, match="--k"):
        replay_metrics(dataset, uniform, "test", k=0)


def test_real_log_q_features_read_each_categorys_reward(dataset):
    """The reward per engagement is the category's shrunk mean step reward on train."""
    from rlrec.evaluation.ope.logged_sessions import CATEGORY_REWARD_PRIOR_STEPS, _step_arrays

    _, _, cats, rewards, _ = _step_arrays(dataset.sessions("train"))
    k = CATEGORY_REWARD_PRIOR_STEPS
    item_category = dataset.item_category.astype(np.int64)
    by_hand = np.array(
        [
            (rewards[cats == c].sum() + k * rewards.mean()) / ((cats == c).sum() + k)
            for c in item_category
        ]
    )
    feat = item_features(dataset)
    assert feat.action_reward is not None
    np.testing.assert_allclose(feat.action_reward, by_hand / by_hand.mean())
    assert "category_reward" in Q_FEATURES_USED
