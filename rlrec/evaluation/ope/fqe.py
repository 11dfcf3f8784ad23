r"""Fitted Q evaluation (FQE) with linear features, cross-fitted over sessions.

The Q-function of the target policy :math:`\pi_e` is linear in features of (state, action),
:math:`\hat Q(s, a) = \phi(s, a)^\top \theta`, so the state value under the target policy is
:math:`\hat V(s) = \bar\phi_\pi(s)^\top \theta` with the expected features
:math:`\bar\phi_\pi(s) = \sum_a \pi_e(a \mid s)\, \phi(s, a)`, which the caller computes once
per logged state (for 1000 actions this is far cheaper than scoring every action).

FQE iterates ridge regressions of the Bellman target on the logged steps:

.. math:: \theta_{k+1} = \arg\min_\theta \sum_t (\phi_t^\top\theta - r_t
          - \gamma\, \bar\phi_{\pi,t+1}^\top \theta_k)^2 + \lambda \lVert\theta\rVert^2,

with :math:`\bar\phi_{\pi,t+1} = 0` after a session's last step. Because the regressors do not
change, every iteration is a (d, d) update: :math:`\theta_{k+1} = A^{-1}(c + \gamma B
\theta_k)` with :math:`A = \Phi^\top\Phi + \lambda I`, :math:`B = \Phi^\top \bar\Phi'` and
:math:`c = \Phi^\top r`. Sessions are finite, so ``max_length`` iterations propagate rewards
over a whole session (the finite-horizon fixed point); iteration stops earlier once
:math:`\theta` stops moving.

Regression weights (optional, ``FQEConfig.ratio_power`` > 0): given the logged steps'
single-step ratios :math:`\rho_t = \pi_e(a_t|s_t) / \pi_b(a_t|s_t)`, every regression weighs
step :math:`t` by :math:`\rho_t^p`: :math:`A = \Phi^\top W\Phi + \lambda I`,
:math:`B = \Phi^\top W\bar\Phi'`, :math:`c = \Phi^\top W r`, so the linear model is fitted
where the target acts rather than where the behaviour did.

Cross-fitting: sessions are split into ``n_folds`` folds at random (seeded); each fold's Q
values come from the model fitted on the other folds, so the doubly robust correction is not
fitted to its own noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from rlrec.errors import UserError

__all__ = [
    "MAX_RIDGE_RAISES",
    "RIDGE_BISECTIONS",
    "FQEConfig",
    "FQEResult",
    "fitted_q_evaluation",
    "fold_of_sessions",
    "q_calibration",
    "returns_to_go",
    "solve_fqe",
    "step_weights",
]

MAX_RIDGE_RAISES = 6
"""How many times FQE may raise its ridge tenfold to make its iteration contract."""

RIDGE_BISECTIONS = 4
"""Bisections of the decade that first contracts: the ridge FQE uses is within a factor of
10 ** (1 / 16) (15%) of the smallest that contracts."""


@dataclass(frozen=True)
class FQEConfig:
    r"""Settings of fitted Q evaluation.

    Attributes:
        ridge: L2 penalty relative to the mean diagonal of :math:`\Phi^\top\Phi`; raised
            tenfold (up to ``MAX_RIDGE_RAISES`` times) while the FQE iteration map does not
            contract (spectral radius >= 1), which would make the iterates blow up.
        n_folds: Cross-fitting folds over sessions (1: fit and predict on all sessions).
        max_iterations: Upper bound on FQE iterations (also capped at the longest session).
        tol: Stop when the largest change of :math:`\theta` is below ``tol`` times its norm.
        seed: Seed of the fold assignment.
        ratio_power: Each logged step's weight in the regressions is its single-step ratio
            :math:`(\pi_e(a_t|s_t) / \pi_b(a_t|s_t))^{p}` (when the caller passes the
            ratios; 0, the default: every step weighs 1). A linear Q-model is a
            projection, and unweighted it is the best fit on the *behaviour's* actions
            while the target's value rests on the actions *the target* takes. The square
            root took the benchmark's farthest target from a -13.8% to a -2.1% mean error,
            but raised the quickstart PPO agent's from +3.9% to +11.2% (10 logs), so it is
            not the default (``docs/ope.md#the-q-models-regression-weights``).
    """

    ridge: float = 1e-3
    n_folds: int = 2
    max_iterations: int = 200
    tol: float = 1e-8
    seed: int = 0
    ratio_power: float = 0.0

    def __post_init__(self) -> None:
        if not self.ridge > 0:
            raise UserError(f"fqe.ridge: expected > 0, got {self.ridge}")
        if not 0.0 <= self.ratio_power <= 1.0:
            raise UserError(f"fqe.ratio_power: expected in [0, 1], got {self.ratio_power}")
        if self.n_folds < 1:
            raise UserError(f"fqe.n_folds: expected >= 1, got {self.n_folds}")
        if self.max_iterations < 1:
            raise UserError(f"fqe.max_iterations: expected >= 1, got {self.max_iterations}")


@dataclass(frozen=True)
class FQEResult:
    r"""Cross-fitted Q-function values on the logged steps.

    Attributes:
        q_factual: (n_steps,) :math:`\hat Q(s_t, a_t)` at the logged actions.
        v_target: (n_steps,) :math:`\hat V(s_t) = \sum_a \pi_e(a|s_t) \hat Q(s_t, a)`.
        iterations: FQE iterations run in each fold.
        theta: (n_folds, d) coefficients of each fold's model.
        ridges: The relative ridge each fold used (``FQEConfig.ridge``, raised tenfold until
            the FQE iteration contracts).
        step_weight: (n_steps,) each step's weight in the regressions
            (``FQEConfig.ratio_power``), or None where every step weighed 1; the Q-refit
            bootstrap refits with the same weights.
    """

    q_factual: np.ndarray
    v_target: np.ndarray
    iterations: tuple[int, ...]
    theta: np.ndarray
    ridges: tuple[float, ...]
    step_weight: np.ndarray | None = None


def _fit_theta(
    phi: np.ndarray,
    phi_next: np.ndarray,
    reward: np.ndarray,
    gamma: float,
    config: FQEConfig,
    max_length: int,
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, int, float]:
    left = phi if weight is None else phi * weight[:, None]  # (n, d): W Phi
    return solve_fqe(left.T @ phi, gamma * (left.T @ phi_next), left.T @ reward, config, max_length)


def step_weights(step_ratio: np.ndarray | None, config: FQEConfig) -> np.ndarray | None:
    r"""(n_steps,) the regression weight of every logged step, or None (all 1).

    Args:
        step_ratio: (n_steps,) :math:`\pi_e(a_t|s_t) / \pi_b(a_t|s_t)`, or None.
        config: FQE settings (``ratio_power``).

    Raises:
        UserError: If a ratio is negative or not finite.
    """
    if step_ratio is None or config.ratio_power == 0.0:
        return None
    ratio = np.asarray(step_ratio, dtype=np.float64)
    if not (np.all(np.isfinite(ratio)) and np.all(ratio >= 0)):
        raise UserError("step_ratio: expected finite, non-negative probability ratios")
    return np.power(ratio, config.ratio_power)


def solve_fqe(
    gram: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    config: FQEConfig,
    max_length: int,
    start_ridge: float | None = None,
    check_contraction: bool = True,
) -> tuple[np.ndarray, int, float]:
    r"""FQE coefficients from the regression's sufficient statistics.

    The statistics are sums over training steps, so the Q-refit bootstrap
    (:mod:`rlrec.evaluation.ope.refit_bootstrap`) refits on a resample by summing
    per-group statistics instead of revisiting the steps.

    Args:
        gram: (d, d) :math:`\Phi^\top\Phi`.
        b: (d, d) :math:`\gamma\,\Phi^\top\bar\Phi'`.
        c: (d,) :math:`\Phi^\top r`.
        config: FQE settings (ridge, iterations, tolerance).
        max_length: Longest session (caps the iterations).
        start_ridge: First relative ridge to try (default ``config.ridge``); a resample
            starts from the ridge the full data needed, which keeps refits comparable.
        check_contraction: Check the iteration map's spectral radius before iterating (an
            eigenvalue problem, most of a refit's cost). Without the check, the iteration
            runs at ``start_ridge`` and the checked path is taken only if it diverges.

    Returns:
        ``(theta, iterations, ridge)``: (d,) coefficients, iterations run and the relative
        ridge used.
    """
    d = gram.shape[0]
    scale = max(float(np.trace(gram)) / d, 1e-12)
    first = config.ridge if start_ridge is None else start_ridge
    if not check_contraction:
        base, step = _iteration_map(gram, b, c, first * scale)
        if _growth_rate(step) < 1.0:
            theta, iterations = _iterate(base, step, config, max_length)
            return theta, iterations, first

    # The iteration map theta -> a_inv (c + b theta) must contract: where the target policy's
    # next-state features point where the logged ones are thin, its spectral radius exceeds 1
    # and the iterates grow geometrically (a sharp PPO policy reached Q ~ 1e5 for returns ~6).
    # Raise the ridge tenfold until it contracts: a biased but finite Q-model.
    # Every raise shrinks all coefficients towards 0, and the target's value with them (a
    # tenfold-too-large ridge cost the benchmark's farthest target 15-40% of its value), so
    # the decade that contracts is then narrowed by bisection in log(ridge) to the smallest
    # ridge that contracts, to a factor of 10 ** (1 / 2 ** RIDGE_BISECTIONS).
    def contracts(ridge: float) -> tuple[bool, np.ndarray, np.ndarray]:
        base, step = _iteration_map(gram, b, c, ridge * scale)
        return float(np.max(np.abs(np.linalg.eigvals(step)))) < 1.0, base, step

    ridge = first
    for attempt in range(MAX_RIDGE_RAISES + 1):
        ridge = first * 10.0**attempt
        ok, base, step = contracts(ridge)
        if ok:
            break
    if ok and ridge > first:
        low, high = np.log10(ridge) - 1.0, np.log10(ridge)  # fails at low, contracts at high
        for _ in range(RIDGE_BISECTIONS):
            middle = (low + high) / 2.0
            ok_middle, base_middle, step_middle = contracts(10.0**middle)
            if ok_middle:
                high, base, step = middle, base_middle, step_middle
            else:
                low = middle
        ridge = float(10.0**high)
    theta, iterations = _iterate(base, step, config, max_length)
    return theta, iterations, ridge


def _growth_rate(step: np.ndarray, n: int = 30) -> float:
    """The spectral radius of ``step`` as power iteration sees it: the growth per application.

    ``(|step^{2n} x| / |step^n x|)^{1/n}`` from a fixed start: n (d, d) mat-vecs instead of an
    eigenvalue problem, accurate to a few percent, which is all the contraction test needs
    (a value near 1 takes the eigenvalue path).
    """
    x = np.ones(step.shape[0]) / np.sqrt(step.shape[0])
    norms = []
    for _ in range(2 * n):
        x = step @ x
        norm = float(np.linalg.norm(x))
        if not np.isfinite(norm) or norm == 0.0:
            return 0.0 if norm == 0.0 else float("inf")
        norms.append(norm)
        x /= norm  # renormalise; the product of the norms is the growth
    rate = float(np.exp(np.mean(np.log(norms[n:]))))
    return rate * 1.05  # a margin: borderline maps take the checked path


def _iteration_map(
    gram: np.ndarray, b: np.ndarray, c: np.ndarray, penalty: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(a_inv c, a_inv b)`` with ``a = gram + penalty I``, by one Cholesky solve."""
    d = gram.shape[0]
    factor = cho_factor(gram + penalty * np.eye(d))
    solved = cho_solve(factor, np.column_stack([c, b]))  # (d, 1 + d)
    return solved[:, 0], solved[:, 1:]


def _iterate(
    base: np.ndarray, step: np.ndarray, config: FQEConfig, max_length: int
) -> tuple[np.ndarray, int]:
    """``theta_{k+1} = base + step theta_k`` from ``base`` until it settles."""
    theta = base.copy()
    iterations = 1
    while iterations < min(config.max_iterations, max_length):
        new = base + step @ theta
        moved = float(np.max(np.abs(new - theta)))
        theta = new
        iterations += 1
        if moved <= config.tol * max(float(np.max(np.abs(theta))), 1e-12):
            break
    return theta, iterations


def fitted_q_evaluation(
    session_offsets: np.ndarray,
    reward: np.ndarray,
    features: np.ndarray,
    expected_features: np.ndarray,
    gamma: float = 1.0,
    config: FQEConfig | None = None,
    step_ratio: np.ndarray | None = None,
) -> FQEResult:
    r"""Cross-fitted linear FQE of the target policy whose expected features are given.

    Args:
        session_offsets: (S + 1,) session offsets into the step arrays.
        reward: (n_steps,) rewards.
        features: (n_steps, d) :math:`\phi(s_t, a_t)` at the logged actions.
        expected_features: (n_steps, d) :math:`\bar\phi_\pi(s_t)` under the target policy.
        gamma: Discount in [0, 1].
        config: FQE settings (default :class:`FQEConfig`).
        step_ratio: (n_steps,) :math:`\pi_e(a_t|s_t) / \pi_b(a_t|s_t)` of the logged
            steps: weighs the regressions by its ``config.ratio_power``; None: unweighted.

    Returns:
        Out-of-fold Q and V values on every logged step.

    Raises:
        UserError: On shape mismatches or non-finite features.
    """
    config = config or FQEConfig()
    n = reward.shape[0]
    if features.ndim != 2 or features.shape[0] != n or expected_features.shape != features.shape:
        raise UserError(
            f"features: expected (n_steps={n}, d) features and expected_features of the same "
            f"shape, got {features.shape} and {expected_features.shape}"
        )
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(expected_features))):
        raise UserError("features: contain NaN or infinite values")
    if step_ratio is not None and np.shape(step_ratio) != (n,):
        raise UserError(f"step_ratio: expected shape ({n},), got {np.shape(step_ratio)}")
    weight = step_weights(step_ratio, config)
    offsets = np.asarray(session_offsets, dtype=np.int64)
    n_sessions = len(offsets) - 1
    lengths = np.diff(offsets)
    phi = features.astype(np.float64)
    phi_bar = expected_features.astype(np.float64)
    # Next state's expected features; zero after each session's last step.
    phi_next = np.zeros_like(phi_bar)
    phi_next[:-1] = phi_bar[1:]
    phi_next[offsets[1:] - 1] = 0.0
    session_of_step = np.repeat(np.arange(n_sessions), lengths)
    fold_of_session = fold_of_sessions(n_sessions, config)
    n_folds = int(fold_of_session.max()) + 1
    fold = fold_of_session[session_of_step]  # (n_steps,)
    q = np.empty(n, dtype=np.float64)
    v = np.empty(n, dtype=np.float64)
    thetas = []
    iterations = []
    ridges = []
    max_length = int(lengths.max())
    for k in range(n_folds):
        test = fold == k
        train = ~test if n_folds > 1 else test
        theta, it, ridge = _fit_theta(
            phi[train],
            phi_next[train],
            reward[train].astype(np.float64),
            gamma,
            config,
            max_length,
            None if weight is None else weight[train],
        )
        q[test] = phi[test] @ theta
        v[test] = phi_bar[test] @ theta
        thetas.append(theta)
        iterations.append(it)
        ridges.append(ridge)
    return FQEResult(
        q_factual=q,
        v_target=v,
        iterations=tuple(iterations),
        theta=np.stack(thetas),
        ridges=tuple(ridges),
        step_weight=weight,
    )


