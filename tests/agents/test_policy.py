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
