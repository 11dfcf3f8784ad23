"""BG/NBD and Pareto/NBD: likelihoods against numerical integration, recovery of CDNOW estimates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rlrec.models.btyd import BGNBD, BTYDSummary, ParetoNBD, fit_bgnbd, fit_pareto_nbd

# Published maximum-likelihood estimates on the CDNOW sample (weeks): Fader, Hardie and Lee
# (2005) for BG/NBD; Fader and Hardie's Pareto/NBD note for Pareto/NBD.
CDNOW_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
CDNOW_PARETO = {"r": 0.553, "alpha": 10.58, "s": 0.606, "beta": 11.67}
CASES = [(0, 0.0, 38.86), (2, 30.43, 38.86), (5, 10.0, 30.0), (1, 1.5, 27.2)]


def draw_pareto(n: int, p: dict[str, float], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(p["r"], 1 / p["alpha"], n)
    mu = rng.gamma(p["s"], 1 / p["beta"], n)
    T = rng.uniform(27, 39, n)  # CDNOW: first purchases over 12 weeks, calibration to week 39
    end = np.minimum(rng.exponential(1 / mu), T)
    x = rng.poisson(lam * end)
    t_x = np.where(x > 0, end * rng.random(n) ** (1 / np.maximum(x, 1)), 0.0)
    return x.astype(float), t_x, T


def draw_bgnbd(n: int, p: dict[str, float], seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(p["r"], 1 / p["alpha"], n)
    drop = rng.beta(p["a"], p["b"], n)
    T = rng.uniform(27, 39, n)
    potential = rng.poisson(lam * T)
    x = np.minimum(potential, rng.geometric(drop))  # drops out right after purchase D
    # The x-th of `potential` uniform purchase times on [0, T].
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), potential - x + 1), 0.0)
    return x.astype(float), t_x, T


def _log_grid(lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and trapezoid weights of int_0^inf f(v) dv on v = e^w, w uniform in [lo, hi]."""
    w = np.linspace(lo, hi, n)
    v = np.exp(w)
    weights = np.full(n, w[1] - w[0]) * v
    weights[[0, -1]] /= 2
    return v, weights


def test_pareto_nbd_likelihood_matches_numerical_integration():
    # Integrate the individual-level likelihood over the two gamma mixing distributions on a
    # dense grid: independent of the closed form's hypergeometric functions.
    p = CDNOW_PARETO
    lam, w_lam = _log_grid(-80, 4, 1500)
    mu, w_mu = _log_grid(-80, 4, 1500)
    L, M = lam[:, None], mu[None, :]
    density = (
        stats.gamma.pdf(lam, p["r"], scale=1 / p["alpha"])[:, None]
        * stats.gamma.pdf(mu, p["s"], scale=1 / p["beta"])[None, :]
    )
    for x, t_x, T in CASES:
        alive = L**x * np.exp(-(L + M) * T)
        died = L**x * M / (L + M) * (np.exp(-(L + M) * t_x) - np.exp(-(L + M) * T))
        value = w_lam @ ((alive + died) * density) @ w_mu
        closed = ParetoNBD.log_likelihood_terms(
            np.array(list(p.values())), BTYDSummary(np.array([x]), np.array([t_x]), np.array([T]))
        )[0]
        assert closed == pytest.approx(np.log(value), abs=1e-4)


def test_bgnbd_likelihood_matches_numerical_integration():
    p = CDNOW_BGNBD
    lam, w_lam = _log_grid(-80, 4, 1500)
    # The dropout probability on a logit grid (its Beta density is singular at 0 for a < 1).
    z = np.linspace(-40, 40, 4000)
    q = 1 / (1 + np.exp(-z))
    w_q = np.full(len(z), z[1] - z[0]) * q * (1 - q)
    L, Q = lam[:, None], q[None, :]
    log_beta_pdf = (p["a"] - 1) * (-np.logaddexp(0, -z)) + (p["b"] - 1) * (-np.logaddexp(0, z))
    density = (
        stats.gamma.pdf(lam, p["r"], scale=1 / p["alpha"])[:, None]
        * np.exp(log_beta_pdf - special_betaln(p["a"], p["b"]))[None, :]
    )
    for x, t_x, T in CASES:
        stay = (1 - Q) ** x * L**x * np.exp(-L * T)
        drop = Q * (1 - Q) ** (x - 1) * L**x * np.exp(-L * t_x) if x > 0 else 0.0
        value = w_lam @ ((stay + drop) * density) @ w_q
        closed = BGNBD.log_likelihood_terms(
            np.array(list(p.values())), BTYDSummary(np.array([x]), np.array([t_x]), np.array([T]))
        )[0]
        assert closed == pytest.approx(np.log(value), abs=1e-4)


def special_betaln(a: float, b: float) -> float:
    from scipy.special import betaln

    return float(betaln(a, b))


def test_bgnbd_recovers_cdnow_estimates():
    x, t_x, T = draw_bgnbd(6_000, CDNOW_BGNBD, seed=1)
    fit = fit_bgnbd(x, t_x, T)
    # Tolerance: 25% of each parameter (their sampling sd at n = 6,000 is about 6-15%).
    for name, true in CDNOW_BGNBD.items():
        assert getattr(fit, name) == pytest.approx(true, rel=0.25), name


