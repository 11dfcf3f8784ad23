"""The factored categorical policy: exact against torch.distributions; sampling; frozen terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from rlrec.agents.categorical import (
    CatalogTerm,
    catalog_slots,
    category_summaries,
    factored_log_prob_entropy,
    sample,
)
from rlrec.agents.features import N_EXTRA
from rlrec.agents.policy import FactoredActorHead, build_model
from rlrec.agents.train import make_training_env
from tests.agents.test_policy import _env, agent, small_encoder

ITEM_CATEGORY = torch.tensor([3, 0, 3, 7, 0, 3, 9, 7])  # K = 4 slots: 0, 3, 7, 9 (one item)


def _factored(u: torch.Tensor, c: torch.Tensor, actions: torch.Tensor):
    slot_category, action_slot = catalog_slots(ITEM_CATEGORY)
    log_norm, within = category_summaries(u, action_slot, len(slot_category))
    taken = u.gather(1, actions[:, None]).squeeze(1)
    return factored_log_prob_entropy(c, log_norm, within, taken, action_slot[actions])


def test_catalog_slots_map_actions_to_present_categories() -> None:
    slot_category, action_slot = catalog_slots(ITEM_CATEGORY)
    assert slot_category.tolist() == [0, 3, 7, 9]
    assert action_slot.tolist() == [1, 0, 1, 2, 0, 1, 3, 2]


def test_factored_distribution_equals_the_full_softmax_with_gradients() -> None:
    torch.manual_seed(0)
    u = (3 * torch.randn(6, 8, dtype=torch.float64)).requires_grad_()
    c = (3 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_()
    with torch.no_grad():
        u[0] += 40.0  # large logits: no overflow, no cancellation
        c[1, 2] = -60.0  # a category with (almost) no mass
    actions = torch.tensor([0, 3, 6, 7, 1, 2])
    _, action_slot = catalog_slots(ITEM_CATEGORY)
    full = Categorical(logits=u + c[:, action_slot])
    expected = (full.log_prob(actions), full.entropy())
    got = _factored(u, c, actions)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    weights = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    grads_expected = torch.autograd.grad(
        (weights * expected[0]).sum() + 0.3 * expected[1].sum(), (u, c)
    )
    grads_got = torch.autograd.grad((weights * got[0]).sum() + 0.3 * got[1].sum(), (u, c))
    for e, g in zip(grads_expected, grads_got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


def test_summaries_are_the_per_category_logsumexp_and_entropy() -> None:
    torch.manual_seed(1)
    u = torch.randn(5, 8, dtype=torch.float64) * 4
    slot_category, action_slot = catalog_slots(ITEM_CATEGORY)
    log_norm, within = category_summaries(u, action_slot, len(slot_category))
    for k in range(len(slot_category)):
        members = u[:, action_slot == k]
        torch.testing.assert_close(log_norm[:, k], members.logsumexp(dim=1))
        torch.testing.assert_close(within[:, k], Categorical(logits=members).entropy())
    assert torch.all(within[:, 3] == 0)  # a one-item category is certain


def test_sample_follows_the_probabilities_and_never_draws_impossible_actions() -> None:
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.0, 0.0, 1.0, 0.0]]).repeat(20000, 1)
    torch.manual_seed(3)
    draws = sample(probs)
    torch.manual_seed(3)
    assert torch.equal(draws, sample(probs))  # seeded by torch's generator
    first = torch.bincount(draws[0::2], minlength=4).double() / 20000
    torch.testing.assert_close(first, probs[0].double(), atol=0.015, rtol=0)
    assert torch.all(draws[1::2] == 2)
    assert not torch.any(draws[0::2] == 1)


@pytest.mark.parametrize("frozen", [True, False])
def test_head_log_prob_entropy_matches_its_logits(frozen: bool) -> None:
    torch.manual_seed(2)
    d = 5
    head = FactoredActorHead(d, ITEM_CATEGORY.tolist(), 10, hidden=6, frozen_item_term=frozen)
    torch.nn.init.normal_(head.category.weight, std=0.5)
    torch.nn.init.normal_(head.category.bias, std=0.5)
    features = torch.randn(7, d + N_EXTRA)
    features[:, d + N_EXTRA - 1] = torch.tensor([0, 1, 4, 8, 10, 2, 4]).float()  # tokens
    if frozen:  # the summaries come with the features, as FrozenEncoderStates appends them
        summaries = head.catalog_term().summaries(features[:, :d])
        features = torch.cat([features, summaries], dim=1)
    assert features.shape[1] == head.features_dim
    actions = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    log_prob, entropy = head.log_prob_entropy(features, actions)
    full = Categorical(logits=head(features))
    torch.testing.assert_close(log_prob, full.log_prob(actions), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, full.entropy(), rtol=1e-5, atol=1e-5)
    trained = {name for name, p in head.named_parameters() if p.requires_grad}
    assert ("item.weight" in trained) is not frozen


def test_frozen_agent_trains_category_terms_only_on_its_own_summaries(sim_model, tiny_dataset):
    encoder = small_encoder(tiny_dataset)
    cfg = agent(encoder="frozen", init_temperature=0.5)
    venv = make_training_env(cfg, sim_model, tiny_dataset, _env(), encoder, seed=0)
    model = build_model(cfg, venv, encoder, sim_model.item_ids, seed=0)
    head = model.policy.action_net
    assert isinstance(head, FactoredActorHead) and head.frozen_item_term
    # The wrapper's summaries are those of the head's item term (same numbers, same source).
    obs = torch.as_tensor(venv.reset())
    d = encoder.state_dim
    torch.testing.assert_close(
        obs[:, d + N_EXTRA :], head.catalog_term().summaries(obs[:, :d]), rtol=1e-5, atol=1e-5
    )
    expected = CatalogTerm.from_encoder(encoder, sim_model.item_ids, 0.5)
    torch.testing.assert_close(head.item.weight.detach(), expected.weight)
    item_before = head.item.weight.detach().clone()
    category_before = head.category.weight.detach().clone()
    model.learn(cfg.rollout_size * 2)
    assert torch.equal(head.item.weight, item_before)
    assert not torch.equal(head.category.weight, category_before)


def test_catalog_term_summaries_shape_and_finiteness() -> None:
    torch.manual_seed(4)
    _, action_slot = catalog_slots(ITEM_CATEGORY)
    term = CatalogTerm(torch.randn(8, 3), torch.randn(8), action_slot, 4)
    out = term.summaries(torch.randn(9, 3) * 50)
    assert out.shape == (9, 8) and torch.isfinite(out).all()
    assert np.all(out[:, 4:].numpy() >= -1e-6)  # entropies are non-negative
