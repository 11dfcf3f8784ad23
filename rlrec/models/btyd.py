"""Buy-till-you-die models: BG/NBD and Pareto/NBD, fitted by maximum likelihood.

These are the baselines practitioners use to answer "who will come back?" from a transaction
log summarised per customer as ``(x, t_x, T)``: ``x`` repeat transactions (sessions after the
first), ``t_x`` the time of the last one and ``T`` the length of observation, both measured from
the customer's first transaction.

* **Pareto/NBD** (Schmittlein, Morrison and Colombo 1987; likelihood and conditional
  expectations as in Fader and Hardie, "A Note on Deriving the Pareto/NBD Model and Related
  Expressions", 2005): transactions are Poisson(lambda) while alive, lifetimes Exp(mu), with
  ``lambda ~ Gamma(r, alpha)`` and ``mu ~ Gamma(s, beta)`` across customers.
* **BG/NBD** (Fader, Hardie and Lee 2005, "Counting Your Customers the Easy Way"): the same
  Poisson purchasing, but after each transaction the customer drops out with probability
  ``p ~ Beta(a, b)``.

Why not a library: ``lifetimes`` 0.11.3 fails on pandas 3 and ``btyd`` is its unmaintained fork
(last release 2022); ``pymc-marketing`` pulls in PyMC. The closed forms are short, and the tests
check them against numerical integration of the models and recover the published CDNOW
estimates from data drawn with them.

Time is in whatever unit ``t_x`` and ``T`` are given in (rlrec passes days); ``alpha`` and
``beta`` carry that unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

__all__ = [
    "BGNBD",
    "BTYDSummary",
    "ParetoNBD",
    "fit_bgnbd",
    "fit_pareto_nbd",
]

_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(48)
_PILOT_ROWS = 4000
_PARETO_MAX_LOG_S = 4.0
"""Upper bound of Pareto/NBD's log s (see :func:`fit_pareto_nbd`)."""
"""Distinct customer rows above which the Nelder-Mead search runs on a seeded sample."""


@dataclass(frozen=True)
class BTYDSummary:
    """Per-customer recency/frequency summary.

    Attributes:
        x: (n,) repeat transactions (>= 0).
        t_x: (n,) time of the last transaction since the first (0 when ``x == 0``).
        T: (n,) observation length since the first transaction (``T >= t_x``).
    """

    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.x) == len(self.t_x) == len(self.T)):
            raise ValueError("x, t_x and T must have the same length")
        if np.any(self.t_x > self.T + 1e-9) or np.any(self.x < 0):
            raise ValueError("expected x >= 0 and t_x <= T")


def _as_summary(x: Any, t_x: Any, T: Any) -> BTYDSummary:
    return BTYDSummary(
        np.asarray(x, dtype=np.float64),
        np.asarray(t_x, dtype=np.float64),
        np.asarray(T, dtype=np.float64),
    )


def _compress(data: BTYDSummary) -> tuple[BTYDSummary, np.ndarray]:
    """Distinct ``(x, t_x, T)`` rows and how many customers share each.

    Transaction logs with dates repeat the same summary many times (same day of joining, same
    count): the likelihood is a sum over customers, so each distinct row is evaluated once and
    weighted by its count. This is exact.
    """
    rows = np.stack([data.x, data.t_x, data.T], axis=1)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    return BTYDSummary(unique[:, 0], unique[:, 1], unique[:, 2]), counts.astype(np.float64)


