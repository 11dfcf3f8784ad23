"""The planner: its values agree with simulation, it plans around boredom, its file is safe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlrec.agents.planner import Planner, PlannerConfig, PlannerPolicy, PlanTable, streaks
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig, RewardWeights
from rlrec.errors import UserError
from rlrec.evaluation.rollout import rollout
from rlrec.models.prior import RESPONSE_PARAMETERS
from tests.envs.conftest import make_sim_model

ENV = EnvConfig(history_length=30, max_steps=200, catalog_size=20, start="stationary")


def point(model, **values) -> np.ndarray:
    """(1, P) the model's response parameters with ``values`` replaced."""
    return np.array([[float(values.get(p, getattr(model, p))) for p in RESPONSE_PARAMETERS]])


def test_streaks_read_the_trailing_run() -> None:
    history = np.array([[-1, -1, 2, 2], [1, 2, 2, 2], [3, 3, 3, 3], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(streaks(history, 10), [2, 3, 4, 1])
    np.testing.assert_array_equal(streaks(history, 3), [2, 3, 3, 1])


def test_the_plans_value_matches_simulated_returns() -> None:
    # An independent check of the backward induction: the plan's own value at the first step
    # (m = 0, streak 1) against the mean return of simulated users following it.
    model = make_sim_model(leave_hazard=np.array([0.15, 0.12, 0.1]))
    planner = Planner(model, 20, RewardWeights(), PlannerConfig(), point(model))
    plan = planner.table
    env = BatchedInterestDrift(20000, model, None, ENV)
    stats = rollout(PlannerPolicy(plan, 20), env, seed=0)
    # Predicted: E over the first category of V(t=1, c, s=1) = max_k Q.
    first = model.initial_category
    predicted = float(first @ plan.values[0, :, 0, :].max(axis=1))
    se = stats.returns.std() / np.sqrt(len(stats.returns))
    assert abs(stats.returns.mean() - predicted) < 4 * se + 0.02 * predicted


def test_boredom_makes_the_plan_leave_a_long_streak() -> None:
    model = make_sim_model(stay_by_streak=np.array([0.9, 0.9, 0.9, 0.9]))
    calm = Planner(
        model, 20, RewardWeights(), PlannerConfig(), point(model, leave_streak_factor=1.0)
    )
    bored = Planner(
        model,
        20,
        RewardWeights(),
        PlannerConfig(),
        point(model, leave_streak_factor=2.0, leave_streak_start=2.0),
    )
    # At a long streak in category c, the calm plan stays in c more often than the bored one.
    t, s = 1, 9
    stay_calm = np.mean(calm.policy[t, :, s] == np.arange(4))
    stay_bored = np.mean(bored.policy[t, :, s] == np.arange(4))
    assert stay_calm > stay_bored


def test_planning_for_the_prior_is_deterministic_and_weights_matter() -> None:
    model = make_sim_model()
    a = Planner(model, 20, RewardWeights(), PlannerConfig(n_draws=3, seed=1))
    b = Planner(model, 20, RewardWeights(), PlannerConfig(n_draws=3, seed=1))
    np.testing.assert_array_equal(a.values, b.values)
    only_first = Planner(model, 20, RewardWeights(), PlannerConfig(), a.draws, np.r_[1.0, 0, 0])
    alone = Planner(model, 20, RewardWeights(), PlannerConfig(), a.draws[:1])
    np.testing.assert_allclose(only_first.values, alone.values, rtol=1e-6)
    with pytest.raises(UserError, match="weight"):
        Planner(model, 20, RewardWeights(), PlannerConfig(), a.draws, np.zeros(3))


def test_plan_table_round_trip_and_damaged_files(tmp_path) -> None:
    model = make_sim_model()
    plan = Planner(model, 20, RewardWeights(), PlannerConfig(), point(model)).table
    plan.save(tmp_path / "plan.npz")
    back = PlanTable.load(tmp_path / "plan.npz")
    np.testing.assert_array_equal(back.values, plan.values)
    np.testing.assert_array_equal(back.policy, plan.policy)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "plan.npz").read_bytes()[:200])
    with pytest.raises(UserError, match="unreadable plan"):
        PlanTable.load(tmp_path / "cut.npz")
    bad = dataclasses.replace(plan, policy=plan.policy + 100)
    bad.save(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="inconsistent plan"):
        PlanTable.load(tmp_path / "bad.npz")
