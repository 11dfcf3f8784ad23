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


def _log(n_users: int, seed: int):
    """A user/time log: exponential gaps (mean 10 days), 10% dropout after each session."""
    import pandas as pd

    from rlrec.models.lifecycle import DAY_MS

    rng = np.random.default_rng(seed)
    users, times = [], []
    for u in range(n_users):
        t = rng.uniform(0, 30)
        while t < 200:
            users.append(u)
            times.append(t)
            if rng.random() < 0.1:
                break
            t += rng.exponential(10.0)
    ms = (np.asarray(times) * DAY_MS).astype(np.int64)
    frame = pd.DataFrame({"user": users, "session": np.arange(len(users)), "timestamp": ms})
    raw = np.array([f"c{u:04d}" for u in range(n_users)], dtype=object)
    return frame, raw


def test_blend_is_chosen_before_the_cutoff_and_reported():
    from rlrec.evaluation.churn import ChurnConfig, churn_sessions, predict_churn
    from rlrec.models.calibration import SESSION_GAP_MS
    from rlrec.models.lifecycle import DAY_MS

    frame, raw = _log(300, 0)
    cutoff = 100 * DAY_MS
    sessions = churn_sessions(frame, raw, cutoff, SESSION_GAP_MS)
    result = predict_churn(sessions, cutoff, ChurnConfig(horizon_days=100.0))
    blend = result.info["blend"]
    # A classic split: no full 100-day window before the cutoff for boosting, so the slice is
    # the last third of the calibration period, and its weights are reported.
    assert set(blend["p_weights"]) == {"return_model", "bgnbd", "pareto_nbd"}
    assert blend["horizon_days"] == pytest.approx(100.0 / 3, rel=0.01)
    assert blend["users"] == len(result.predictions)  # every user joined before the slice
    p = sum(w * result.baselines[n]["p_return"] for n, w in blend["p_weights"].items())
    np.testing.assert_allclose(result.predictions["p_return"], np.clip(p, 0, 1))
    # The count: one weight set for users seen once, one for repeat users.
    assert set(blend["n_weights_by_stratum"]) == {"one_session", "repeat"}
    once = result.predictions["frequency"].to_numpy() <= 1
    for label, rows in (("one_session", once), ("repeat", ~once)):
        weights = blend["n_weights_by_stratum"][label]
        n = sum(w * result.baselines[k]["expected_sessions"].to_numpy() for k, w in weights.items())
        np.testing.assert_allclose(result.predictions["expected_sessions"][rows], n[rows])
    # Sessions at or after the cutoff change nothing (the slice is before it).
    later = frame.assign(timestamp=frame["timestamp"] + (frame["timestamp"] >= cutoff) * DAY_MS)
    again = predict_churn(
        churn_sessions(later, raw, cutoff, SESSION_GAP_MS), cutoff, ChurnConfig(100.0)
    )
    assert again.info["blend"]["p_weights"] == blend["p_weights"]


def test_too_few_users_for_validation_falls_back_to_one_candidate():
    from rlrec.evaluation.churn import ChurnConfig, churn_sessions, predict_churn
    from rlrec.models.calibration import SESSION_GAP_MS
    from rlrec.models.lifecycle import DAY_MS

    frame, raw = _log(40, 1)
    cutoff = 100 * DAY_MS
    result = predict_churn(
        churn_sessions(frame, raw, cutoff, SESSION_GAP_MS), cutoff, ChurnConfig(100.0)
    )
    blend = result.info["blend"]
    # One event per session and no value: the return model has no covariates at all.
    assert result.return_model is not None and result.return_model.feature_names == ()
    assert "users before the validation cutoff" in blend["reason"]
    # No slice: the documented default weights predict (0.6, 0.2, 0.2 without boosting).
    names = ["return_model", "bgnbd", "pareto_nbd"]
    assert blend["p_weights"] == ChurnConfig(100.0).defaults_for(names)
    assert blend["p_weights"]["return_model"] == pytest.approx(0.6)
    p = sum(w * result.baselines[n]["p_return"] for n, w in blend["p_weights"].items())
    np.testing.assert_allclose(result.predictions["p_return"], np.clip(p, 0, 1))


