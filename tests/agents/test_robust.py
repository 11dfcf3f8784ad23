"""Robust selection: the validation worlds hold the prior's extremes; the safe rule never loses."""

from __future__ import annotations

import numpy as np

from rlrec.agents.baselines import CategoryMarkovPolicy, PopularPolicy
from rlrec.agents.robust import robust_planner, select_robust, validation_worlds
from rlrec.envs.config import EnvConfig
from rlrec.models.prior import RESPONSE_PARAMETERS, RESPONSE_PRIOR, unidentified, with_response
from tests.envs.conftest import make_sim_model

ENV = EnvConfig(history_length=10, max_steps=50, catalog_size=20, start="stationary")


def test_validation_worlds_hold_the_centre_and_each_end() -> None:
    model = make_sim_model()
    thetas, labels = validation_worlds(model, 3, seed=0)
    names = unidentified(model)
    assert labels[0] == "centre" and labels[-3:] == ["draw0", "draw1", "draw2"]
    for name in names:
        j = RESPONSE_PARAMETERS.index(name)
        assert (
            RESPONSE_PRIOR[name].low in thetas[:, j] and RESPONSE_PRIOR[name].high in thetas[:, j]
        )
    known = with_response(model, dict.fromkeys(names[:1], 1.0) | {"leave_streak_factor": 1.0})
    fewer, _ = validation_worlds(known, 0, seed=0)
    assert len(fewer) < len(thetas) - 3


def test_safe_rule_prefers_the_candidate_that_never_loses() -> None:
    model = make_sim_model()
    baselines = {
        "popular": PopularPolicy(20),
        "category_markov": CategoryMarkovPolicy.from_sim_model(model, 20),
    }
    thetas, labels = validation_worlds(model, 2, seed=0)
    choice = select_robust(model, None, ENV, baselines, baselines, thetas, labels, 300, 0, "safe")
    # Each candidate is one of the baselines: its ratio is 1 where it is the best, below
    # elsewhere; the chosen one's worst ratio is the highest.
    worst = {name: r.min() for name, r in choice.ratios.items()}
    assert choice.chosen == max(worst, key=worst.get)
    for r in choice.ratios.values():
        assert np.all(r <= 1.0 + 1e-12)


def test_the_robust_plan_never_loses_on_its_validation_worlds() -> None:
    model = make_sim_model()
    baselines = {
        "popular": PopularPolicy(20),
        "category_markov": CategoryMarkovPolicy.from_sim_model(model, 20),
    }
    _, choice = robust_planner(model, None, ENV, 20, baselines, n_random=2, episodes=400)
    summary = choice.summary()
    assert summary["chosen"] in summary["candidates"]
    if choice.rule == "safe":
        assert summary["candidates"][choice.chosen]["worst_ratio"] >= 0.99


def test_known_returns_and_early_exit_give_the_full_choice() -> None:
    """Known returns are not rolled again; an unsafe candidate stops early, same choice."""
    from rlrec.agents.baselines import RandomPolicy

    model = make_sim_model()
    baselines = {
        "popular": PopularPolicy(20),
        "category_markov": CategoryMarkovPolicy.from_sim_model(model, 20),
    }
    thetas, labels = validation_worlds(model, 2, seed=0)
    probe = select_robust(model, None, ENV, baselines, baselines, thetas, labels, 300, 0)
    # A known candidate as good as the best baseline everywhere (safe), and random.
    best = np.maximum(probe.returns["popular"], probe.returns["category_markov"])
    candidates = {"safe": None, "random": RandomPolicy(20, seed=0)}
    args = (model, None, ENV, candidates, baselines, thetas, labels, 300, 0, "safe")
    # Baselines unknown: every world is rolled out.
    full = select_robust(*args, known_returns={"safe": best})
    assert np.all(np.isfinite(full.ratios["random"])) and full.ratios["random"].min() < 0.99
    visited: list[str] = []
    known = {"safe": best, **{b: probe.returns[b] for b in baselines}}
    fast = select_robust(*args, progress=visited.append, known_returns=known)
    assert fast.chosen == full.chosen == "safe"
    # Random falls short in the first world it visits and is rolled out in no other.
    assert len(visited) == 1 and np.isfinite(fast.ratios["random"]).sum() == 1
    record = fast.summary()["candidates"]["random"]
    assert record["worlds_evaluated"] == 1 and record["worst_ratio"] < 0.99
    np.testing.assert_array_equal(fast.returns["popular"], full.returns["popular"])
    # Without a safe known candidate the rule falls back to the best worst ratio: random,
    # below the known one's everywhere, still stops after one world.
    meh = 0.95 * best
    visited.clear()
    fallback = select_robust(
        model,
        None,
        ENV,
        {"meh": None, "random": candidates["random"]},
        baselines,
        thetas,
        labels,
        300,
        0,
        "safe",
        progress=visited.append,
        known_returns={"meh": meh, **{b: probe.returns[b] for b in baselines}},
    )
    assert (fallback.chosen, fallback.rule) == ("meh", "safe-fallback")
    assert len(visited) == 1
