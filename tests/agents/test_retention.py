"""The retention bonus: what a session is worth beyond itself, and plans that use it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlrec.agents.baselines import PopularPolicy
from rlrec.agents.planner import Planner, PlannerConfig, PlannerPolicy
from rlrec.agents.retention import retention_bonus
from rlrec.agents.robust import lifecycle_bonus
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig, RewardWeights
from rlrec.envs.lifecycle import ReturnProcess
from rlrec.errors import UserError
from rlrec.evaluation.rollout import rollout
from tests.agents.test_planner import point
from tests.envs.conftest import make_sim_model

LIFECYCLE = EnvConfig(
    history_length=30, max_steps=60, catalog_size=20, start="stationary", episode="lifecycle"
)
COUNTS = np.array([8.0, 4.0, 1.0, 0.3])


def process(**fields: object) -> ReturnProcess:
    base: dict[str, object] = {
        "covariates": ["log_events", "n_buys"],
        "dropout_intercept": 0.0,
        "dropout_coef": [-0.8, -0.5],
        "gap_shape": 1.0,
        "gap_scale_days": 6.0,
        "gap_coef": [0.4, 0.3],
        "frailty_shape": 2.0,
    }
    return ReturnProcess.from_mapping({**base, **fields})


def test_no_lever_no_bonus() -> None:
    flat = process(dropout_coef=[0.0, 0.0], gap_coef=[0.0, 0.0])
    bonus = retention_bonus(flat, LIFECYCLE, 5.0, COUNTS, seed=0, n_users=5000)
    assert bonus.event == pytest.approx(0.0, abs=1e-12)
    assert bonus.outcome == RewardWeights(0.0, 0.0, 0.0)
    assert 0.0 < bonus.p_return < 1.0


def test_bonus_follows_the_covariates_that_bring_users_back() -> None:
    bonus = retention_bonus(process(), LIFECYCLE, 5.0, COUNTS, seed=0, n_users=5000)
    assert bonus.event > 0.0  # longer sessions bring users back
    assert bonus.outcome.engage == pytest.approx(0.0)  # engaged steps are not a covariate
    assert bonus.outcome.buy > bonus.outcome.cart == pytest.approx(0.0)
    # Twice the session value, twice the bonus (the continuation is in session values).
    double = retention_bonus(process(), LIFECYCLE, 10.0, COUNTS, seed=0, n_users=5000)
    assert double.event == pytest.approx(2 * bonus.event)
    # A bonus per event equals the finite difference of the continuation it stands for.
    assert bonus.further_sessions > 0.0


def test_bonus_refuses_bad_inputs() -> None:
    with pytest.raises(UserError, match="mean_counts"):
        retention_bonus(process(), LIFECYCLE, 5.0, np.array([1.0, np.nan, 0, 0]))
    with pytest.raises(UserError, match="session value"):
        retention_bonus(process(), LIFECYCLE, -1.0, COUNTS)
    with pytest.raises(UserError, match="lifecycle"):
        session = dataclasses.replace(LIFECYCLE, episode="session")
        lifecycle_bonus(make_sim_model(), None, session, 20)


def test_planning_for_returns_lengthens_sessions() -> None:
    # Returns reward long sessions; the plan with the bonus trades some of a session's reward
    # for length (the planner's own values agree with simulation: tests/agents/test_planner).
    model = make_sim_model(stay_by_streak=np.array([0.9, 0.85, 0.8, 0.7]))
    lever = process(dropout_coef=[-1.5, 0.0], gap_coef=[0.8, 0.0])
    env = dataclasses.replace(LIFECYCLE, return_process=lever.to_dict())
    bonus = lifecycle_bonus(model, None, env, 20, seed=0, episodes=2000)
    assert bonus.event > 0.0
    session = BatchedInterestDrift(10000, model, None, dataclasses.replace(env, episode="session"))
    lengths, returns = [], []
    for scale in (0.0, 3.0):
        scaled = dataclasses.replace(bonus, event=scale * bonus.event)
        table = Planner(
            model, 20, RewardWeights(), PlannerConfig(), point(model), bonus=scaled
        ).table
        stats = rollout(PlannerPolicy(table, 20), session, seed=1)
        lengths.append(stats.lengths.mean())
        returns.append(stats.returns.mean())
    assert lengths[1] > lengths[0] + 0.1
    assert returns[1] < returns[0]


def test_fit_writes_a_return_model_the_lifecycle_env_runs_on(tiny_presets) -> None:
    from rlrec.envs.presets import build_artifacts, load_env_preset
    from rlrec.models.sim_model import load_sim_model

    preset = load_env_preset(tiny_presets["env"])
    artifacts = build_artifacts(preset, cache_dir=tiny_presets["cache"])
    model = load_sim_model(artifacts.sim_dir)
    assert "return_model" in model.info, model.info.get("return_model_error")
    assert 0.0 <= model.info["session_carryover"] <= 1.0
    env = BatchedInterestDrift(
        64, model, artifacts.dataset_dir, EnvConfig(episode="lifecycle", max_steps=10)
    )
    stats_ = rollout(PopularPolicy(env.dynamics.n_actions), env, seed=0)
    assert stats_.sessions is not None and stats_.sessions.max() > 1
