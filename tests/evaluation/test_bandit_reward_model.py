"""The cross-fitted logistic reward model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from rlrec.data.bandit import BanditFeedback
from rlrec.errors import UserError
from rlrec.evaluation.ope import reward_model as rm
from rlrec.evaluation.ope.reward_model import (
    RewardFeatures,
    RewardModelConfig,
    cross_fit_reward_model,
    design_matrix,
    fit_logistic_regression,
    fit_reward_model,
    predict_all,
    stratified_folds,
)


def feedback_with_signal(n: int = 1500, seed: int = 0) -> BanditFeedback:
    """Clicks driven by the item and the position, plus context and affinity columns."""
    rng = np.random.default_rng(seed)
    n_actions, len_list = 6, 3
    action = rng.integers(0, n_actions, size=n)
    position = rng.integers(0, len_list, size=n)
    item_effect = np.linspace(-2.5, 0.5, n_actions)
    logit = item_effect[action] - 0.5 * position
    reward = (rng.random(n) < expit(logit)).astype(float)
    context = np.eye(3)[rng.integers(0, 3, size=n)]
    return BanditFeedback(
        action=action,
        position=position,
        reward=reward,
        pscore=np.full(n, 1.0 / n_actions),
        context=context,
        n_actions=n_actions,
        len_list=len_list,
        affinity=rng.integers(0, 2, size=(n, n_actions)).astype(float),
        action_context=rng.normal(size=(n_actions, 2)),
        source="synthetic",
    )


def test_newton_solution_is_stationary_and_matches_lbfgs(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    y = (rng.random(400) < expit(x @ np.array([1.0, -2.0, 0.5, 0.0, 0.3]) - 1.0)).astype(float)
    w, b = fit_logistic_regression(x, y, l2=2.0)
    p = expit(x @ w + b)
    np.testing.assert_allclose(x.T @ (p - y) + 2.0 * w, 0.0, atol=1e-6)
    assert abs(np.sum(p - y)) < 1e-6  # the unpenalised intercept matches the base rate
    monkeypatch.setattr(rm, "NEWTON_MAX_DIM", 0)  # force the L-BFGS path
    w2, b2 = fit_logistic_regression(x, y, l2=2.0)
    np.testing.assert_allclose(w2, w, atol=1e-4)
    assert b2 == pytest.approx(b, abs=1e-4)


def test_scipy_newton_cg_gives_the_fit_of_the_hand_written_newton_loop() -> None:
    # The reference was fitted by the Newton / preconditioned-CG loop that SciPy's Newton-CG
    # replaced (both stop at float64 precision). Tolerance: 1e-6 on predicted click
    # probabilities (measured: 4.7e-8) and 1e-8 on the CV log-loss (measured: 2e-9), far
    # below what moves an estimate (~1e-7 relative at most).
    ref = json.loads(
        (Path(__file__).parent / "data/reward_model_newton_reference.json").read_text()
    )
    fit = cross_fit_reward_model(feedback_with_signal(1500, seed=0), RewardModelConfig(), seed=0)
    assert (fit.features.describe(), fit.l2) == (ref["features"], ref["l2"])
    assert fit.cv_log_loss == pytest.approx(ref["cv_log_loss"], abs=1e-8)
    expected = np.array(ref["estimated_rewards_first_20_rounds"])
    np.testing.assert_allclose(fit.estimated_rewards[:20], expected, rtol=0, atol=1e-6)


def test_stronger_penalty_shrinks_weights() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3))
    y = (rng.random(300) < expit(2 * x[:, 0])).astype(float)
    weak, _ = fit_logistic_regression(x, y, l2=0.1)
    strong, _ = fit_logistic_regression(x, y, l2=1000.0)
    assert np.linalg.norm(strong) < 0.2 * np.linalg.norm(weak)


@pytest.mark.parametrize(
    "features",
    [
        RewardFeatures(),
        RewardFeatures(context=True, action="onehot", position=True, affinity=True),
        RewardFeatures(action="features", action_position=True),
    ],
    ids=lambda f: f.describe(),
)
def test_predict_all_agrees_with_the_design_matrix_at_logged_triples(features) -> None:
    feedback = feedback_with_signal(300)
    rows = np.arange(feedback.n_rounds)
    model = fit_reward_model(feedback, features, l2=1.0, rows=rows)
    all_pred = predict_all(model, feedback, rows)  # (n, A, L)
    assert all_pred.shape == (300, feedback.n_actions, feedback.len_list)
    x = design_matrix(feedback, features, rows)
    logged = expit(np.asarray(x @ model.coef).ravel() + model.intercept)
    np.testing.assert_allclose(all_pred[rows, feedback.action, feedback.position], logged)


def test_cross_fitting_predicts_each_fold_with_a_model_that_did_not_see_it() -> None:
    feedback = feedback_with_signal(600)
    features = RewardFeatures(action="onehot", position=True)
    config = RewardModelConfig(n_folds=3, l2_grid=(1.0,), candidates=(features,))
    fit = cross_fit_reward_model(feedback, config, seed=4)
    folds = stratified_folds(feedback.reward, 3, seed=4)
    for k in range(3):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        model = fit_reward_model(feedback, features, 1.0, train)
        np.testing.assert_allclose(
            fit.estimated_rewards[test], predict_all(model, feedback, test), rtol=1e-7
        )


def test_selection_finds_the_signal_and_beats_the_constant_model() -> None:
    feedback = feedback_with_signal(1500)
    fit = cross_fit_reward_model(feedback, RewardModelConfig(n_folds=3), seed=0)
    assert fit.features != RewardFeatures()
    assert fit.features.action != "none" or fit.features.action_position
    intercept_loss = next(loss for f, _, loss in fit.table if f == "intercept")
    assert fit.cv_log_loss < intercept_loss
    assert fit.cv_log_loss == min(loss for _, _, loss in fit.table)
    summary = fit.summary()
    assert summary["features"] == fit.features.describe()
    assert len(summary["candidates"]) == len(fit.table)


def test_selection_is_deterministic_given_the_seed() -> None:
    feedback = feedback_with_signal(400)
    config = RewardModelConfig(n_folds=3, l2_grid=(1.0, 100.0))
    a = cross_fit_reward_model(feedback, config, seed=9)
    b = cross_fit_reward_model(feedback, config, seed=9)
    np.testing.assert_array_equal(a.estimated_rewards, b.estimated_rewards)
    assert a.table == b.table


def test_candidates_missing_inputs_are_skipped() -> None:
    feedback = feedback_with_signal(300)
    bare = BanditFeedback(
        action=feedback.action,
        position=feedback.position,
        reward=feedback.reward,
        pscore=feedback.pscore,
        context=np.zeros((300, 0)),
        n_actions=feedback.n_actions,
        len_list=feedback.len_list,
    )
    fit = cross_fit_reward_model(bare, RewardModelConfig(n_folds=2, l2_grid=(1.0,)))
    labels = {f for f, _, _ in fit.table}
    assert not any("context" in f or "affinity" in f or "features" in f for f in labels)
    only_affinity = RewardModelConfig(candidates=(RewardFeatures(affinity=True),))
    with pytest.raises(UserError, match="no reward-model feature set is usable; missing affinity"):
        cross_fit_reward_model(bare, only_affinity)


def test_rewards_outside_unit_interval_and_too_few_rounds_are_user_errors() -> None:
    feedback = feedback_with_signal(50)
    scaled = BanditFeedback(
        action=feedback.action,
        position=feedback.position,
        reward=feedback.reward * 3.0,
        pscore=feedback.pscore,
        context=feedback.context,
        n_actions=feedback.n_actions,
        len_list=feedback.len_list,
        source="scaled.csv",
    )
    with pytest.raises(UserError, match=r"scaled.csv: .*rewards in \[0, 1\]"):
        cross_fit_reward_model(scaled)
    with pytest.raises(UserError, match="cannot be split into 100 folds"):
        cross_fit_reward_model(feedback, RewardModelConfig(n_folds=100))


def test_stratified_folds_spread_rare_positives() -> None:
    reward = np.zeros(1000)
    reward[:10] = 1.0
    folds = stratified_folds(reward, 5, seed=0)
    assert np.bincount(folds[reward == 1], minlength=5).tolist() == [2, 2, 2, 2, 2]
    assert np.bincount(folds, minlength=5).tolist() == [200] * 5


def test_progress_reports_every_candidate_and_the_final_fit() -> None:
    feedback = feedback_with_signal(200)
    calls: list[tuple[int, int]] = []
    config = RewardModelConfig(n_folds=2, l2_grid=(1.0, 10.0))
    fit = cross_fit_reward_model(feedback, config, progress=lambda d, t: calls.append((d, t)))
    total = len(fit.table) + 1
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == list(range(1, total + 1))
