"""Each baseline's expected choice on hand-built simulators and observations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rlrec.agents.baselines import (
    CategoryMarkovPolicy,
    GreedySupervisedPolicy,
    OracleMyopicPolicy,
    PopularPolicy,
    RandomPolicy,
    engage_probability_matrix,
    expected_reward_if_engaged,
    make_baselines,
)
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import RewardWeights
from rlrec.evaluation.rollout import HIDDEN_INTEREST_KEY, rollout
from rlrec.models.encoder import EncoderConfig, SequenceEncoder, StateEncoder
from rlrec.models.sim_model import engage_probability
from tests.envs.conftest import N_ITEMS, K


def obs_with(categories: list[int], items: list[int] | None = None, length: int = 3) -> dict:
    """Batched observations whose last step has the given category (and item) tokens."""
    n = len(categories)
    cats = np.zeros((n, length), dtype=np.int32)
    cats[:, -1] = categories
    its = np.zeros((n, length), dtype=np.int32)
    its[:, -1] = items if items is not None else 1
    return {"item_history": its, "category_history": cats, "step": np.ones((n, 1))}


def test_random_is_uniform_and_seeded():
    obs = obs_with([1, 2, 3, 4] * 50)
    a1, _ = RandomPolicy(7, seed=3).predict(obs)
    a2, _ = RandomPolicy(7, seed=3).predict(obs)
    np.testing.assert_array_equal(a1, a2)
    assert a1.min() >= 0 and a1.max() <= 6 and len(np.unique(a1)) == 7
    np.testing.assert_allclose(RandomPolicy(7).action_probabilities(obs), 1 / 7)


def test_popular_recommends_the_top_catalog_item():
    policy = PopularPolicy(5)
    actions, state = policy.predict(obs_with([1, 3]), state="s")
    np.testing.assert_array_equal(actions, [0, 0])
    assert state == "s"
    np.testing.assert_array_equal(policy.action_probabilities(obs_with([2]))[0], [1, 0, 0, 0, 0])


def test_category_markov_takes_the_top_item_of_the_most_likely_next_category():
    # 3 categories; from 0 the likeliest next is 2, from 1 it is 1 (a stay), from 2 it is
    # 0 but category 0 has no catalog item, so the next likeliest (1) is used.
    transition = np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])
    item_category = np.array([1, 2, 1, 2, 1])
    popularity = np.array([0.2, 0.3, 0.5, 0.7, 0.3])  # top of 1: action 2; top of 2: action 3
    tokens = np.array([0, 2, 0, 1])  # dataset category tokens 1..3 -> sim categories 2, 0, 1
    policy = CategoryMarkovPolicy(transition, item_category, popularity, tokens)
    actions, _ = policy.predict(obs_with([2, 3, 1]))
    # token 2 -> sim 0 -> next 2 -> action 3; token 3 -> sim 1 -> next 1 -> action 2;
    # token 1 -> sim 2 -> next 0 has no items -> next 1 -> action 2.
    np.testing.assert_array_equal(actions, [3, 2, 2])


def test_category_markov_from_sim_model_matches_its_migration_matrix(sim_model):
    policy = CategoryMarkovPolicy.from_sim_model(sim_model, N_ITEMS)
    a = sim_model.migration_matrix()
    for c in range(K):
        nxt = int(np.argmax(a[c]))
        members = np.flatnonzero(sim_model.item_category == nxt)
        top = members[np.argmax(sim_model.item_popularity[members])]
        actions, _ = policy.predict(obs_with([c + 1]))
        assert actions[0] == top


def test_greedy_supervised_takes_the_encoders_top_catalog_item():
    torch.manual_seed(0)
    n_items, n_cats = 12, 3
    encoder = SequenceEncoder(
        EncoderConfig(d_model=8, n_layers=1, n_heads=2, max_len=4, dropout=0.0),
        n_items,
        n_cats,
        np.arange(n_items) % n_cats,
    )
    with torch.no_grad():
        encoder.item_bias.copy_(torch.linspace(-2, 2, n_items))
    item_ids = np.array([5, 0, 11, 3, 7])  # catalog action -> dataset item (a permuted subset)
    rng = np.random.default_rng(1)
    items = rng.integers(1, n_items + 1, size=(6, 4)).astype(np.int32)
    obs = {
        "item_history": items,
        "category_history": ((items - 1) % n_cats + 1).astype(np.int32),
        "step": np.ones((6, 1)),
    }
    policy = GreedySupervisedPolicy(encoder, item_ids, batch_size=4)
    # The generative head (the simulator does not model revisits, so the greedy baseline
    # and the PPO actor leave the encoder's copy term out).
    with torch.no_grad():
        state = StateEncoder(encoder).encode(obs["item_history"], obs["category_history"])
        scores = encoder.item_logits(state)
    expected = np.argmax(scores.numpy()[:, item_ids], axis=1)
    actions, _ = policy.predict(obs)
    np.testing.assert_array_equal(actions, expected)
    probs = policy.action_probabilities(obs)
    np.testing.assert_array_equal(np.argmax(probs, axis=1), expected)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_engage_probability_matrix_equals_the_user_models_formula(sim_model):
    rng = np.random.default_rng(0)
    interest = rng.dirichlet(np.ones(K), size=5)
    matrix = engage_probability_matrix(sim_model, interest, N_ITEMS)
    for a in range(N_ITEMS):
        expected = engage_probability(sim_model, interest, np.full(5, a))
        np.testing.assert_allclose(matrix[:, a], expected)


def test_expected_reward_if_engaged_follows_the_nested_funnel(sim_model):
    w = RewardWeights(engage=1.0, cart=3.0, buy=10.0)
    value = expected_reward_if_engaged(sim_model, w)
    c = sim_model.item_category[0]
    pc, pb = sim_model.p_cart[c], sim_model.p_buy[c]
    assert value[0] == pytest.approx((1 - pc) * 1 + (pc - pb) * 3 + pb * 10)


def test_oracle_myopic_trades_engagement_for_buy_value(sim_model):
    # Category 2 buys far more often; a user slightly more interested in category 0 should
    # still be shown category 2 when its expected reward is higher, and category 0 when buys
    # are worth nothing.
    model = dataclasses.replace(
        sim_model,
        p_cart=np.array([0.0, 0.0, 0.9, 0.0]),
        p_buy=np.array([0.0, 0.0, 0.9, 0.0]),
        engage_base_rate=0.05,
    )
    interest = np.array([[0.4, 0.0, 0.35, 0.25]])
    obs = {**obs_with([1]), HIDDEN_INTEREST_KEY: interest}
    rich = OracleMyopicPolicy(model, N_ITEMS, RewardWeights(buy=10.0))
    flat = OracleMyopicPolicy(model, N_ITEMS, RewardWeights(engage=1.0, cart=1.0, buy=1.0))
    p = engage_probability_matrix(model, interest, N_ITEMS)[0]
    (a_rich,), _ = rich.predict(obs)
    (a_flat,), _ = flat.predict(obs)
    assert model.item_category[a_rich] == 2
    assert a_flat == int(np.argmax(p))
    assert model.item_category[a_flat] == 0
    with pytest.raises(KeyError, match="hidden interest"):
        rich.predict(obs_with([1]))


def test_oracle_gets_the_hidden_interest_through_the_rollout(sim_model, tiny_dataset):
    policies = make_baselines(sim_model, N_ITEMS, RewardWeights(), encoder=None)
    assert "greedy_supervised" not in policies
    oracle = policies["oracle_myopic"]
    seen = []

    class Spy:
        uses_hidden_state = True

        def predict(self, obs, state=None, episode_start=None, deterministic=False):
            seen.append(obs[HIDDEN_INTEREST_KEY].copy())
            return oracle.predict(obs, state, episode_start, deterministic)

    env = BatchedInterestDrift(8, sim_model, tiny_dataset, {"max_steps": 5})
    stats = rollout(Spy(), env, seed=0)
    assert seen and seen[0].shape == (8, K)
    np.testing.assert_allclose(seen[0].sum(axis=1), 1.0)
    assert stats.lengths.min() >= 1
