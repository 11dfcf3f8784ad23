"""Bandit OPE estimators: known answers, OBP agreement, invalid inputs, bootstrap coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlrec.data.bandit import load_obd
from rlrec.errors import UserError
from rlrec.evaluation.ope.bandit import (
    ESTIMATOR_NAMES,
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    SelfNormalizedDR,
    SelfNormalizedIPW,
    SwitchDoublyRobust,
    default_estimators,
    estimate_policy_value,
    prepare_rounds,
)
from rlrec.evaluation.ope.base import relative_error
from rlrec.evaluation.ope.bootstrap import bootstrap_column_sums


def context_free_log(
    n: int, n_actions: int, len_list: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """A log from a context-free behaviour policy, with its true click rates.

    Returns:
        (arrays, behaviour (A, L), evaluation (A, L), click_rate (A, L)).
    """
    rng = np.random.default_rng(seed)
    behaviour = rng.dirichlet(np.ones(n_actions) * 2.0, size=len_list).T  # (A, L)
    evaluation = rng.dirichlet(np.ones(n_actions) * 2.0, size=len_list).T  # (A, L)
    click_rate = rng.uniform(0.05, 0.6, size=(n_actions, len_list))  # (A, L)
    position = rng.integers(0, len_list, size=n)
    u = rng.random(n)
    cum = np.cumsum(behaviour[:, position].T, axis=1)  # (n, A)
    action = np.minimum((cum < u[:, None]).sum(axis=1), n_actions - 1)
    reward = (rng.random(n) < click_rate[action, position]).astype(np.float64)
    arrays = {
        "reward": reward,
        "action": action,
        "position": position,
        "pscore": behaviour[action, position],
    }
    return arrays, behaviour, evaluation, click_rate


def test_ipw_of_the_behaviour_policy_is_the_mean_logged_reward() -> None:
    arrays, behaviour, _, _ = context_free_log(2000, 6, 3, seed=1)
    rounds = prepare_rounds(**arrays, action_dist=behaviour[None])
    np.testing.assert_allclose(rounds.importance_weight, 1.0)
    assert InverseProbabilityWeighting().estimate(rounds) == pytest.approx(
        arrays["reward"].mean(), rel=1e-12
    )
    assert SelfNormalizedIPW().estimate(rounds) == pytest.approx(arrays["reward"].mean(), rel=1e-12)


def tiny_log() -> dict[str, np.ndarray]:
    """Three rounds, two actions, one position; every value below is worked out by hand."""
    return {
        "action": np.array([0, 1, 0]),
        "reward": np.array([1.0, 0.0, 0.0]),
        "pscore": np.array([0.5, 0.25, 0.5]),
        "action_dist": np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])[:, :, None],
        "estimated_rewards_by_reg_model": np.array([[0.6, 0.2], [0.1, 0.5], [0.4, 0.4]])[
            :, :, None
        ],
    }


def test_hand_computed_estimates_on_a_tiny_log() -> None:
    rounds = prepare_rounds(**tiny_log())
    # w = pi_e(a_i) / pscore = [0.8/0.5, 0.7/0.25, 0.5/0.5]
    w = [1.6, 2.8, 1.0]
    # q_pi = sum_a pi_e(a) q(a): [0.8*0.6 + 0.2*0.2, 0.3*0.1 + 0.7*0.5, 0.5*0.4 + 0.5*0.4]
    q_pi = [0.52, 0.38, 0.40]
    # residual r - q(a_i) = [1 - 0.6, 0 - 0.5, 0 - 0.4]
    res = [0.4, -0.5, -0.4]
    np.testing.assert_allclose(rounds.importance_weight, w)
    np.testing.assert_allclose(rounds.q_hat_policy, q_pi)
    expected = {
        "dm": (0.52 + 0.38 + 0.40) / 3,
        "ipw": (1.6 * 1.0) / 3,
        "snipw": 1.6 / (1.6 + 2.8 + 1.0),
        "dr": ((0.52 + 1.6 * 0.4) + (0.38 - 2.8 * 0.5) + (0.40 - 1.0 * 0.4)) / 3,
        "sndr": (0.52 + 0.38 + 0.40) / 3 + (1.6 * 0.4 - 2.8 * 0.5 - 1.0 * 0.4) / 5.4,
        # lambda 2 drops round 2's correction (w = 2.8 > 2)
        "switch-dr": ((0.52 + 1.6 * 0.4) + 0.38 + (0.40 - 1.0 * 0.4)) / 3,
        # lambda 1 shrinks w to w / (w^2 + 1)
        "dr-os": (
            (0.52 + 1.6 / (1.6**2 + 1) * 0.4)
            + (0.38 - 2.8 / (2.8**2 + 1) * 0.5)
            + (0.40 - 1.0 / (1.0**2 + 1) * 0.4)
        )
        / 3,
    }
    estimators = [
        DirectMethod(),
        InverseProbabilityWeighting(),
        SelfNormalizedIPW(),
        DoublyRobust(),
        SelfNormalizedDR(),
        SwitchDoublyRobust(lambda_=2.0),
        DoublyRobustWithShrinkage(lambda_=1.0),
    ]
    got = {e.name: e.estimate(rounds) for e in estimators}
    assert list(got) == list(ESTIMATOR_NAMES)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert all(isinstance(res_i, float) for res_i in res)


def test_switch_and_shrinkage_limits_are_dr_and_dm() -> None:
    rounds = prepare_rounds(**tiny_log())
    dr, dm = DoublyRobust().estimate(rounds), DirectMethod().estimate(rounds)
    assert SwitchDoublyRobust(lambda_=np.inf).estimate(rounds) == pytest.approx(dr)
    assert SwitchDoublyRobust(lambda_=0.0).estimate(rounds) == pytest.approx(dm)
    assert DoublyRobustWithShrinkage(lambda_=np.inf).estimate(rounds) == pytest.approx(dr)
    assert DoublyRobustWithShrinkage(lambda_=0.0).estimate(rounds) == pytest.approx(dm)


def test_context_free_broadcast_and_float32_match_full_float64() -> None:
    arrays, _, evaluation, click_rate = context_free_log(500, 5, 3, seed=2)
    n = arrays["reward"].shape[0]
    q = np.broadcast_to(click_rate, (n, *click_rate.shape)).copy()
    full = estimate_policy_value(
        prepare_rounds(
            **arrays,
            action_dist=np.broadcast_to(evaluation, (n, *evaluation.shape)).copy(),
            estimated_rewards_by_reg_model=q,
        ),
        n_bootstrap=50,
        seed=3,
    )
    short = estimate_policy_value(
        prepare_rounds(
            **arrays,
            action_dist=evaluation[None].astype(np.float32),
            estimated_rewards_by_reg_model=q.astype(np.float32),
        ),
        n_bootstrap=50,
        seed=3,
    )
    for name in ESTIMATOR_NAMES:
        assert short[name].value == pytest.approx(full[name].value, rel=1e-5)
        np.testing.assert_allclose(short[name].ci95, full[name].ci95, rtol=1e-5)


def test_dm_with_the_true_model_is_the_true_value() -> None:
    arrays, _, evaluation, click_rate = context_free_log(300, 4, 2, seed=4)
    n = arrays["reward"].shape[0]
    q = np.broadcast_to(click_rate, (n, *click_rate.shape)).copy()
    rounds = prepare_rounds(
        **arrays, action_dist=evaluation[None], estimated_rewards_by_reg_model=q
    )
    truth = np.mean((evaluation * click_rate).sum(axis=0)[arrays["position"]])
    assert DirectMethod().estimate(rounds) == pytest.approx(truth, rel=1e-12)


@pytest.mark.parametrize(
    ("setting", "logs"), [("all:random->bts", "random.csv"), ("all:bts->random", "bts.csv")]
)
def test_ipw_and_snipw_equal_obp_given_its_action_distribution(
    obd_dir, setting: str, logs: str
) -> None:
    reference = json.loads((obd_dir / "obp_reference.json").read_text())[setting]
    feedback = load_obd(obd_dir / logs)
    assert feedback.n_rounds == reference["n_rounds"]
    assert feedback.n_actions == reference["n_actions"]
    assert feedback.len_list == reference["len_list"]
    assert feedback.mean_reward == pytest.approx(reference["behavior_mean_reward"], rel=1e-12)
    action_dist = np.asarray(reference["eval_action_dist_round0"])[None]  # (1, 80, 3)
    rounds = prepare_rounds(
        reward=feedback.reward,
        action=feedback.action,
        position=feedback.position,
        pscore=feedback.pscore,
        action_dist=action_dist,
    )
    estimates = estimate_policy_value(rounds, n_bootstrap=20, seed=0)
    assert list(estimates) == ["ipw", "snipw"]  # no reward model: DM and DR family skipped
    ipw = InverseProbabilityWeighting().estimate(rounds)
    snipw = SelfNormalizedIPW().estimate(rounds)
    assert estimates["ipw"].value == ipw and estimates["snipw"].value == snipw
    assert ipw == pytest.approx(reference["estimates"]["ipw"], rel=1e-9, abs=0)
    assert snipw == pytest.approx(reference["estimates"]["snipw"], rel=1e-9, abs=0)
    assert relative_error(ipw, reference["ground_truth"]) == pytest.approx(
        reference["relative_error"]["ipw"], rel=1e-9
    )


def valid_inputs() -> dict[str, np.ndarray]:
    return {
        "reward": np.array([1.0, 0.0, 1.0]),
        "action": np.array([0, 1, 2]),
        "position": np.array([0, 1, 0]),
        "pscore": np.array([0.5, 0.25, 1.0]),
        "action_dist": np.full((3, 3, 2), 1.0 / 3.0),
        "estimated_rewards_by_reg_model": np.full((3, 3, 2), 0.5),
    }


def _with(**changes: object) -> dict[str, object]:
    out: dict[str, object] = dict(valid_inputs())
    out.update(changes)
    return out


INVALID = [
    ("pscore zero", _with(pscore=np.array([0.5, 0.0, 1.0])), r"pscore: .*\(0, 1\]"),
    ("pscore above one", _with(pscore=np.array([0.5, 1.5, 1.0])), r"pscore: .*\(0, 1\]"),
    ("pscore negative", _with(pscore=np.array([-0.1, 0.5, 1.0])), r"pscore: .*\(0, 1\]"),
    (
        "dist not summing to one",
        _with(action_dist=np.full((3, 3, 2), 0.3)),
        r"action_dist: .*sum to 1.*round 0 position 0",
    ),
    (
        "negative probability",
        _with(action_dist=np.tile(np.array([1.2, -0.2, 0.0])[None, :, None], (3, 1, 2))),
        r"action_dist: .*non-negative",
    ),
    (
        "NaN probability",
        _with(action_dist=np.full((3, 3, 2), np.nan)),
        r"action_dist: .*finite",
    ),
    ("reward length", _with(reward=np.array([1.0, 0.0])), r"action: has 3 rounds but reward has 2"),
    ("pscore length", _with(pscore=np.array([0.5, 0.5])), r"pscore: has 2 rounds"),
    ("2-D action", _with(action=np.zeros((3, 1), dtype=int)), r"action: expected a 1-D array"),
    (
        "dist rounds",
        _with(action_dist=np.full((2, 3, 2), 1.0 / 3.0)),
        r"action_dist: has 2 rounds, expected 3 .* or 1",
    ),
    ("dist 2-D", _with(action_dist=np.full((3, 3), 1.0 / 3.0)), r"action_dist: expected shape"),
    ("action too large", _with(action=np.array([0, 3, 1])), r"action: values must lie in \[0, 3\)"),
    ("action negative", _with(action=np.array([0, -1, 1])), r"action: values must lie in \[0, 3\)"),
    ("float action", _with(action=np.array([0.0, 1.0, 2.0])), r"action: expected integers"),
    ("position too large", _with(position=np.array([0, 2, 0])), r"position: .*\[0, 2\)"),
    ("position missing", _with(position=None), r"position: required .* 2 positions"),
    (
        "model shape",
        _with(estimated_rewards_by_reg_model=np.zeros((3, 3, 1))),
        r"estimated_rewards_by_reg_model: expected shape \(3, 3, 2\)",
    ),
    (
        "model NaN",
        _with(estimated_rewards_by_reg_model=np.full((3, 3, 2), np.nan)),
        r"estimated_rewards_by_reg_model: .*NaN",
    ),
    ("reward NaN", _with(reward=np.array([1.0, np.nan, 0.0])), r"reward: .*NaN"),
    (
        "empty log",
        {
            "reward": np.zeros(0),
            "action": np.zeros(0, dtype=int),
            "position": np.zeros(0, dtype=int),
            "pscore": np.zeros(0),
            "action_dist": np.full((1, 3, 2), 1.0 / 3.0),
        },
        r"empty",
    ),
    ("list not array", _with(reward=[1.0, 0.0, 1.0]), r"reward: expected a numpy array"),
]


@pytest.mark.parametrize(("case", "inputs", "match"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_inputs_raise_user_errors(case: str, inputs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        prepare_rounds(**inputs)


def test_valid_inputs_pass() -> None:
    rounds = prepare_rounds(**valid_inputs())
    assert rounds.n_rounds == 3 and rounds.has_reward_model


def test_model_based_estimators_need_a_reward_model() -> None:
    inputs = valid_inputs()
    del inputs["estimated_rewards_by_reg_model"]
    rounds = prepare_rounds(**inputs)
    with pytest.raises(UserError, match="dr needs estimated_rewards_by_reg_model"):
        DoublyRobust().estimate(rounds)


def test_bad_settings_raise_user_errors() -> None:
    rounds = prepare_rounds(**valid_inputs())
    with pytest.raises(UserError, match="n_bootstrap"):
        estimate_policy_value(rounds, n_bootstrap=-1)
    with pytest.raises(UserError, match="confidence"):
        estimate_policy_value(rounds, confidence=1.0)
    with pytest.raises(UserError, match="unique"):
        estimate_policy_value(rounds, [DoublyRobust(), DoublyRobust()])
    with pytest.raises(UserError, match="lambda"):
        SwitchDoublyRobust(lambda_=-1.0)


def test_bootstrap_sums_equal_explicit_resampling() -> None:
    rng = np.random.default_rng(0)
    columns = rng.normal(size=(50, 3))
    n_bootstrap = 7
    got = bootstrap_column_sums(columns, n_bootstrap, np.random.default_rng(11), 10**6)
    idx = np.random.default_rng(11).integers(0, 50, size=(n_bootstrap, 50), dtype=np.int32)
    np.testing.assert_allclose(got, columns[idx].sum(axis=1), rtol=1e-12)
    # Chunking (here one resample at a time) keeps every resample a full-size draw.
    chunked = bootstrap_column_sums(np.ones((50, 1)), 9, np.random.default_rng(1), 50)
    np.testing.assert_array_equal(chunked, 50.0)


def test_intervals_are_seeded_and_contain_the_estimate() -> None:
    arrays, _, evaluation, click_rate = context_free_log(400, 5, 2, seed=5)
    n = arrays["reward"].shape[0]
    q = np.broadcast_to(0.8 * click_rate, (n, *click_rate.shape)).copy()
    rounds = prepare_rounds(
        **arrays, action_dist=evaluation[None], estimated_rewards_by_reg_model=q
    )
    a = estimate_policy_value(rounds, n_bootstrap=100, seed=7)
    b = estimate_policy_value(rounds, n_bootstrap=100, seed=7)
    c = estimate_policy_value(rounds, n_bootstrap=100, seed=8)
    assert a == b
    assert a["ipw"].ci95 != c["ipw"].ci95
    for est in a.values():
        low, high = est.ci95
        assert low < high
        assert low <= est.value <= high
    assert list(a) == list(ESTIMATOR_NAMES)
    none = estimate_policy_value(rounds, n_bootstrap=0)
    assert np.isnan(none["dr"].ci95[0]) and none["dr"].to_dict()["ci95"] == [None, None]


def test_intervals_cover_the_true_value_about_95_percent_of_the_time() -> None:
    # 100 small logs from one problem; each estimator's 95% interval should hold the true
    # value in roughly 95 of them. Binomial sd at 95% is ~2.2 points, so [85, 100] leaves
    # room for the percentile bootstrap's slight under-coverage at n = 400.
    _, behaviour, evaluation, click_rate = context_free_log(10, 5, 2, seed=100)
    truth = float(np.mean((evaluation * click_rate).sum(axis=0)))  # positions uniform
    q_hat = np.full((1, 5, 2), 0.3)  # a wrong, constant reward model: DR stays unbiased
    estimators = [
        InverseProbabilityWeighting(),
        SelfNormalizedIPW(),
        DoublyRobust(),
        SelfNormalizedDR(),
    ]
    covered = dict.fromkeys([e.name for e in estimators], 0)
    n, seeds = 400, 100
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        position = rng.integers(0, 2, size=n)
        cum = np.cumsum(behaviour[:, position].T, axis=1)
        action = np.minimum((cum < rng.random(n)[:, None]).sum(axis=1), 4)
        reward = (rng.random(n) < click_rate[action, position]).astype(float)
        rounds = prepare_rounds(
            reward=reward,
            action=action,
            position=position,
            pscore=behaviour[action, position],
            action_dist=evaluation[None],
            estimated_rewards_by_reg_model=np.broadcast_to(q_hat, (n, 5, 2)),
        )
        for name, est in estimate_policy_value(rounds, estimators, 200, seed=seed).items():
            covered[name] += est.ci95[0] <= truth <= est.ci95[1]
    for name, count in covered.items():
        assert 85 <= count <= 100, (name, count)


def test_relative_error() -> None:
    assert relative_error(0.9, 1.0) == pytest.approx(0.1)
    assert relative_error(1.2, -1.0) == pytest.approx(2.2)
    assert np.isnan(relative_error(1.0, 0.0))
    assert np.isnan(relative_error(float("nan"), 1.0))


def test_default_estimators_are_the_contract() -> None:
    # The JSON contract's keys, written out: a change to ESTIMATOR_NAMES must show here.
    contract = ("dm", "ipw", "snipw", "dr", "sndr", "switch-dr", "dr-os")
    assert contract == ESTIMATOR_NAMES
    assert tuple(e.name for e in default_estimators()) == contract