def test_pareto_nbd_recovers_cdnow_estimates():
    x, t_x, T = draw_pareto(6_000, CDNOW_PARETO, seed=2)
    fit = fit_pareto_nbd(x, t_x, T)
    for name, true in CDNOW_PARETO.items():
        assert getattr(fit, name) == pytest.approx(true, rel=0.25), name


def test_conditional_predictions_are_consistent():
    bg = BGNBD(**CDNOW_BGNBD)
    pn = ParetoNBD(**CDNOW_PARETO)
    x, t_x, T = np.array([0.0, 3, 3]), np.array([0.0, 35, 5]), np.array([38.0, 38, 38])
    for model in (bg, pn):
        alive = model.p_alive(x, t_x, T)
        assert np.all((alive > 0) & (alive <= 1))
        assert alive[1] > alive[2]  # a recent repeat buyer is likelier alive than a lapsed one
        expected = model.expected_transactions(39, x, t_x, T)
        assert expected[1] > expected[2] > 0
        none = model.p_no_transaction(39, x, t_x, T)
        assert np.all((none > 0) & (none < 1))
        assert np.all(model.p_no_transaction(1e-9, x, t_x, T) == pytest.approx(1, abs=1e-6))
        # More time, fewer customers with no transaction.
        assert np.all(model.p_no_transaction(80, x, t_x, T) < none)


def test_p_no_transaction_matches_simulation():
    # Pareto/NBD for a customer with x = 2, t_x = 20, T = 38: simulate from the posterior.
    pn = ParetoNBD(**CDNOW_PARETO)
    rng = np.random.default_rng(3)
    n = 400_000
    lam = rng.gamma(pn.r + 2, 1 / (pn.alpha + 38), n)
    mu = rng.gamma(pn.s, 1 / (pn.beta + 38), n)
    alive = pn.p_alive(np.array([2.0]), np.array([20.0]), np.array([38.0]))[0]
    is_alive = rng.random(n) < alive
    life = rng.exponential(1 / mu)
    first = rng.exponential(1 / lam)
    bought = is_alive & (first < np.minimum(life, 10.0))
    closed = pn.p_no_transaction(10.0, np.array([2.0]), np.array([20.0]), np.array([38.0]))[0]
    assert closed == pytest.approx(1 - bought.mean(), abs=0.003)


def test_curve_matches_the_pointwise_probability():
    x, t_x, T = np.array([0.0, 3, 3, 12]), np.array([0.0, 35, 5, 30]), np.array([38.0, 38, 38, 39])
    times = np.array([0.0, 0.5, 10.0, 39.0])
    for model in (BGNBD(**CDNOW_BGNBD), ParetoNBD(**CDNOW_PARETO)):
        curve = model.no_transaction_curve(times, x, t_x, T)
        assert curve.shape == (4, 4)
        for j, t in enumerate(times):
            np.testing.assert_allclose(curve[:, j], model.p_no_transaction(t, x, t_x, T))


def test_fit_on_distinct_rows_is_the_same_maximum_likelihood():
    # Dates repeat (x, t_x, T): the fit evaluates each distinct row once, weighted by its
    # count; the optimum is the plain maximum likelihood of every customer.
    x, t_x, T = draw_bgnbd(3_000, CDNOW_BGNBD, seed=4)
    t_x, T = np.floor(t_x), np.floor(T)
    assert len(np.unique(np.stack([x, t_x, T], 1), axis=0)) < 1_000
    for fit, cls in ((fit_bgnbd, BGNBD), (fit_pareto_nbd, ParetoNBD)):
        model = fit(x, t_x, T)
        params = np.array(list(model.to_dict().values()))
        total = -cls.negative_log_likelihood(params, BTYDSummary(x, t_x, T))
        assert model.log_likelihood == pytest.approx(total, rel=1e-9)
        # A local maximum: moving any parameter by 2% lowers the likelihood.
        for i in range(4):
            for step in (0.98, 1.02):
                moved = params.copy()
                moved[i] *= step
                assert -cls.negative_log_likelihood(moved, BTYDSummary(x, t_x, T)) < total


def test_pilot_search_reaches_the_full_sample_optimum():
    # More distinct rows than the pilot: Nelder-Mead on a sample, L-BFGS-B on all of them.
    from rlrec.models import btyd

    x, t_x, T = draw_pareto(btyd._PILOT_ROWS + 2_000, CDNOW_PARETO, seed=5)
    model = fit_pareto_nbd(x, t_x, T)
    params = np.array(list(model.to_dict().values()))
    total = -ParetoNBD.negative_log_likelihood(params, BTYDSummary(x, t_x, T))
    for i in range(4):
        for step in (0.98, 1.02):
            moved = params.copy()
            moved[i] *= step
            assert -ParetoNBD.negative_log_likelihood(moved, BTYDSummary(x, t_x, T)) < total