def fold_of_sessions(n_sessions: int, config: FQEConfig) -> np.ndarray:
    """(S,) the cross-fitting fold of every session: balanced, shuffled with ``config.seed``."""
    n_folds = min(config.n_folds, n_sessions)
    rng = np.random.default_rng(config.seed)
    return rng.permutation(np.arange(n_sessions) % n_folds)


def returns_to_go(
    session_offsets: np.ndarray, reward: np.ndarray, gamma: float = 1.0
) -> np.ndarray:
    r"""(n_steps,) :math:`G_t = \sum_{u \ge t} \gamma^{u - t} r_u` within each session.

    Args:
        session_offsets: (S + 1,) session offsets into the step arrays.
        reward: (n_steps,) rewards.
        gamma: Discount in [0, 1].
    """
    offsets = np.asarray(session_offsets, dtype=np.int64)
    r = np.asarray(reward, dtype=np.float64)
    out = np.empty_like(r)
    lengths = np.diff(offsets)
    ends = offsets[1:]
    carry = np.zeros(len(lengths))
    # Walk backwards from each session's end: step k from the end of every session at once.
    for k in range(1, int(lengths.max()) + 1 if len(lengths) else 1):
        live = lengths >= k
        idx = ends[live] - k
        carry[live] = r[idx] + gamma * carry[live]
        out[idx] = carry[live]
    return out


