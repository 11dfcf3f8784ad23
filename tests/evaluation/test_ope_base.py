"""The shared OPE core: one ratio helper, one estimator base, one bootstrap for both kinds."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.evaluation.ope.bandit import (
    InverseProbabilityWeighting,
    SelfNormalizedIPW,
    estimate_policy_value,
    prepare_rounds,
)
from rlrec.evaluation.ope.base import Estimate, ratio
from rlrec.evaluation.ope.bootstrap import (
    bootstrap_column_sums,
    bootstrap_note,
    bootstrap_summary,
)
from rlrec.evaluation.ope.sequential import (
    PerDecisionIS,
    WeightedIS,
    estimate_session_value,
    prepare_sessions,
)


def test_ratio_marks_zero_denominators_with_nan_or_the_given_fill():
    num, den = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[2.0, 0.0], [0.0, 8.0]])
    np.testing.assert_array_equal(ratio(num, den), [[0.5, np.nan], [np.nan, 0.5]])
    np.testing.assert_array_equal(ratio(num, den, where_zero=0.0), [[0.5, 0.0], [0.0, 0.5]])
    # A scalar denominator broadcasts (the bandit estimators divide by n_rounds).
    np.testing.assert_array_equal(ratio(np.array([3.0, 6.0]), 3), [1.0, 2.0])
    assert np.isnan(ratio(np.array([1.0]), 0)).all()


def one_step_log(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "reward": rng.random(n) * 2.0,
        "pscore": rng.uniform(0.1, 1.0, n),
        "target": rng.uniform(0.0, 1.0, n),
    }


def test_one_step_sessions_and_bandit_rounds_share_the_bootstrap():
    # A log of one-step sessions is a single-slot bandit log: per-decision IS is IPW and
    # weighted IS is SNIPW, and with the same seed the one bootstrap resamples the same
    # units, so the intervals match too.
    log = one_step_log(300, seed=4)
    n = len(log["reward"])
    rounds = prepare_rounds(
        reward=log["reward"],
        action=np.zeros(n, dtype=np.int64),
        pscore=log["pscore"],
        # Context-dependent target probability of the one logged action (the rest elsewhere).
        action_dist=np.stack([log["target"], 1.0 - log["target"]], axis=1)[:, :, None],
    )
    sessions = prepare_sessions(
        session_offsets=np.arange(n + 1),
        reward=log["reward"],
        behaviour_prob=log["pscore"],
        target_prob=log["target"],
    )
    bandit = estimate_policy_value(
        rounds, [InverseProbabilityWeighting(), SelfNormalizedIPW()], n_bootstrap=50, seed=3
    )
    seq = estimate_session_value(sessions, [PerDecisionIS(), WeightedIS()], n_bootstrap=50, seed=3)
    for b, s in (("ipw", "pdis"), ("snipw", "wis")):
        assert seq[s].value == pytest.approx(bandit[b].value, rel=1e-12)
        np.testing.assert_allclose(seq[s].ci95, bandit[b].ci95, rtol=1e-12)
        assert seq[s].n_resamples == bandit[b].n_resamples == 50


def test_non_finite_resamples_are_counted_and_left_out_of_the_interval():
    # Only round 0 has weight under the target: a resample without it has no weight at all
    # and SNIPW is undefined there (0 / 0), while IPW is 0 and stays finite.
    reward = np.array([0.7, 1.0, 0.0, 1.0])
    n = len(reward)
    rounds = prepare_rounds(
        reward=reward,
        action=np.array([0, 1, 1, 1]),
        pscore=np.full(n, 0.5),
        action_dist=np.array([[[1.0], [0.0]]]),  # always action 0
    )
    b = 300
    est = estimate_policy_value(
        rounds, [InverseProbabilityWeighting(), SelfNormalizedIPW()], n_bootstrap=b, seed=9
    )
    # The resamples that miss round 0, counted independently: the same draw's count of it.
    indicator = np.array([[1.0], [0.0], [0.0], [0.0]])
    times_drawn = bootstrap_column_sums(indicator, b, np.random.default_rng(9))[:, 0]
    missing = int(np.sum(times_drawn == 0))
    assert 0 < missing < b  # the case exercises both kinds of resample
    assert est["snipw"].n_nonfinite == missing
    assert est["ipw"].n_nonfinite == 0
    # Every finite SNIPW resample is round 0's reward.
    assert est["snipw"].ci95 == pytest.approx((0.7, 0.7))
    summary = bootstrap_summary(est)
    assert summary == {"n_resamples": b, "nonfinite_resamples": {"ipw": 0, "snipw": missing}}
    assert bootstrap_note(summary).endswith(f"left out of the intervals: snipw {missing}")


def test_bootstrap_note_without_resamples_or_failures():
    ok = {"ipw": Estimate("ipw", 1.0, (0.9, 1.1), n_resamples=20, n_nonfinite=0)}
    assert bootstrap_note(bootstrap_summary(ok)).endswith("intervals: none")
    none = {"ipw": Estimate("ipw", 1.0, (np.nan, np.nan))}
    assert bootstrap_note(bootstrap_summary(none)) == "bootstrap: no resamples (no intervals)"
