"""Rollout evaluation: same seeded users for every policy, per-episode bookkeeping, intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rlrec.envs.batched import BatchedInterestDrift
from rlrec.evaluation.rollout import (
    HIDDEN_INTEREST_KEY,
    entropy_nats,
    evaluate_policies,
    mean_ci95,
    rollout,
    summarize,
)
from tests.envs.conftest import N_ITEMS, K, make_sim_model, write_tiny_dataset


@pytest.fixture
def model():
    return make_sim_model()


@pytest.fixture
def dataset(tmp_path):
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture
def batched(model, dataset):
    """N users of the tiny model with warm starts, episodes cut at ``max_steps``."""

    def make(n: int, max_steps: int) -> BatchedInterestDrift:
        return BatchedInterestDrift(n, model, dataset, {"max_steps": max_steps})

    return make


class Constant:
    """Always the same item; records the first observation it sees."""

    def __init__(self, action: int) -> None:
        self.action = action
        self.first = None

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        if self.first is None:
            self.first = {k: v.copy() for k, v in obs.items()}
        return np.full(len(obs["item_history"]), self.action), state


def test_mean_ci95_is_the_student_t_interval():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    mean, lo, hi = mean_ci95(x)
    expected = stats.t.interval(0.95, 3, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(3.5)
    assert (lo, hi) == pytest.approx(expected)
    assert mean_ci95(np.array([2.0])) == (2.0, 2.0, 2.0)


def test_entropy_of_counts():
    assert entropy_nats(np.array([5, 5, 0])) == pytest.approx(np.log(2))
    assert entropy_nats(np.zeros(3)) == 0.0


def test_every_policy_meets_the_same_users(batched):
    a, b = Constant(0), Constant(3)
    results = evaluate_policies({"a": a, "b": b}, lambda n: batched(n, 6), n_episodes=32, seed=7)
    for key in ("item_history", "category_history", "step"):
        np.testing.assert_array_equal(a.first[key], b.first[key])
    assert set(results) == {"a", "b"}
    assert results["a"]["episodes"] == 32


def test_rollout_counts_one_episode_per_user(model, batched):
    s = rollout(Constant(2), batched(50, 8), seed=1)
    assert s.lengths.shape == (50,)
    assert s.lengths.min() >= 1 and s.lengths.max() <= 8
    assert np.all(s.engaged <= s.lengths) and np.all(s.buys <= s.engaged)
    assert np.all(s.categories == 1)  # one item, one category
    assert s.item_counts.sum() == s.lengths.sum() and s.item_counts[2] == s.lengths.sum()
    assert s.category_counts[model.item_category[2]] == s.lengths.sum()
    # Rewards come only from engaged steps: engaged steps earn at least the engage weight.
    assert np.all(s.returns >= s.engaged * 1.0 - 1e-9)
    again = rollout(Constant(2), batched(50, 8), 1)
    np.testing.assert_array_equal(s.returns, again.returns)


def test_summary_layout_and_values(batched):
    s = rollout(Constant(1), batched(40, 5), seed=2)
    out = summarize(s)
    for key in ("return", "session_length", "engage_rate", "buys", "coverage"):
        assert len(out[f"{key}_ci95"]) == 2
        lo, hi = out[f"{key}_ci95"]
        assert lo <= hi
    # The return's interval is Student's t over the 40 episodes (SciPy's, not ours).
    expected = stats.t.interval(0.95, 39, loc=s.returns.mean(), scale=stats.sem(s.returns))
    assert out["return_ci95"] == pytest.approx(list(expected))
    assert out["return_mean"] == pytest.approx(s.returns.mean())
    assert out["session_length_mean"] == pytest.approx(s.lengths.mean())
    assert out["engage_rate"] == pytest.approx(np.mean(s.engaged / s.lengths))
    assert out["coverage"] == pytest.approx(1 / K)
    assert out["catalog_coverage"] == pytest.approx(1 / N_ITEMS)
    assert out["category_entropy"] == 0.0


def test_hidden_state_goes_only_to_policies_that_ask(batched):
    class Oracle(Constant):
        uses_hidden_state = True

    plain, oracle = Constant(0), Oracle(0)
    rollout(plain, batched(4, 3), seed=0)
    rollout(oracle, batched(4, 3), seed=0)
    assert HIDDEN_INTEREST_KEY not in plain.first
    assert oracle.first[HIDDEN_INTEREST_KEY].shape == (4, K)


def test_evaluate_policies_rejects_no_episodes(model):
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate_policies({"a": Constant(0)}, lambda n: BatchedInterestDrift(n, model), 0, 0)
