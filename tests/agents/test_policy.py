"""Transfer init, masking, frozen features and determinism of the PPO agent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO

from rlrec.agents.baselines import GreedySupervisedPolicy
from rlrec.agents.config import AgentConfig
from rlrec.agents.features import N_EXTRA, STREAK_BINS, FrozenEncoderStates, extra_features
from rlrec.agents.policy import (
    AgentPolicy,
    FactoredActorHead,
    RecentItemMask,
    build_model,
    recent_item_mask,
    token_to_action_table,
)
from rlrec.agents.train import make_training_env
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.models.encoder import EncoderConfig, SequenceEncoder
from tests.envs.conftest import N_ITEMS


def small_encoder(dataset, seed: int = 0) -> SequenceEncoder:
    torch.manual_seed(seed)
    encoder = SequenceEncoder(
        EncoderConfig(d_model=8, n_layers=1, n_heads=2, max_len=8, dropout=0.1),
        dataset.n_items,
        dataset.n_categories,
        dataset.item_category,
    )
    with torch.no_grad():  # a spread of item biases makes the greedy choice well defined
        encoder.item_bias.copy_(torch.linspace(-1, 1, dataset.n_items))
    return encoder.eval()


def agent(**overrides) -> AgentConfig:
    base = {
        "n_envs": 4,
        "n_steps": 8,
        "batch_size": 16,
        "n_epochs": 2,
        "critic_arch": (8,),
        "checkpoint_every": 0,
    }
    return AgentConfig(**{**base, **overrides})


def raw_observations(sim_model, dataset, n: int = 16, seed: int = 3) -> dict:
    env = BatchedInterestDrift(n, sim_model, dataset, {"history_length": 6})
    obs, _ = env.reset(seed=seed)
    return obs


@pytest.mark.parametrize(("mode", "temperature"), [("frozen", 1.0), ("finetune", 0.5)])
def test_untrained_policy_is_the_supervised_recommender(mode, temperature, sim_model, tiny_dataset):
    encoder = small_encoder(tiny_dataset)
    cfg = agent(encoder=mode, init_temperature=temperature)
    venv = make_training_env(cfg, sim_model, tiny_dataset, _env(), encoder, seed=0)
    model = build_model(cfg, venv, encoder, sim_model.item_ids, seed=0)
    policy = AgentPolicy(model, encoder=encoder if mode == "frozen" else None)
    obs = raw_observations(sim_model, tiny_dataset)
    greedy = GreedySupervisedPolicy(encoder, sim_model.item_ids)
    logits = torch.as_tensor(greedy.catalog_scores(obs))
    expected = torch.softmax(logits / temperature, dim=1).numpy()
    np.testing.assert_allclose(policy.action_probabilities(obs), expected, atol=1e-5)
    actions, _ = policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, greedy.predict(obs)[0])
    # The encoder's dropout is off inside the policy even in training mode.
    model.policy.set_training_mode(True)
    np.testing.assert_allclose(policy.action_probabilities(obs), expected, atol=1e-5)


def _env():
    from rlrec.envs.config import EnvConfig

    return EnvConfig(history_length=6, max_steps=10)


def test_recent_item_mask_forbids_recent_catalog_items():
    item_ids = np.array([4, 0, 2])  # action 0 = dataset item 4 (token 5), ...
    table = token_to_action_table(item_ids, n_item_tokens=7)
    np.testing.assert_array_equal(table, [-1, 1, -1, 2, -1, 0, -1])
    history = np.array([[5, 1, 6], [0, 0, 3], [3, 5, 1]])
    mask = recent_item_mask(history, table, 3, recent=2)
    # row 0: tokens 1 (action 1), 6 (not in catalog); row 1: padding, token 3 (action 2);
    # row 2: last two tokens 5 (action 0), 1 (action 1).
    np.testing.assert_array_equal(mask, [[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(recent_item_mask(history, table, 3, recent=0), 1)


def test_masked_agent_never_recommends_a_recent_item(sim_model, tiny_dataset):
    encoder = small_encoder(tiny_dataset)
    cfg = agent(encoder="finetune", mask_recent=2)
    venv = make_training_env(cfg, sim_model, tiny_dataset, _env(), encoder, seed=0)
    assert isinstance(venv, RecentItemMask)
    model = build_model(cfg, venv, encoder, sim_model.item_ids, seed=0)
    assert isinstance(model, MaskablePPO)
    model.learn(cfg.rollout_size)
    table = token_to_action_table(sim_model.item_ids, tiny_dataset.n_items + 1)
    policy = AgentPolicy(model, token_to_action=table, mask_recent=2)
    obs = raw_observations(sim_model, tiny_dataset, n=64)
    probs = policy.action_probabilities(obs)
    recent = table[obs["item_history"][:, -2:]]
    for row, acts in enumerate(recent):
        for a in acts[acts >= 0]:
            assert probs[row, a] == 0.0
    actions, _ = policy.predict(obs)
    assert not np.any(actions[:, None] == recent)


def test_frozen_wrapper_encodes_terminal_observations(sim_model, tiny_dataset):
    encoder = small_encoder(tiny_dataset)
    cfg = agent(encoder="frozen")
    venv = make_training_env(cfg, sim_model, tiny_dataset, _env(), encoder, seed=0)
    assert isinstance(venv, FrozenEncoderStates)
    assert venv.catalog is not None  # the frozen item term's summaries come along
    width = encoder.state_dim + N_EXTRA + 2 * venv.catalog.n_slots
    obs = venv.reset()
    assert obs.shape == (4, width) and obs.dtype == np.float32
    ended = 0
    for _ in range(30):
        venv.step_async(np.zeros(4, dtype=np.int64))
        obs, _, dones, infos = venv.step_wait()
        for i in np.flatnonzero(dones):
            assert infos[i]["terminal_observation"].shape == (width,)
            ended += 1
    assert ended > 0


def first_update_parameters(sim_model, dataset, seed: int, mode: str) -> list[np.ndarray]:
    encoder = small_encoder(dataset)
    cfg = agent(encoder=mode)
    venv = make_training_env(cfg, sim_model, dataset, _env(), encoder, seed=seed)
    model = build_model(cfg, venv, encoder, sim_model.item_ids, seed=seed)
    model.learn(cfg.rollout_size)  # exactly one rollout and one update
    return [p.detach().clone().numpy() for p in model.policy.parameters()]


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_same_seed_gives_the_same_first_update(mode, sim_model, tiny_dataset):
    a = first_update_parameters(sim_model, tiny_dataset, 5, mode)
    b = first_update_parameters(sim_model, tiny_dataset, 5, mode)
    c = first_update_parameters(sim_model, tiny_dataset, 6, mode)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_catalog_size_matches_the_actor_head(sim_model, tiny_dataset):
    encoder = small_encoder(tiny_dataset)
    cfg = agent(encoder="frozen")
    venv = make_training_env(cfg, sim_model, tiny_dataset, _env(), encoder, seed=0)
    model = build_model(cfg, venv, encoder, sim_model.item_ids, seed=0)
    assert model.policy.action_net.out_features == N_ITEMS


def test_extra_features_read_the_streak_and_the_last_category() -> None:
    history = torch.tensor([[0, 3, 5, 5, 5], [0, 0, 0, 0, 2], [5, 5, 5, 5, 5], [4, 4, 1, 4, 4]])
    extra = extra_features(history, torch.tensor([[1], [2], [3], [4]]))
    assert extra.shape == (4, N_EXTRA)
    bins = extra[:, 1 : 1 + STREAK_BINS].argmax(dim=1) + 1
    assert bins.tolist() == [3, 1, 5, 2]
    assert extra[:, -1].tolist() == [5.0, 2.0, 5.0, 4.0]


def test_factored_head_gate_moves_mass_off_the_current_category() -> None:
    d, item_category = 4, [0, 0, 1, 2]
    head = FactoredActorHead(d, item_category, n_categories=3, hidden=8)
    features = torch.zeros(2, d + N_EXTRA)
    features[:, -1] = torch.tensor([1.0, 2.0])  # current category tokens: 0 and 1
    before = head(features)
    assert torch.allclose(before, head.item(features[:, :d]))  # zero-initialised terms
    with torch.no_grad():
        head.category.bias[-1] = -5.0  # the gate: away from the current category
    after = head(features)
    assert torch.allclose(after[0, :2], before[0, :2] - 5.0)
    assert torch.allclose(after[0, 2:], before[0, 2:])
    assert torch.allclose(after[1, 2], before[1, 2] - 5.0)


def _merged_sim_model():
    """The env tests' model with dataset categories 2 and 3 merged into one sim category."""
    from tests.envs.conftest import make_sim_model

    merge = np.array([0, 1, 2, 2])
    base = make_sim_model()
    cats = merge[np.arange(N_ITEMS) % 4]
    rng = np.random.default_rng(7)
    switch = rng.random((3, 3)) + 0.1
    np.fill_diagonal(switch, 0.0)
    pop = rng.random(N_ITEMS) + 0.05
    return make_sim_model(
        category_ids=("c0", "c1", "c23"),
        switch_matrix=switch / switch.sum(axis=1, keepdims=True),
        initial_category=np.array([0.4, 0.3, 0.3]),
        item_category=cats,
        item_popularity=pop / np.bincount(cats, weights=pop)[cats],
        p_cart=base.p_cart[:3],
        p_buy=base.p_buy[:3],
        category_of_dataset_category=merge,
    )