def _fit(
    terms: Any,
    start: np.ndarray,
    data: BTYDSummary,
    penalty: float,
    bounds: list[tuple[float, float]] | None = None,
) -> tuple[np.ndarray, float, bool]:
    """Maximise the mean log-likelihood over log-parameters (Nelder-Mead, then L-BFGS-B).

    A small L2 penalty on the log-parameters keeps the optimiser off the flat ridges these
    likelihoods have on short logs (``lifetimes`` does the same); 0 disables it. ``terms`` maps
    ``(params, data)`` to the (n,) per-customer log-likelihood. On more than
    :data:`_PILOT_ROWS` distinct rows, Nelder-Mead runs on a seeded pilot sample of them and
    L-BFGS-B refines on all: Nelder-Mead needs hundreds of evaluations, and each evaluation of
    Pareto/NBD's hypergeometric terms on tens of thousands of rows costs tens of
    milliseconds, so the full-sample search would dominate ``rlrec churn`` at scale.
    """
    unique, counts = _compress(data)

    def objective_on(d: BTYDSummary, w: np.ndarray) -> Any:
        total = max(float(w.sum()), 1.0)

        def objective(log_params: np.ndarray) -> float:
            ll = float(np.sum(w * terms(np.exp(log_params), d)))
            value = -ll / total + penalty * float(log_params @ log_params)
            return value if np.isfinite(value) else 1e12

        return objective

    full = objective_on(unique, counts)
    # Log-parameters stay in [-10, 10]: a log where nobody visibly drops out sends BG/NBD's
    # (a, b) and Pareto/NBD's beta to infinity, where the conditional expectations overflow;
    # at e^10 the model is already indistinguishable from its no-dropout limit.
    bounds = bounds or [(-10.0, 10.0)] * len(start)
    if len(counts) > _PILOT_ROWS:
        pick = np.sort(np.random.default_rng(0).permutation(len(counts))[:_PILOT_ROWS])
        pilot = BTYDSummary(unique.x[pick], unique.t_x[pick], unique.T[pick])
        search = objective_on(pilot, counts[pick])
    else:
        search = full
    first = optimize.minimize(
        search, start, method="Nelder-Mead", bounds=bounds, options={"maxiter": 2000}
    )
    result = optimize.minimize(full, first.x, method="L-BFGS-B", bounds=bounds)
    best = result if result.fun <= full(first.x) else first
    ll = float(np.sum(counts * terms(np.exp(best.x), unique)))
    return np.exp(best.x), ll, bool(best.success)


