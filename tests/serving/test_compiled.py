"""The scorer's traced actor: the eager policy's numbers, any batch size, a safe fallback."""

from __future__ import annotations

import asyncio
import copy
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from rlrec.agents.config import load_agent_config
from rlrec.agents.train import load_run, train_agent
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.serving.export import export_run
from rlrec.serving.scorer import Scorer, SlateRequest
from tests.agents.conftest import TINY_AGENT, write_yaml
from tests.serving.conftest import require_serve_extra
from tests.serving.helpers import histories_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def exports(world, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exports of tiny ``finetune``, ``finetune`` + ``mask_recent`` and planned ``frozen`` runs.

    64 steps each; the serving world's agents are ``frozen`` without a plan. They share the
    world's env and encoder cache.
    """
    root = tmp_path_factory.mktemp("compiled")
    env = world["env"]
    out = {}
    planned = {"encoder": "frozen", "planner": True, "selection_draws": 1}
    for name, extra in (
        ("finetune", {}),
        ("masked", {"mask_recent": 2}),
        ("planned", {**planned, "selection_episodes": 40}),
    ):
        mapping = {**TINY_AGENT, "encoder": "finetune", "total_timesteps": 64, **extra}
        agent = load_agent_config(write_yaml(root / f"{name}.yaml", mapping))
        run = root / f"run_{name}"
        train_agent(env, agent, run, timesteps=64, seed=0, cache_dir=world["cache"])
        out[f"run_{name}"] = run
        out[name] = export_run(run, root / f"export_{name}").out
    return out


def _eager(scorer: Scorer) -> Scorer:
    twin = copy.copy(scorer)
    twin.actor = None
    twin.frozen_actor = None
    return twin


def _sim_histories(run: Path, scorer: Scorer, n: int) -> list[list[tuple[str, float]]]:
    loaded = load_run(run)
    env = BatchedInterestDrift(n, loaded.sim_model, loaded.dataset, loaded.config.env)
    obs, _ = env.reset(seed=4)
    obs, *_ = env.step(np.arange(n) % scorer.n_actions)
    return histories_of(obs, scorer)


@pytest.mark.parametrize("kind", ["finetune", "masked", "planned"])
def test_traced_actor_scores_what_the_agent_computes(exports, kind):
    scorer = Scorer.load(exports[kind])
    if kind == "planned":  # frozen encoder and the plan's prior: the frozen path is traced
        assert scorer.actor is None and scorer.frozen_actor is not None
        assert scorer.policy.prior is not None
    else:
        assert scorer.actor is not None, "a finetune agent must be traced"
    assert (scorer.policy.mask_recent > 0) == (kind == "masked")
    histories = _sim_histories(exports[f"run_{kind}"], scorer, 64)
    eager = _eager(scorer)
    rng = np.random.default_rng(0)
    # Batch sizes other than the traced example's (2): the batch dimension is not baked in.
    for size in (1, 5, 64):
        contexts = [scorer.context(h) for h in histories[:size]]
        got = scorer.probabilities(contexts)
        want = eager.probabilities(contexts)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        # What the agent itself computes (SB3's distribution, masks included).
        obs = scorer._observations(contexts)
        agent = scorer.policy.action_probabilities(obs)
        np.testing.assert_allclose(got, agent / agent.sum(axis=1, keepdims=True), atol=1e-6)
        requests = [SlateRequest(h, 10) for h in histories[:size]]
        fast, slow = scorer.recommend(requests, rng), eager.recommend(requests, rng)
        assert [r.items for r in fast] == [r.items for r in slow]
        for a, b in zip(fast, slow, strict=True):
            np.testing.assert_allclose(a.propensities, b.propensities, rtol=1e-5, atol=1e-9)
    if kind == "masked":
        # The masked actions get no probability (the last two steps' catalog items).
        context = scorer.context(histories[0])
        recent = context.items[-2:]
        actions = scorer.action_of_item[recent[recent > 0] - 1]
        assert (scorer.probabilities([context])[0][actions[actions >= 0]] < 1e-12).all()


def test_frozen_agents_and_failed_traces_score_eagerly(world, exports, monkeypatch):
    frozen = Scorer.load(world["export_a"])  # frozen, no plan: its own traced path
    assert frozen.actor is None and frozen.frozen_actor is not None

    def broken(*args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(torch.jit, "trace", broken)
    scorer = Scorer.load(exports["finetune"])
    assert scorer.actor is None
    assert Scorer.load(world["export_a"]).frozen_actor is None
    monkeypatch.undo()
    traced = Scorer.load(exports["finetune"])
    request = [SlateRequest([(str(scorer.item_raw[3]), 0.0)], 5)]
    rng = np.random.default_rng(0)
    assert scorer.recommend(request, rng)[0].items == traced.recommend(request, rng)[0].items


def test_a_trace_that_disagrees_with_the_agent_is_refused(exports, monkeypatch):
    real = Scorer._actor_probabilities

    def skewed(self, actor, obs):
        probs = real(self, actor, obs)
        probs[:, 0] += 1e-3  # as if the graph had baked in something it should not
        return probs

    monkeypatch.setattr(Scorer, "_actor_probabilities", skewed)
    assert Scorer.load(exports["finetune"]).actor is None


def test_a_replaced_model_is_freed_though_the_heap_is_frozen(world, exports):
    # The server freezes the heap after each load (rlrec.serving.app._settle_heap); a model
    # it replaces holds reference cycles (SB3), so it must be collected before the refreeze.
    require_serve_extra()
    from rlrec.serving.app import ModelHolder

    holder = ModelHolder(str(exports["finetune"]))
    try:
        asyncio.run(holder.reload())
        assert holder.current is not None and gc.get_freeze_count() > 0
        old = weakref.ref(holder.current.policy.model.policy)
        asyncio.run(holder.reload(str(world["export_a"])))
        assert old() is None
        assert holder.current.actor is None  # the frozen agent now serves
    finally:
        gc.unfreeze()


def test_a_planned_agents_greedy_slate_starts_with_the_action_it_was_evaluated_by(exports):
    """The first greedy item is the agent's deterministic action (its factored mode)."""
    from rlrec.serving.scorer import _factored_mode, _first

    scorer = Scorer.load(exports["planned"])
    assert scorer.mode_slots is not None
    histories = _sim_histories(exports["run_planned"], scorer, 64)
    contexts = [scorer.context(h) for h in histories]
    acted, _ = scorer.policy.predict(scorer._observations(contexts), deterministic=True)
    requests = [SlateRequest(h, 5, exclude_seen=False) for h in histories]
    slates = scorer.recommend(requests, np.random.default_rng(0))
    assert [int(r.actions[0]) for r in slates] == acted.tolist()
    for r in slates:  # the rest in order of probability, no item twice
        assert len(set(r.actions.tolist())) == len(r.actions) == 5
        assert r.propensities[1:] == sorted(r.propensities[1:], reverse=True)
    # The helpers on a hand-made case: slot 1 holds more mass, slot 0 the single best item.
    probs = np.array([[0.3, 0.05, 0.25, 0.2, 0.2]])
    slots = np.array([0, 0, 1, 1, 1])
    assert _factored_mode(probs, slots).tolist() == [2]
    # Equal masses: the slot holding the best item.
    assert _factored_mode(np.array([[0.4, 0.1, 0.25, 0.25]]), np.array([0, 0, 1, 1])).tolist() == [
        0
    ]
    order = np.array([[4, 3, 2, 1], [1, 2, 3, 0]])
    moved = _first(order, np.array([2, 0]), np.array([4, 3]))
    assert moved.tolist() == [[2, 4, 3, 1], [0, 1, 2, 0]]
