"""SWITCH-DR for sessions (issue 22): switched weights, the nesting of DM and DR, the choice."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.errors import UserError
from rlrec.evaluation.ope.fqe import FQEConfig
from rlrec.evaluation.ope.refit_bootstrap import RefitBootstrapConfig, group_log, refit_bootstrap
from rlrec.evaluation.ope.sequential import (
    DirectMethod,
    StepwiseDR,
    SwitchDR,
    estimate_session_value,
    prepare_sessions,
    switch_threshold,
    switched_weights,
)
from tests.evaluation.test_sequential_ope import exact_value, hand_sessions, known_mdp, simulate


def test_switched_weights_stay_switched_once_the_threshold_is_passed():
    w = np.array([[2.0, 8.0, 1.0, 1.0], [0.5, 0.25, 0.25, 0.25]])
    np.testing.assert_array_equal(
        switched_weights(w, 4.0), [[2.0, 0.0, 0.0, 0.0], [0.5, 0.25, 0.25, 0.25]]
    )
    np.testing.assert_array_equal(switched_weights(w, np.inf), w)
    np.testing.assert_array_equal(switched_weights(w, 0.0), np.zeros_like(w))


def test_threshold_search_matches_the_switched_weights_at_every_threshold():
    """switch_threshold's one-pass prefix sums equal the estimator's terms at each tau."""
    from rlrec.evaluation.ope.sequential import _switch_terms, _switched_mass, _SwitchPrefix

    offsets, _, _, reward, pb, _ = simulate(2, 300)
    rng = np.random.default_rng(0)
    n = len(reward)
    sessions = prepare_sessions(
        session_offsets=offsets,
        reward=reward,
        behaviour_prob=pb,
        target_prob=rng.uniform(0.0, 1.0, n),
        q_factual=rng.random(n),
        v_target=rng.random(n),
        gamma=0.9,
    )
    prefix = _SwitchPrefix(sessions)
    for tau in (0.0, 0.5, 1.0, 1.5, 3.0, 10.0, np.inf):
        cut = switched_weights(sessions.weight, tau)
        np.testing.assert_allclose(prefix.terms(tau), _switch_terms(sessions, cut), atol=1e-12)
        np.testing.assert_allclose(prefix.mass(tau), _switched_mass(sessions, tau), atol=1e-12)


def test_hand_computed_switch_between_dm_and_dr():
    """Weights [2, 2 | 0.5]: tau = 1 cuts session 1 at its first step, keeps session 2."""
    sessions = hand_sessions()
    g = 0.9
    # Session 1 switches at step 0: only its v_0 (weighted by w_{-1} = 1) remains.
    # Session 2 (w = 0.5 <= 1): DR's 0.5 * (4 - 2) + 1 * 3.
    expected = (1.5 + (0.5 * (4 - 2) + 3.0)) / 2
    switched = SwitchDR(thresholds=(1.0,))
    assert switched.estimate(sessions) == pytest.approx(expected)
    assert SwitchDR(thresholds=(0.0,)).estimate(sessions) == pytest.approx(
        DirectMethod().estimate(sessions)
    )
    assert SwitchDR(thresholds=(np.inf,)).estimate(sessions) == pytest.approx(
        StepwiseDR().estimate(sessions)
    )
    # The same with tau = 2 keeps session 1 whole: DR of session 1 is
    # 2 (1 - 0.5) + 1.5 + g (2 (2 - 1) + 2 * 0.5).
    s1 = 2 * 0.5 + 1.5 + g * (2 * 1.0 + 2 * 0.5)
    assert SwitchDR(thresholds=(2.0,)).estimate(sessions) == pytest.approx((s1 + 4.0) / 2)


def test_threshold_choice_trades_variance_for_the_bias():
    sessions = hand_sessions()
    for rule in ("estimate", "bound"):
        tau, info = switch_threshold(sessions, (0.0, 1.0, 2.0, np.inf), rule)
        assert tau in (0.0, 1.0, 2.0, np.inf)
        assert info["mse"] == pytest.approx(info["variance"] + info["bias"] ** 2)
        grid = (0.0, 1.0, 2.0, np.inf)
        assert SwitchDR(thresholds=grid, bias=rule).threshold(sessions) == tau
    # tau = 0 hands everything to the model (mass gamma^0 w_0 per session, averaged)...
    _, at_zero = switch_threshold(sessions, (0.0,), "bound")
    assert at_zero["switched_mass"] == pytest.approx((2.0 + 0.5) / 2)
    # ... priced at the return range (session 1's 1 + 0.9 * 2 = 2.8 < 4, session 2's 4).
    assert at_zero["bias"] == pytest.approx(at_zero["switched_mass"] * 4.0)
    # No threshold hands nothing: no bias under either rule, all variance.
    for rule in ("estimate", "bound"):
        _, at_inf = switch_threshold(sessions, (np.inf,), rule)
        assert at_inf["switched_mass"] == 0.0 and at_inf["bias"] == 0.0
    with pytest.raises(UserError, match="switch thresholds"):
        switch_threshold(sessions, (-1.0,))
    with pytest.raises(UserError, match="switch thresholds"):
        switch_threshold(sessions, ())
    with pytest.raises(UserError, match="switch bias rule"):
        switch_threshold(sessions, bias="worst")


def test_estimated_bias_switches_away_from_a_biased_model_only_when_dr_sees_it():
    """A model three times too large: the dropped corrections are large and consistent, so
    the estimate rule keeps DR's corrections; an exact model: switching costs nothing."""
    bad, *_ = _known_mdp(0, 3000, q_scale=3.0)
    truth = exact_value(np.array([[0.2, 0.8], [0.7, 0.3]]))
    assert abs(DirectMethod().estimate(bad) - truth) > 0.5 * truth
    assert SwitchDR().estimate(bad) == pytest.approx(truth, rel=0.15)
    assert SwitchDR().threshold(bad) > 0.0


def _known_mdp(seed: int, n: int, q_scale: float = 1.0):
    config = FQEConfig(n_folds=2, seed=seed)
    sessions, features, expected, fqe = known_mdp(seed, n, config, q_scale)
    return sessions, features, expected, config, fqe


def test_switch_dr_is_accurate_on_a_known_mdp_and_bounded_by_its_weights():
    truth = exact_value(np.array([[0.2, 0.8], [0.7, 0.3]]))
    errors = []
    for seed in range(4):
        sessions, *_ = _known_mdp(seed, 2000)
        est = estimate_session_value(sessions, n_bootstrap=0)
        errors.append(abs(est["switch"].value - truth) / truth)
        tau = SwitchDR().threshold(sessions)
        assert tau >= 0.0
    assert max(errors) < 0.1, errors


def test_refit_switch_matches_the_point_estimate_and_tracks_the_threshold():
    sessions, features, expected, config, fqe = _known_mdp(1, 400)
    tau = SwitchDR().threshold(sessions)
    grouped = group_log(sessions, features, expected, config, 20, 0, switch_tau=tau)
    assert grouped.switch_sums(fqe.theta).sum() / sessions.n_sessions == pytest.approx(
        SwitchDR().estimate(sessions), abs=1e-9
    )
    without = group_log(sessions, features, expected, config, 20, 0)
    assert np.all(without.switch_sums(fqe.theta) == 0.0)
    refit = refit_bootstrap(
        sessions, features, expected, config, fqe, RefitBootstrapConfig(n_bootstrap=40)
    )
    est = refit.estimates["switch"]
    assert est.ci95[0] <= est.value <= est.ci95[1]
    assert "switch" in refit.difference_ci95