@dataclass(frozen=True)
class BGNBD:
    """A fitted BG/NBD model.

    Attributes:
        r: Shape of the Gamma transaction-rate heterogeneity.
        alpha: Scale (time unit) of the Gamma transaction-rate heterogeneity.
        a: Beta dropout heterogeneity, first shape.
        b: Beta dropout heterogeneity, second shape.
        log_likelihood: Log-likelihood at the fit (NaN when built by hand).
    """

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")

    @staticmethod
    def log_likelihood_terms(params: np.ndarray, data: BTYDSummary) -> np.ndarray:
        """(n,) per-customer log-likelihood (Fader, Hardie and Lee 2005, eq. 6)."""
        r, alpha, a, b = (float(v) for v in params)
        x, t_x, T = data.x, data.t_x, data.T
        log_a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        log_a2 = special.betaln(a, b + x) - special.betaln(a, b)
        first = log_a2 - (r + x) * np.log(alpha + T)
        with np.errstate(divide="ignore", invalid="ignore"):
            second = (log_a2 + np.log(a) - np.log(np.maximum(b + x - 1, 1e-300))) - (
                r + x
            ) * np.log(alpha + t_x)
        second = np.where(x > 0, second, -np.inf)
        return log_a1 + np.logaddexp(first, second)

    @classmethod
    def negative_log_likelihood(cls, params: np.ndarray, data: BTYDSummary) -> float:
        """Total negative log-likelihood of ``data`` under ``(r, alpha, a, b)``."""
        return -float(np.sum(cls.log_likelihood_terms(params, data)))

    def p_alive(self, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n,) P(alive at T | x, t_x, T); a customer without repeats is alive for sure."""
        d = _as_summary(x, t_x, T)
        with np.errstate(divide="ignore"):
            log_odds = (
                np.log(self.a)
                - np.log(np.maximum(self.b + d.x - 1, 1e-300))
                + (self.r + d.x) * (np.log(self.alpha + d.T) - np.log(self.alpha + d.t_x))
            )
        return np.where(d.x > 0, special.expit(-log_odds), 1.0)

    def expected_transactions(self, t: float, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n,) E[transactions in (T, T + t] | x, t_x, T] (Fader, Hardie and Lee 2005, eq. 10)."""
        d = _as_summary(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        hyp = special.hyp2f1(r + d.x, b + d.x, a + b + d.x - 1, t / (alpha + d.T + t))
        ratio = ((alpha + d.T) / (alpha + d.T + t)) ** (r + d.x)
        numerator = (a + b + d.x - 1) / (a - 1) * (1 - ratio * hyp)
        return numerator * self.p_alive(d.x, d.t_x, d.T)

    def p_no_transaction(self, t: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n,) P(no transaction in (T, T + t] | x, t_x, T); ``t`` broadcasts.

        Alive at ``T``, a customer can only drop out right after a transaction, so the wait to
        the next one is Poisson with the posterior rate ``Gamma(r + x, alpha + T)``.
        """
        d = _as_summary(x, t_x, T)
        alive = self.p_alive(d.x, d.t_x, d.T)
        wait = ((self.alpha + d.T) / (self.alpha + d.T + np.asarray(t))) ** (self.r + d.x)
        return 1 - alive + alive * wait

    def no_transaction_curve(self, times: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n, m) P(no transaction in (T, T + t]) at each of the m ``times`` (one P(alive))."""
        d = _as_summary(x, t_x, T)
        alive = self.p_alive(d.x, d.t_x, d.T)[:, None]
        a_post = (self.alpha + d.T)[:, None]
        t = np.asarray(times, dtype=np.float64)[None, :]
        wait = (a_post / (a_post + t)) ** (self.r + d.x)[:, None]
        return np.asarray(1 - alive + alive * wait)

    def to_dict(self) -> dict[str, float]:
        """Parameters as a JSON-ready mapping."""
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


def fit_bgnbd(x: Any, t_x: Any, T: Any, penalty: float = 0.0) -> BGNBD:
    """Fit BG/NBD by maximum likelihood.

    Args:
        x: (n,) repeat transactions.
        t_x: (n,) time of the last transaction since the first.
        T: (n,) observation length since the first transaction.
        penalty: L2 penalty on the log-parameters, per customer (0: plain maximum likelihood).
    """
    data = _as_summary(x, t_x, T)
    scale = max(float(np.mean(data.T)), 1e-6)
    start = np.log([1.0, scale, 1.0, 1.0])
    params, ll, _ = _fit(BGNBD.log_likelihood_terms, start, data, penalty)
    r, alpha, a, b = (float(v) for v in params)
    return BGNBD(r, alpha, a, b, log_likelihood=ll)


@dataclass(frozen=True)
class ParetoNBD:
    """A fitted Pareto/NBD model.

    Attributes:
        r: Shape of the Gamma transaction-rate heterogeneity.
        alpha: Scale (time unit) of the Gamma transaction-rate heterogeneity.
        s: Shape of the Gamma dropout-rate heterogeneity.
        beta: Scale (time unit) of the Gamma dropout-rate heterogeneity.
        log_likelihood: Log-likelihood at the fit (NaN when built by hand).
    """

    r: float
    alpha: float
    s: float
    beta: float
    log_likelihood: float = float("nan")

    @staticmethod
    def _log_a0(params: np.ndarray, data: BTYDSummary) -> np.ndarray:
        """(n,) log of ``A_0`` in Fader and Hardie's note (eq. 19/20), for ``alpha >= beta`` or not.

        ``A_0 = [F(t_x)/(m+t_x)^k - F(T)/(m+T)^k]`` with ``k = r + s + x``, ``m = max(alpha,
        beta)``: computed as the difference of two logs so long logs do not underflow.
        """
        r, alpha, s, beta = (float(v) for v in params)
        x, t_x, T = data.x, data.t_x, data.T
        k = r + s + x
        m = max(alpha, beta)
        second: float | np.ndarray = s + 1 if alpha >= beta else r + x
        gap = abs(alpha - beta)
        log_f_tx = np.log(special.hyp2f1(k, second, k + 1, gap / (m + t_x))) - k * np.log(m + t_x)
        log_f_T = np.log(special.hyp2f1(k, second, k + 1, gap / (m + T))) - k * np.log(m + T)
        # log(exp(a) - exp(b)) for a >= b; equal terms (t_x == T) contribute nothing.
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = log_f_tx + np.log1p(-np.exp(np.minimum(log_f_T - log_f_tx, 0.0)))
        return np.where(log_f_tx > log_f_T, diff, -np.inf)

    @classmethod
    def log_likelihood_terms(cls, params: np.ndarray, data: BTYDSummary) -> np.ndarray:
        """(n,) per-customer log-likelihood (Fader and Hardie's note, eq. 22)."""
        r, alpha, s, beta = (float(v) for v in params)
        x, T = data.x, data.T
        head = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha) + s * np.log(beta)
        alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
        dead = np.log(s) - np.log(r + s + x) + cls._log_a0(params, data)
        return head + np.logaddexp(alive, dead)

    @classmethod
    def negative_log_likelihood(cls, params: np.ndarray, data: BTYDSummary) -> float:
        """Total negative log-likelihood of ``data`` under ``(r, alpha, s, beta)``."""
        return -float(np.sum(cls.log_likelihood_terms(params, data)))

    def p_alive(self, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n,) P(alive at T | x, t_x, T) (Fader and Hardie's note, eq. 18 over eq. 22)."""
        d = _as_summary(x, t_x, T)
        params = np.array([self.r, self.alpha, self.s, self.beta])
        alive = -(self.r + d.x) * np.log(self.alpha + d.T) - self.s * np.log(self.beta + d.T)
        dead = np.log(self.s) - np.log(self.r + self.s + d.x) + self._log_a0(params, d)
        return special.expit(alive - dead)

    def expected_transactions(self, t: float, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n,) E[transactions in (T, T + t] | x, t_x, T] (Fader and Hardie's note, eq. 24)."""
        d = _as_summary(x, t_x, T)
        rate = (self.r + d.x) / (self.alpha + d.T)
        life = (
            (self.beta + d.T)
            / (self.s - 1)
            * (1 - ((self.beta + d.T) / (self.beta + d.T + t)) ** (self.s - 1))
        )
        return rate * life * self.p_alive(d.x, d.t_x, d.T)

    def p_no_transaction(self, t: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n,) P(no transaction in (T, T + t] | x, t_x, T) for a scalar ``t``.

        Alive at ``T``, the posterior is ``lambda ~ Gamma(r + x, alpha + T)`` and ``mu ~
        Gamma(s, beta + T)``, independent, so the remaining lifetime ``tau`` is Lomax and
        ``P(none) = P(tau > t) W(t) + int_0^t f_tau(m) W(m) dm`` with ``W(m) = ((alpha + T) /
        (alpha + T + m))^(r + x)``; the integral is 48-point Gauss-Legendre.
        """
        d = _as_summary(x, t_x, T)
        return self._no_transaction_alive(float(t), d, self.p_alive(d.x, d.t_x, d.T))

    def _no_transaction_alive(self, t: float, d: BTYDSummary, alive: np.ndarray) -> np.ndarray:
        """(n,) P(no transaction in (T, T + t]) given the customers' P(alive) (n,)."""
        if t <= 0:
            return np.ones(len(d.x))
        a_post, b_post = self.alpha + d.T, self.beta + d.T
        shape = self.r + d.x

        def wait(m: np.ndarray | float) -> np.ndarray:
            return np.asarray((a_post / (a_post + m)) ** shape)

        tail = (b_post / (b_post + t)) ** self.s * wait(t)
        nodes = (np.asarray(_LEGENDRE_NODES) + 1) * t / 2
        weights = np.asarray(_LEGENDRE_WEIGHTS) * t / 2
        integral = np.zeros_like(d.x)
        for m, w in zip(nodes, weights, strict=True):
            density = self.s / b_post * (b_post / (b_post + m)) ** (self.s + 1)
            integral += w * density * wait(m)
        return 1 - alive + alive * (tail + integral)

    def no_transaction_curve(self, times: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """(n, m) :meth:`p_no_transaction` at each of the m ``times``.

        P(alive), whose hypergeometric terms cost the most, is computed once, not per time.
        """
        d = _as_summary(x, t_x, T)
        alive = self.p_alive(d.x, d.t_x, d.T)
        out = np.empty((len(d.x), len(np.atleast_1d(times))))
        for j, t in enumerate(np.atleast_1d(np.asarray(times, dtype=np.float64))):
            out[:, j] = self._no_transaction_alive(float(t), d, alive)
        return out

    def to_dict(self) -> dict[str, float]:
        """Parameters as a JSON-ready mapping."""
        return {"r": self.r, "alpha": self.alpha, "s": self.s, "beta": self.beta}


def fit_pareto_nbd(x: Any, t_x: Any, T: Any, penalty: float = 0.0) -> ParetoNBD:
    """Fit Pareto/NBD by maximum likelihood (arguments as in :func:`fit_bgnbd`)."""
    data = _as_summary(x, t_x, T)
    scale = max(float(np.mean(data.T)), 1e-6)
    start = np.log([1.0, scale, 1.0, scale])
    # s <= e^4 (about 55): a log where nobody visibly drops out sends (s, beta) to infinity
    # along a ridge of constant s / beta (one dropout rate for all); at s = 55 the dropout
    # rates' spread is already 13% of their mean, while scipy's hyp2f1 slows about tenfold
    # per tenfold s (128 ms per 20k customers at s = 164): an unbounded fit took minutes.
    bounds = [(-10.0, 10.0), (-10.0, 10.0), (-10.0, _PARETO_MAX_LOG_S), (-10.0, 10.0)]
    params, ll, _ = _fit(ParetoNBD.log_likelihood_terms, start, data, penalty, bounds)
    r, alpha, s, beta = (float(v) for v in params)
    return ParetoNBD(r, alpha, s, beta, log_likelihood=ll)