def test_small_slices_shrink_toward_the_default_weights():
    rate, count, returned = _window(4)
    noise = np.random.default_rng(5)
    preds = {
        "truth": (1 - np.exp(-rate), rate),
        "noisy": (1 - np.exp(-rate * noise.lognormal(0, 1.0, len(rate))), rate * 2.0),
    }
    default = {"truth": 0.5, "noisy": 0.5}
    # A large slice (2,000 users, ~1,000 of each outcome) keeps most of its own weights...
    big = choose_blend(preds, returned, count, default=default, prior_users=100.0)
    m = min(returned.sum(), (~returned).sum())
    assert big["shrinkage_p"] == pytest.approx(m / (m + 100.0))
    assert big["slice_p_weights"]["truth"] >= 0.8
    assert big["p_weights"]["truth"] == pytest.approx(
        big["shrinkage_p"] * big["slice_p_weights"]["truth"] + (1 - big["shrinkage_p"]) * 0.5
    )
    # ... a slice where all but two users returned moves the default by ~2%.
    few = returned.copy()
    few[:] = True
    few[:2] = False
    small = choose_blend(preds, few, count, default=default, prior_users=100.0)
    assert small["shrinkage_p"] == pytest.approx(2 / 102)
    assert abs(small["p_weights"]["truth"] - 0.5) <= 0.5 * 2 / 102 + 1e-12
    for blend in (big, small):
        assert sum(blend["p_weights"].values()) == pytest.approx(1.0)
        assert sum(blend["n_weights"].values()) == pytest.approx(1.0)
    # No shrinkage: the slice's weights as they are.
    plain = choose_blend(preds, returned, count, default=default, prior_users=0.0)
    assert plain["p_weights"] == plain["slice_p_weights"] and plain["shrinkage_p"] == 1.0


def test_default_weights_are_checked_and_renormalised():
    from rlrec.evaluation.churn import ChurnConfig

    config = ChurnConfig(1.0, default_weights=(("return_model", 2.0), ("bgnbd", 1.0)))
    assert config.defaults_for(["return_model", "bgnbd", "pareto_nbd"]) == {
        "return_model": pytest.approx(2 / 3),
        "bgnbd": pytest.approx(1 / 3),
        "pareto_nbd": 0.0,
    }
    assert config.defaults_for(["pareto_nbd"]) == {"pareto_nbd": 1.0}
    with pytest.raises(ValueError, match="default_weights"):
        ChurnConfig(1.0, default_weights=(("oracle", 1.0),))
    with pytest.raises(ValueError, match="blend_prior_users"):
        ChurnConfig(1.0, blend_prior_users=-1.0)


def test_horizon_map_carries_a_window_to_the_horizon():
    import pandas as pd

    from rlrec.evaluation.churn import _HorizonMap
    from rlrec.models.btyd import ParetoNBD

    # Pareto/NBD at CDNOW's published estimates (weeks); users with varied histories.
    model = ParetoNBD(r=0.553, alpha=10.58, s=0.606, beta=11.67)
    rng = np.random.default_rng(0)
    T = rng.uniform(27, 39, 2_000)
    freq = rng.poisson(1.5, 2_000).astype(np.float64)
    t_x = np.where(freq > 0, T * rng.uniform(0.2, 1.0, 2_000), 0.0)
    feats = pd.DataFrame({"frequency": freq + 1, "tenure_days": T, "recency_days": T - t_x})
    mapped = _HorizonMap.fit({"pareto_nbd": model}, feats, 13.0, 39.0)
    assert mapped.source == "pareto_nbd" and mapped.b > 0
    p_w = 1 - model.p_no_transaction(13.0, freq, t_x, T)
    p_h = 1 - model.p_no_transaction(39.0, freq, t_x, T)
    carried = mapped.p(p_w)
    # The map is increasing (a classifier's ranking, and so its AUC, is kept) and carries
    # the model's own 13-week probabilities to its 39-week ones nearly as well as any function
    # of the 13-week probability can: users with one 13-week probability differ at 39 weeks,
    # and the mean of each fiftieth of them (the best such function) is off by ~0.019.
    order = np.argsort(p_w)
    assert np.all(np.diff(carried[order]) >= -1e-12)
    bins = pd.qcut(p_w, 50, labels=False, duplicates="drop")
    floor = np.abs(pd.Series(p_h).groupby(bins).transform("mean").to_numpy() - p_h).mean()
    assert np.abs(carried - p_h).mean() < 1.25 * floor
    assert (carried >= p_w - 1e-9).mean() > 0.99  # a longer window: returns are likelier
    n_w = model.expected_transactions(13.0, freq, t_x, T)
    n_h = model.expected_transactions(39.0, freq, t_x, T)
    assert mapped.n(n_w).sum() == pytest.approx(n_h.sum())
    # Equal windows change nothing; without a BTYD model a constant hazard carries it.
    same = _HorizonMap.fit({"pareto_nbd": model}, feats, 39.0, 39.0)
    assert same.source == "identity"
    np.testing.assert_array_equal(same.p(p_w), p_w)
    flat = _HorizonMap.fit({}, feats, 10.0, 30.0)
    assert flat.source == "constant_hazard"
    np.testing.assert_allclose(flat.p(np.array([0.5])), [1 - 0.5**3])
    np.testing.assert_allclose(flat.n(np.array([2.0])), [6.0])


