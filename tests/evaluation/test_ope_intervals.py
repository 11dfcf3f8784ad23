"""The Q-refit bootstrap, HCOPE's lower bound and the verdict (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.errors import UserError
from rlrec.evaluation.ope.fqe import FQEConfig, solve_fqe
from rlrec.evaluation.ope.high_confidence import (
    empirical_bernstein_lower,
    hcope_lower_bound,
)
from rlrec.evaluation.ope.refit_bootstrap import (
    BIAS_EXTENDED,
    BIAS_METHOD,
    REFIT_METHOD,
    RefitBootstrapConfig,
    bias_bound,
    group_log,
    refit_bootstrap,
)
from rlrec.evaluation.ope.sequential import (
    WeightedDR,
    estimate_session_value,
    prepare_sessions,
)
from rlrec.evaluation.ope.session_verdict import session_estimates, verdict_line
from tests.evaluation.test_sequential_ope import (
    TARGET,
    exact_value,
    fqe_sessions,
    known_mdp,
    simulate,
)


def _mdp(seed: int, n_sessions: int, fqe_seed: int = 0):
    config = FQEConfig(seed=fqe_seed)
    sessions, features, expected, fqe = known_mdp(seed, n_sessions, config)
    return sessions, features, expected, config, fqe


@pytest.mark.parametrize("ratio_power", [0.0, 0.5])
def test_group_sums_reproduce_the_cross_fitted_estimates(ratio_power):
    """At unit counts the per-group sums are the full data's: same DM, DR, WDR and MAGIC,
    also when FQE's regressions are weighted (the refit must reuse the fit's weights)."""
    config = FQEConfig(seed=0, ratio_power=ratio_power)
    sessions, features, expected, fqe = known_mdp(0, 400, config)
    assert (fqe.step_weight is None) == (ratio_power == 0.0)
    grouped = group_log(sessions, features, expected, config, n_groups=20, seed=3)
    assert grouped.sizes.sum() == sessions.n_sessions
    weighted = group_log(
        sessions, features, expected, config, n_groups=20, seed=3, step_weight=fqe.step_weight
    )
    w = 1.0 if fqe.step_weight is None else fqe.step_weight[:, None]
    np.testing.assert_allclose(weighted.gram.sum(axis=0), (w * features).T @ features)
    with pytest.raises(UserError, match="step_weight"):
        group_log(sessions, features, expected, config, 20, 3, step_weight=np.ones(2))
    # Groups are nested in folds (a fold's model never sees its own groups) and contiguous.
    assert np.all(np.diff(grouped.fold) >= 0)
    sums = grouped.wdr_sums(fqe.theta).sum(axis=0)
    np.testing.assert_allclose(sums, WeightedDR().terms(sessions).sum(axis=0), atol=1e-9)
    point = estimate_session_value(sessions, n_bootstrap=0)
    refit = refit_bootstrap(
        sessions, features, expected, config, fqe, RefitBootstrapConfig(n_bootstrap=30)
    )
    for name, est in refit.estimates.items():
        assert est.value == pytest.approx(point[name].value, abs=1e-9), name
        method = REFIT_METHOD + (BIAS_METHOD if name in BIAS_EXTENDED else "")
        assert est.method == method and est.to_dict()["interval_method"] == method
        assert est.ci95[0] <= est.ci95[1]


def test_refit_intervals_include_the_models_spread_and_are_seeded():
    sessions, features, expected, config, fqe = _mdp(1, 300)
    fixed = estimate_session_value(sessions, n_bootstrap=60, seed=0)
    run = lambda seed: refit_bootstrap(  # noqa: E731
        sessions, features, expected, config, fqe, RefitBootstrapConfig(60, seed=seed)
    )
    a, b, c = run(0), run(0), run(1)
    assert a.estimates["dm"].ci95 == b.estimates["dm"].ci95
    assert a.estimates["dm"].ci95 != c.estimates["dm"].ci95
    width = lambda e: e.ci95[1] - e.ci95[0]  # noqa: E731
    # Holding the Q-model fixed leaves DM only the first states' noise; refitting adds the
    # model's own, several times more here.
    assert width(a.estimates["dm"]) > 3 * width(fixed["dm"])
    lo, hi = a.difference_ci95["magic"]
    assert lo < hi


@pytest.mark.slow
def test_refit_intervals_cover_on_a_known_mdp():
    """DM's and MAGIC's refit intervals hold the exact value in ~95% of 40 seeds.

    Holding the Q-model fixed, the same intervals held it in 3 of 40 (measured once).
    """
    truth = exact_value(TARGET)
    hits = {"dm": 0, "magic": 0}
    for seed in range(40):
        sessions, features, expected, config, fqe = _mdp(100 + seed, 300, fqe_seed=seed)
        refit = refit_bootstrap(
            sessions, features, expected, config, fqe, RefitBootstrapConfig(seed=seed)
        )
        for name in hits:
            lo, hi = refit.estimates[name].ci95
            hits[name] += int(lo <= truth <= hi)
    # binomial(40, 0.95) falls below 33 with probability ~0.2%.
    assert min(hits.values()) >= 33, hits


def test_refit_bootstrap_rejects_bad_settings_and_mismatched_features():
    with pytest.raises(UserError, match="n_groups"):
        RefitBootstrapConfig(n_groups=1)
    with pytest.raises(UserError, match="confidence"):
        RefitBootstrapConfig(confidence=1.0)
    sessions, features, expected, config, _ = _mdp(0, 50)
    with pytest.raises(UserError, match="features"):
        group_log(sessions, features[:-1], expected[:-1], config, 10, 0)


def test_solve_fqe_without_the_eigenvalue_check_matches_it_or_falls_back():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(200, 5))
    nxt = 0.5 * rng.normal(size=(200, 5))
    gram, b, c = phi.T @ phi, phi.T @ nxt, phi.T @ rng.normal(size=200)
    checked = solve_fqe(gram, b, c, FQEConfig(), 50)
    fast = solve_fqe(gram, b, c, FQEConfig(), 50, check_contraction=False)
    np.testing.assert_allclose(fast[0], checked[0])
    # An expanding map: the unchecked path must not iterate it, it raises the ridge.
    big = solve_fqe(gram, 50 * gram, c, FQEConfig(), 50, check_contraction=False)
    assert big[2] > FQEConfig().ridge and np.all(np.isfinite(big[0]))


def test_empirical_bernstein_bound_by_hand_and_hcope_holds():
    x = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    c, delta = 4.0, 0.05
    y = np.minimum(x, c)
    log_term = np.log(2 / delta)
    by_hand = y.mean() - 7 * c * log_term / (3 * 4) - np.sqrt(2 * log_term * y.var(ddof=1) / 5)
    assert empirical_bernstein_lower(x, c, delta)[0] == pytest.approx(by_hand)
    # HCOPE on the known MDP: a valid 95% bound sits below the truth (and is informative).
    truth = exact_value(TARGET)
    sessions, *_ = _mdp(5, 2000)
    bound = hcope_lower_bound(sessions, confidence=0.95, seed=0)
    assert 0.3 * truth < bound.value < truth
    assert bound.n_sessions == 1600 and 0 <= bound.clipped_share < 0.5
    assert bound.to_dict()["method"].startswith("HCOPE")
    with pytest.raises(UserError, match="confidence"):
        hcope_lower_bound(sessions, confidence=1.5)


def test_hcope_says_why_there_is_no_bound():
    sessions, *_ = _mdp(0, 30)
    negative = prepare_sessions(
        session_offsets=sessions.offsets,
        reward=-np.ones(int(sessions.lengths.sum())),
        behaviour_prob=np.full(int(sessions.lengths.sum()), 0.5),
        target_prob=np.full(int(sessions.lengths.sum()), 0.5),
    )
    bound = hcope_lower_bound(negative)
    assert np.isnan(bound.value) and "rewards < 0" in bound.note
    assert bound.to_dict()["value"] is None


def test_verdict_lines():
    assert verdict_line((0.1, 0.5), "magic").startswith(
        "the new policy beats the logged one with 95% confidence"
    )
    assert "worse than the logged one" in verdict_line((-0.5, -0.1), "magic")
    assert verdict_line((-0.1, 0.5), "magic").startswith("cannot tell")
    assert verdict_line((float("nan"),) * 2, "magic").startswith("cannot tell")


def test_session_estimates_label_every_interval_and_flag_extrapolation():
    sessions, features, expected, config, fqe = _mdp(2, 300)
    estimates, extra = session_estimates(
        sessions, features, expected, config, fqe, n_bootstrap=40, seed=0, kl_per_step=1.5
    )
    methods = {k: e.to_dict()["interval_method"] for k, e in estimates.items()}
    assert methods["dm"] == methods["magic"] == REFIT_METHOD + BIAS_METHOD
    assert methods["dr"] == methods["wdr"] == methods["switch"] == REFIT_METHOD
    assert set(extra["bias_bound"]) == {"dm", "magic"}
    assert methods["wpdis"] == "percentile bootstrap of sessions"
    assert extra["extrapolating"] and "extrapolating: 1.50 nats" in extra["verdict"]
    assert set(extra["difference_ci95"]) == {"dm", "dr", "wdr", "switch", "magic"}
    none, extra0 = session_estimates(
        sessions, features, expected, config, fqe, n_bootstrap=0, seed=0, kl_per_step=0.1
    )
    assert "interval_method" not in none["magic"].to_dict()
    assert extra0["verdict"].startswith("cannot tell: no interval")


def test_bias_bound_is_the_distance_to_wdrs_band():
    wdr = np.linspace(9.0, 11.0, 101)  # central 68% band: [9.32, 10.68]
    assert bias_bound(10.0, wdr) == 0.0
    assert bias_bound(8.0, wdr) == pytest.approx(9.32 - 8.0)  # WDR above: extend upwards
    assert bias_bound(12.0, wdr) == pytest.approx(10.68 - 12.0)  # below: extend downwards
    assert bias_bound(12.0, np.array([np.nan, 1.0])) == 0.0  # too few finite resamples


def test_model_intervals_are_extended_by_the_detectable_bias():
    """A Q-model blind to the state is biased; its DM interval reaches towards WDR."""
    offsets, _, a, r, pb, pe = simulate(3, 2000)
    # Only the action: the state (which the reward depends on) is invisible to the model.
    features = np.eye(2)[a]
    expected = np.tile(TARGET.mean(axis=0), (len(a), 1))
    config = FQEConfig(seed=0)
    sessions, fqe = fqe_sessions(offsets, r, pb, pe, features, expected, config)
    out = refit_bootstrap(
        sessions, features, expected, config, fqe, RefitBootstrapConfig(60, seed=1)
    )
    truth = exact_value(TARGET)
    dm = out.estimates["dm"]
    tail = np.percentile(out.resampled["dm"], [2.5, 97.5])
    bias = out.bias_bound["dm"]
    assert bias == pytest.approx(bias_bound(dm.value, out.resampled["wdr"]))
    assert bias != 0.0  # the model's bias is detectable here
    np.testing.assert_allclose(dm.ci95, (tail[0] + min(bias, 0), tail[1] + max(bias, 0)))
    assert not tail[0] <= truth <= tail[1]  # the refit interval alone misses the truth
    assert dm.ci95[0] <= truth <= dm.ci95[1]  # extended by the bias it holds it
    wdr_tail = np.percentile(out.resampled["wdr"], [2.5, 97.5])
    np.testing.assert_allclose(out.estimates["wdr"].ci95, wdr_tail)  # WDR is not extended