@pytest.mark.parametrize("merged", [False, True])
def test_planned_start_acts_exactly_as_its_plan(merged, sim_model, tiny_dataset):
    """PPO's start on a plan prior has the plan's action as its mode, whatever the popularity.

    The never-lose check reuses the plan's validation returns for the start, so this must hold
    action for action (the catalog's top items differ in popularity across categories here).
    """
    from rlrec.agents.planner import Planner, PlannerConfig, PlannerPolicy
    from rlrec.agents.train import policy_inputs
    from rlrec.evaluation.rollout import rollout

    if merged:
        sim_model = _merged_sim_model()
    encoder = small_encoder(tiny_dataset)
    cfg = agent(encoder="frozen", planner=True, prior_temperature=0.1, init_temperature=0.5)
    n_actions = sim_model.n_items
    plan = Planner(sim_model, n_actions, _env().reward_weights, PlannerConfig(iterations=0)).table
    venv = make_training_env(cfg, sim_model, tiny_dataset, _env(), encoder, seed=0, plan=plan)
    catalog, prior = policy_inputs(cfg, sim_model, encoder, n_actions, plan)
    model = build_model(cfg, venv, encoder, sim_model.item_ids, seed=0, catalog=catalog)
    start = AgentPolicy(model, encoder=encoder, prior=prior)
    planned = PlannerPolicy(plan, n_actions)
    env = BatchedInterestDrift(64, sim_model, tiny_dataset, _env())
    pop, cats = sim_model.item_popularity, sim_model.item_category
    top = np.array([pop[cats == c].max() for c in range(sim_model.n_categories)])
    assert np.ptp(np.log(top)) > 0.1  # unshifted, the most popular top item would pull the mode
    seen = 0
    obs, _ = env.reset(seed=1)
    for _ in range(10):
        expected, _ = planned.predict(obs)
        actions, _ = start.predict(obs, deterministic=True)
        np.testing.assert_array_equal(actions, expected)
        seen += len(actions)
        obs, *_ = env.step(expected)
    assert seen == 640
    # The same returns as the plan's, user for user.
    a = rollout(start, BatchedInterestDrift(64, sim_model, tiny_dataset, _env()), seed=2)
    b = rollout(planned, BatchedInterestDrift(64, sim_model, tiny_dataset, _env()), seed=2)
    np.testing.assert_array_equal(a.returns, b.returns)
