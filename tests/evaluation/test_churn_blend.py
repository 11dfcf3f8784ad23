"""The default churn predictor's blend: weights on the simplex, chosen on a validation window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlrec.evaluation.churn import _simplex, choose_blend


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_simplex_grid_holds_every_weight_vector_once(k):
    W = _simplex(k, 10)
    assert W.shape == (math.comb(10 + k - 1, k - 1), k)
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    assert (W >= 0).all()
    assert len(np.unique(np.round(W * 10).astype(int), axis=0)) == len(W)


def _window(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rate = rng.gamma(1.0, 1.0, 2_000)
    count = rng.poisson(rate).astype(np.float64)
    return rate, count, count > 0


def test_blend_puts_all_weight_on_the_true_predictor():
    rate, count, returned = _window(0)
    noise = np.random.default_rng(1)
    preds = {
        "truth": (1 - np.exp(-rate), rate),
        "noisy": (1 - np.exp(-rate * noise.lognormal(0, 1.0, len(rate))), rate * 2.0),
        "flat": (np.full(len(rate), 0.5), np.full(len(rate), rate.mean())),
    }
    blend = choose_blend(preds, returned, count)
    assert blend["p_weights"]["truth"] >= 0.8
    assert blend["n_weights"]["truth"] >= 0.8
    assert blend["auc"]["blend"] >= max(blend["auc"][n] for n in preds) - 1e-12
    assert blend["mae"]["blend"] <= min(blend["mae"][n] for n in preds) + 1e-12
    for weights in (blend["p_weights"], blend["n_weights"]):
        assert sum(weights.values()) == pytest.approx(1.0)


def test_blend_of_two_half_informed_predictors_beats_each():
    # Each predictor sees half of the signal: the blend sees both, and it is chosen.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=3_000), rng.normal(size=3_000)
    rate = np.exp(0.8 * a + 0.8 * b - 0.5)
    count = rng.poisson(rate).astype(np.float64)
    returned = count > 0
    preds = {
        "a": (1 / (1 + np.exp(-a)), np.exp(0.8 * a)),
        "b": (1 / (1 + np.exp(-b)), np.exp(0.8 * b)),
    }
    blend = choose_blend(preds, returned, count)
    assert 0.2 <= blend["p_weights"]["a"] <= 0.8
    assert blend["auc"]["blend"] > max(blend["auc"]["a"], blend["auc"]["b"]) + 0.02
    assert blend == choose_blend(preds, returned, count)  # deterministic


def test_blend_when_everyone_returned_still_chooses_weights():
    # No user without a return: AUC is undefined, the log loss still orders the candidates.
    rate, count, _ = _window(3)
    preds = {"x": (np.full(len(rate), 0.3), rate), "y": (np.full(len(rate), 0.6), rate + 1)}
    blend = choose_blend(preds, np.ones(len(rate), bool), count)
    assert blend["p_weights"] == {"x": 0.0, "y": 1.0}
    assert blend["auc"]["blend"] is None
    assert blend["n_weights"]["x"] == 1.0