def q_calibration(
    session_offsets: np.ndarray,
    reward: np.ndarray,
    q_factual: np.ndarray,
    gamma: float = 1.0,
    n_bins: int = 10,
) -> dict[str, object]:
    r"""Calibration of out-of-fold Q values of the BEHAVIOUR policy on its own logged returns.

    For the policy that logged the sessions, :math:`Q(s_t, a_t) = E[G_t \mid s_t, a_t]`, so
    cross-fitted :math:`\hat q_t` (each from a model that never saw its session) can be
    checked against the observed returns-to-go :math:`G_t` on held-out data: per quantile bin
    of :math:`\hat q`, the mean :math:`\hat q` should equal the mean :math:`G`. A Q-model that
    misses state the dynamics depend on shows as bins whose mean return departs from their
    mean prediction, and as a low :math:`R^2`. This uses the logs only, never a target's truth.

    Args:
        session_offsets: (S + 1,) session offsets.
        reward: (n_steps,) rewards.
        q_factual: (n_steps,) out-of-fold :math:`\hat q_t` of FQE run with the behaviour
            policy's expected features.
        gamma: Discount of the returns.
        n_bins: Quantile bins of :math:`\hat q`.

    Returns:
        ``{"r2", "mean_error", "max_bin_error", "first_step_q", "first_step_return", "bins":
        [{"q", "return", "steps"}]}`` with ``mean_error`` = mean of :math:`\hat q - G`,
        ``max_bin_error`` the largest absolute bin gap between mean prediction and mean
        return, and the means of :math:`\hat q` and :math:`G` over the sessions' first steps
        (the latter is the behaviour's logged value, so their gap is DM's error on the
        behaviour policy).
    """
    g = returns_to_go(session_offsets, reward, gamma)
    starts = np.asarray(session_offsets, dtype=np.int64)[:-1]
    q = np.asarray(q_factual, dtype=np.float64)
    edges = np.quantile(q, np.linspace(0, 1, n_bins + 1)[1:-1])
    bin_of = np.searchsorted(edges, q, side="right")
    bins: list[dict[str, float]] = []
    gaps = []
    for k in range(n_bins):
        sel = bin_of == k
        if sel.any():
            mean_q, mean_g = float(q[sel].mean()), float(g[sel].mean())
            bins.append({"q": mean_q, "return": mean_g, "steps": float(sel.sum())})
            gaps.append(abs(mean_q - mean_g))
    total = float(np.sum((g - g.mean()) ** 2))
    return {
        "r2": 1.0 - float(np.sum((g - q) ** 2)) / total if total > 0 else float("nan"),
        "mean_error": float(np.mean(q - g)),
        "max_bin_error": max(gaps),
        "first_step_q": float(q[starts].mean()),
        "first_step_return": float(g[starts].mean()),
        "bins": bins,
    }
