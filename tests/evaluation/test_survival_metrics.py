"""Survival metrics against scikit-survival's implementations (common censoring time)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rlrec.evaluation import survival_metrics as sm


def _sksurv():
    try:
        from sksurv import metrics
        from sksurv.util import Surv
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but scikit-survival (dev extra) is not installed")
        pytest.skip("scikit-survival (the dev extra) is not installed")
    return metrics, Surv


def _window(seed: int, n: int = 400, horizon: float = 10.0):
    rng = np.random.default_rng(seed)
    rate = rng.gamma(1.0, 0.2, n)
    t = rng.exponential(1 / rate)
    event = t < horizon
    time = np.where(event, t, horizon)
    risk = np.round(rate + rng.normal(0, 0.05, n), 2)  # rounded: ties in risk
    return time, event, risk, rate, horizon


def test_concordance_matches_sksurv():
    metrics, _ = _sksurv()
    for seed in range(3):
        time, event, risk, _, _ = _window(seed)
        ref = metrics.concordance_index_censored(event, time, risk)[0]
        assert sm.concordance_index(time, event, risk) == pytest.approx(ref, abs=1e-12)


def test_concordance_edge_cases():
    assert sm.concordance_index(np.array([1.0, 2.0]), np.array([True, True]), np.array([2, 1])) == 1
    assert sm.concordance_index(np.array([1.0, 2.0]), np.array([True, True]), np.array([1, 2])) == 0
    assert sm.concordance_index(np.array([1.0]), np.array([False]), np.array([1.0])) is None


def test_time_dependent_auc_and_ibs_match_sksurv():
    metrics, Surv = _sksurv()
    time, event, _, rate, _ = _window(7)
    y = Surv.from_arrays(event, time)
    times = np.array([1.0, 3.0, 5.0, 8.0])
    survival = np.exp(-rate[:, None] * times[None])
    ref_auc, _ = metrics.cumulative_dynamic_auc(y, y, 1 - survival, times)
    auc, mean = sm.cumulative_dynamic_auc(time, event, 1 - survival, times)
    np.testing.assert_allclose(auc, ref_auc, atol=1e-9)
    ref_bs = metrics.brier_score(y, y, survival, times)[1]
    np.testing.assert_allclose(sm.brier_score(time, event, survival, times), ref_bs, atol=1e-9)
    ref_ibs = metrics.integrated_brier_score(y, y, survival, times)
    assert sm.integrated_brier_score(time, event, survival, times) == pytest.approx(ref_ibs)
    assert mean is not None and 0.5 < mean <= 1


def test_calibration_bins():
    rng = np.random.default_rng(0)
    p = rng.random(10_000)
    label = rng.random(10_000) < p
    table = sm.calibration_bins(label, p, n_bins=10)
    assert len(table["bins"]) == 10 and sum(b["n"] for b in table["bins"]) == 10_000
    assert table["ece"] < 0.03
    assert sm.calibration_bins(label, np.full(10_000, 0.9))["ece"] > 0.3
