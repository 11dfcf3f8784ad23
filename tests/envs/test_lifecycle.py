"""Lifecycle episodes: the return process, sessions that follow each other, episode ends."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig
from rlrec.envs.interest_drift import InterestDriftEnv
from rlrec.envs.lifecycle import ReturnProcess, session_covariates
from rlrec.errors import UserError
from rlrec.evaluation.rollout import rollout, summarize
from tests.envs.conftest import make_sim_model

PROCESS = {
    "covariates": ["log_events", "n_buys"],
    "dropout_intercept": -1.0,
    "dropout_coef": [-0.5, -0.5],
    "gap_shape": 0.8,
    "gap_scale_days": 3.0,
    "gap_coef": [0.3, 0.2],
    "frailty_shape": 2.0,
    "carryover": 0.5,
}


def lifecycle_env(n: int = 256, **overrides: object) -> BatchedInterestDrift:
    process = {**PROCESS, **overrides.pop("process", {})}  # type: ignore[dict-item]
    config = EnvConfig(
        episode="lifecycle",
        horizon_days=float(overrides.pop("horizon_days", 30.0)),  # type: ignore[arg-type]
        max_steps=20,
        return_process=process,
        **overrides,  # type: ignore[arg-type]
    )
    return BatchedInterestDrift(n, make_sim_model(), config=config)


class Uniform:
    """Random catalog items (a policy for rollout)."""

    def __init__(self, n_actions: int, seed: int = 0) -> None:
        self.n = n_actions
        self.rng = np.random.default_rng(seed)

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        return self.rng.integers(self.n, size=len(obs["step"])), None


# -- the return process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("covariates", ["n_views"], "not a session covariate"),
        ("dropout_coef", [1.0], "2 covariates"),
        ("gap_shape", 0.0, "must be > 0"),
        ("gap_scale_days", float("nan"), "finite"),
        ("carryover", 1.5, "expected in [0, 1]"),
        ("frailty_shape", -1.0, "frailty_shape"),
        ("gap_shape", "fast", "expected a number"),
        ("colour", 1, "unknown setting"),
    ],
)
def test_return_process_refuses_bad_fields(field: str, value: object, message: str) -> None:
    with pytest.raises(UserError, match="return_process") as err:
        ReturnProcess.from_mapping({**PROCESS, field: value})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_return_process_round_trips() -> None:
    process = ReturnProcess.from_mapping(PROCESS)
    assert ReturnProcess.from_mapping(process.to_dict()) == process


def test_sampled_gaps_follow_the_survival_function() -> None:
    process = ReturnProcess.from_mapping(PROCESS)
    rng = np.random.default_rng(0)
    n = 200_000
    x = np.tile([[np.log1p(5.0), 1.0]], (n, 1))
    rate = process.user_rates(n, rng)
    gaps = process.sample_gap(x, rate, rng.random((2, n)))
    dropped = np.isinf(gaps)
    assert dropped.mean() == pytest.approx(process.dropout_probability(x[:1])[0], abs=0.005)
    for t in (0.5, 2.0, 10.0):
        empirical = float(np.mean(gaps > t))
        expected = float(np.mean(process.survival(np.full(n, t), x, rate)))
        assert empirical == pytest.approx(expected, abs=0.005)


def test_exponential_gaps_without_frailty_have_the_scale_as_mean() -> None:
    process = ReturnProcess(dropout_intercept=-50.0, gap_shape=1.0, gap_scale_days=4.0)
    rng = np.random.default_rng(1)
    n = 100_000
    gaps = process.sample_gap(np.zeros((n, 0)), process.user_rates(n, rng), rng.random((2, n)))
    assert np.isfinite(gaps).all()
    assert stats.kstest(gaps, "expon", args=(0, 4.0)).pvalue > 0.01


def test_better_sessions_bring_users_back_sooner() -> None:
    process = ReturnProcess.from_mapping(PROCESS)
    counts = np.array([[2, 1, 0, 0], [20, 10, 2, 1]])
    x = session_covariates(counts, process.covariates)
    assert process.dropout_probability(x)[1] < process.dropout_probability(x)[0]
    survival = process.survival(np.full(2, 5.0), x, np.ones(2))
    assert survival[1] < survival[0]


# -- lifecycle episodes --------------------------------------------------------------------------


def test_lifecycle_needs_a_return_process() -> None:
    with pytest.raises(UserError, match="return process"):
        BatchedInterestDrift(4, make_sim_model(), config=EnvConfig(episode="lifecycle"))


def test_sim_model_return_process_is_used_and_env_overrides_it() -> None:
    model = make_sim_model(info={"return_process": {**PROCESS, "carryover": 0.1}})
    env = BatchedInterestDrift(4, model, config=EnvConfig(episode="lifecycle"))
    assert env.dynamics.returns is not None and env.dynamics.returns.carryover == 0.1
    override = EnvConfig(episode="lifecycle", return_process=PROCESS)
    env = BatchedInterestDrift(4, model, config=override)
    assert env.dynamics.returns is not None and env.dynamics.returns.carryover == 0.5


def test_observations_carry_days_and_session_index_within_the_space() -> None:
    env = lifecycle_env(64)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen_return = False
    for _ in range(200):
        assert env.observation_space.contains({k: np.asarray(v) for k, v in obs.items()}), (
            "observation outside its space"
        )
        obs, _, _, _, info = env.step(rng.integers(env.dynamics.n_actions, size=64))
        returned = info["returned"]
        if returned.any():
            seen_return = True
            rows = np.flatnonzero(returned)
            assert np.all(obs["session_index"][rows, 0] >= 1)
            days = obs["days_since_last"][rows, 0]
            np.testing.assert_allclose(days, info["gap_days"][rows], rtol=1e-6)
            assert np.all(obs["step"][rows, 0] == 1)
    assert seen_return


def test_episode_ends_dropout_terminates_horizon_truncates() -> None:
    # Everyone drops out after the first session: one-session episodes, all terminated.
    env = lifecycle_env(128, process={"dropout_intercept": 50.0})
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        _, _, term, trunc, info = env.step(rng.integers(env.dynamics.n_actions, size=128))
        assert not info["returned"].any()
        np.testing.assert_array_equal(term | trunc, info["session_ended"])
        assert not trunc.any()
    # Nobody drops out and gaps are tiny: episodes end at max_sessions, truncated.
    env = lifecycle_env(
        32, process={"dropout_intercept": -50.0, "gap_scale_days": 1e-3}, max_sessions=3
    )
    stats_ = rollout(Uniform(env.dynamics.n_actions), env, seed=0)
    assert stats_.sessions is not None
    np.testing.assert_array_equal(stats_.sessions, 3)


def test_rollout_reports_sessions_and_retention() -> None:
    env = lifecycle_env(300)
    summary = summarize(rollout(Uniform(env.dynamics.n_actions), env, seed=3))
    assert summary["sessions_per_user"] > 1.0
    lo, hi = summary["sessions_per_user_ci95"]
    assert lo < summary["sessions_per_user"] < hi
    assert 0.0 < summary["retention_d7"] <= summary["retention_d30"] <= 1.0
    short = lifecycle_env(300, horizon_days=10.0)
    summary = summarize(rollout(Uniform(short.dynamics.n_actions), short, seed=3))
    assert summary["retention_d30"] is None and summary["retention_d30_ci95"] is None
    assert summary["retention_d7"] is not None


def test_same_seed_same_lifecycle() -> None:
    a = rollout(Uniform(20, seed=5), lifecycle_env(64), seed=11)
    b = rollout(Uniform(20, seed=5), lifecycle_env(64), seed=11)
    np.testing.assert_array_equal(a.returns, b.returns)
    assert a.sessions is not None and b.sessions is not None
    np.testing.assert_array_equal(a.sessions, b.sessions)


def test_single_env_runs_lifecycle_episodes() -> None:
    env = InterestDriftEnv(
        make_sim_model(),
        config=EnvConfig(episode="lifecycle", max_steps=20, return_process=PROCESS),
    )
    sessions = []
    for episode in range(30):
        obs, _ = env.reset(seed=episode)
        assert obs["session_index"].shape == (1,)
        count, done = 1, False
        while not done:
            obs, _, term, trunc, info = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs)
            count += int(info["returned"])
            done = term or trunc
        sessions.append(count)
    assert max(sessions) > 1


def test_day_discount_shrinks_later_rewards() -> None:
    plain = rollout(Uniform(20, seed=2), lifecycle_env(200), seed=4)
    discounted = rollout(Uniform(20, seed=2), lifecycle_env(200, day_discount=0.9), seed=4)
    assert discounted.returns.sum() < plain.returns.sum()
    assert plain.sessions is not None and discounted.sessions is not None
    np.testing.assert_array_equal(plain.sessions, discounted.sessions)  # same draws


# -- where the process comes from: the truth, a fitted model ------------------------------------


def test_truth_process_is_the_generators_law() -> None:
    from rlrec.models.ground_truth import RETURN_OFFSET_MS, ReturnTruthConfig
    from rlrec.models.lifecycle import DAY_MS

    truth = ReturnTruthConfig()
    process = ReturnProcess.from_truth(truth)
    g = np.array([0.3, 1.0, 2.5])  # mean-1 activity draws
    activity = g * truth.activity_shape / truth.activity_rate
    z = np.array([-1.0, 0.0, 1.5])
    x = z[:, None]
    rate = np.power(g, process.frailty_power)
    offset = RETURN_OFFSET_MS / DAY_MS
    for w in (0.05, 0.4, 3.0):
        expected = truth.churn_probability(z) + (1 - truth.churn_probability(z)) * (
            truth.gap_survival(np.full(3, w), truth.gap_rate(activity, z))
        )
        np.testing.assert_allclose(process.survival(np.full(3, w + offset), x, rate), expected)


def test_fitted_model_converts_with_held_covariates_at_their_mean() -> None:
    from rlrec.models.lifecycle import ReturnModel

    model = ReturnModel(
        feature_names=("log_events", "log_value", "bought"),
        feature_mean=np.array([2.0, 3.0, 0.2]),
        feature_std=np.array([0.5, 1.5, 0.4]),
        shape=0.9,
        scale_days=2.0,
        frailty_var=0.5,
        beta=np.array([0.3, 0.2, 0.1]),
        gamma_0=-2.0,
        gamma=np.array([-0.4, 0.1, -0.3]),
        offset_days=0.02,
    )
    process = ReturnProcess.from_return_model(model, carryover=0.25)
    assert process.covariates == ("log_events", "bought")
    assert process.source["held_at_log_mean"] == "log_value"
    assert process.frailty_shape == pytest.approx(2.0)
    raw = np.array([[1.0, 3.0, 0.0], [3.5, 3.0, 1.0]])  # log_value at its mean
    x = raw[:, [0, 2]]
    np.testing.assert_allclose(process.dropout_probability(x), model.p_leave(raw))
    t = np.array([0.5, 4.0])
    np.testing.assert_allclose(
        process.rate_multiplier(x) * ((t - 0.02) / process.gap_scale_days) ** 0.9,
        model.cumulative_hazard(t, raw),
    )
    assert "dropout_sd_ignored" not in process.source
    # A model with heterogeneous dropout (rlrec churn's) converts at the median user's dropout
    # odds, and the process says so rather than dropping the effect silently.
    hetero = ReturnModel(**{**model.__dict__, "dropout_sd": 1.2})
    converted = ReturnProcess.from_return_model(hetero, carryover=0.25)
    assert converted.source["dropout_sd_ignored"].startswith("1.2 ")
    np.testing.assert_allclose(
        converted.dropout_probability(x), hetero.p_leave(raw, np.zeros(len(raw)))
    )


def test_a_truth_world_returns_by_its_own_process_despite_an_override() -> None:
    from rlrec.envs.dynamics import return_process_of

    own = {**PROCESS, "carryover": 0.0}
    truth = make_sim_model(info={"world": "truth", "return_process": own})
    override = EnvConfig(episode="lifecycle", return_process=PROCESS)
    assert return_process_of(truth, override).carryover == 0.0
    fitted = make_sim_model(info={"return_process": own})
    assert return_process_of(fitted, override).carryover == 0.5