def test_classic_split_trains_the_classifier_on_a_third_of_the_calibration():
    from rlrec.evaluation.churn import ChurnConfig, churn_sessions, predict_churn
    from rlrec.models.calibration import SESSION_GAP_MS
    from rlrec.models.lifecycle import DAY_MS

    # A holdout as long as the calibration (100 days) leaves no full window before the
    # cutoff; 300 users give >= 250 rows at windows of a third of it (the default asks for
    # 1,000 rows: a smaller threshold keeps the test small).
    frame, raw = _log(300, 6)
    cutoff = 100 * DAY_MS
    config = ChurnConfig(horizon_days=100.0, min_train_rows=250, max_iter=30)
    sessions = churn_sessions(frame, raw, cutoff, SESSION_GAP_MS)
    result = predict_churn(sessions, cutoff, config)
    info = result.info
    span = (cutoff - sessions["start_ms"].min()) / DAY_MS
    assert info["train_window_days"] == pytest.approx(span / 3)
    assert info["n_train_rows"] >= 250
    assert info["horizon_map"]["source"] == "pareto_nbd"
    assert info["horizon_map"]["logit_slope"] > 0
    # The classifier and the RFM regression are candidates, scored alone as baselines; the
    # recency and frequency baselines exist again on a classic split.
    blend = info["blend"]
    assert {"gradient_boosting", "rfm_logistic"} <= set(blend["p_weights"])
    assert {"recency", "frequency", "gradient_boosting", "rfm_logistic"} <= set(result.baselines)
    # The validation slice is the same third, and boosting's count is the return model's.
    assert blend["horizon_days"] == pytest.approx(span / 3)
    np.testing.assert_array_equal(
        result.baselines["gradient_boosting"]["expected_sessions"],
        result.baselines["return_model"]["expected_sessions"],
    )
    # Sessions at or after the cutoff change nothing.
    later = frame.assign(timestamp=frame["timestamp"] + (frame["timestamp"] >= cutoff) * DAY_MS)
    again = predict_churn(churn_sessions(later, raw, cutoff, SESSION_GAP_MS), cutoff, config)
    np.testing.assert_allclose(
        again.predictions["p_return"], result.predictions["p_return"], atol=1e-12
    )


def test_count_weights_are_chosen_per_stratum():
    # Candidate "a" knows the counts of the first half of the users, "b" of the second half.
    rate, count, returned = _window(7)
    half = np.arange(len(rate)) < len(rate) // 2
    strata = np.where(half, "one_session", "repeat")
    p = 1 - np.exp(-rate)
    preds = {
        "a": (p, np.where(half, rate, 3 * rate)),
        "b": (p, np.where(half, 3 * rate, rate)),
    }
    plain = choose_blend(preds, returned, count)
    split = choose_blend(preds, returned, count, strata=strata)
    assert "n_weights_by_stratum" not in plain
    assert split["n_weights_by_stratum"]["one_session"]["a"] >= 0.8
    assert split["n_weights_by_stratum"]["repeat"]["b"] >= 0.8
    assert split["n_weights"] == plain["n_weights"]  # the overall choice is still reported
    assert split["mae"]["blend"] < min(plain["mae"]["blend"], split["mae"]["a"]) - 0.1
    assert split["p_weights"] == plain["p_weights"]  # probabilities are not stratified
    # A stratum of two users keeps (almost) the overall weights.
    tiny = np.where(np.arange(len(rate)) < 2, "one_session", "repeat")
    shrunk = choose_blend(preds, returned, count, prior_users=30.0, strata=tiny)
    m = int(returned[:2].sum())
    lam = m / (m + 30.0)
    assert (
        abs(shrunk["n_weights_by_stratum"]["one_session"]["a"] - shrunk["n_weights"]["a"])
        <= lam + 1e-12
    )
