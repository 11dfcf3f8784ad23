"""What a session is worth beyond itself: the retention bonus that plans for users coming back.

In a lifecycle episode (``env.episode: lifecycle``) a session's content decides whether and
when the user returns (:class:`rlrec.envs.lifecycle.ReturnProcess`): a longer session, or one
with a buy, may bring the user back sooner or keep them from dropping out. The planner
(:mod:`rlrec.agents.planner`) solves one session exactly; to make it plan for the horizon, the
value of what follows a session is added to the session's steps as a bonus per event and per
outcome: the gradient of the continuation value at the typical session ``x_bar``,

``C(x; r, d) = V * (1 - pi(x)) * E_gap[G(r, d + gap(x, r))]``, ``bonus_j = E[dC / dx_j]``

for a session with counters ``x`` (events, engaged steps, carts, buys) ending on day ``d`` for
a user of activity ``r``: ``pi`` is the dropout probability, ``G(r, t)`` the expected number
of sessions from a session on day ``t`` to the horizon (itself included, later sessions
typical), and ``V`` the value of a session under the plan. ``G`` comes from a backward
recursion on a day grid, the distribution of session days from the forward one, for users at
the quantiles of the activity distribution: no sampling noise, so the finite differences are
exact up to the grid. The counters enter a session additively (each step is an event; each
engaged step, cart, buy adds one), so the bonus is a per-step reward that the planner's
backward induction takes as it is. Why first order: the exact continuation depends on the
session's whole counters, which would multiply the planner's state space by their range.
Later sessions are taken as typical and ``max_sessions`` is ignored (the bonus is a shaping
term; the choice between plans is made on lifecycle rollouts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrec.envs.config import EnvConfig, RewardWeights
from rlrec.envs.lifecycle import SESSION_COUNTERS, ReturnProcess, session_covariates
from rlrec.errors import UserError

__all__ = [
    "RetentionBonus",
    "retention_bonus",
]


@dataclass(frozen=True)
class RetentionBonus:
    """Continuation value per unit of each session counter.

    Attributes:
        event: Bonus of every step (each step is one event of the session, engaged or not).
        outcome: Bonus by outcome of an engaged step (engage, cart, buy: the engaged, cart
            and buy counters it adds, summed).
        session_value: ``V_session`` used.
        further_sessions: ``F``, expected sessions after a return within the horizon.
        p_return: ``P_return`` at the typical session.
    """

    event: float
    outcome: RewardWeights
    session_value: float
    further_sessions: float
    p_return: float

    def summary(self) -> dict[str, float]:
        """JSON-ready figures."""
        return {
            "event": self.event,
            "engage": self.outcome.engage,
            "cart": self.outcome.cart,
            "buy": self.outcome.buy,
            "session_value": self.session_value,
            "further_sessions": self.further_sessions,
            "p_return": self.p_return,
        }


_GRID = 240  # day-grid cells over the horizon
_RATE_BINS = 16  # activity quantiles


def _gap_cells(process: ReturnProcess, rate: np.ndarray, mult: float, dt: float) -> np.ndarray:
    """(R, J) P(gap in cell l) = P(l dt <= gap < (l + 1) dt) for each user rate, given return."""
    edges = np.maximum(np.arange(_GRID + 1) * dt - process.gap_offset_days, 0.0)  # (J + 1,)
    h = rate[:, None] * mult * np.power(edges[None, :] / process.gap_scale_days, process.gap_shape)
    cdf = 1.0 - np.exp(-h)  # (R, J + 1)
    return np.diff(cdf, axis=1)


def _rates(process: ReturnProcess) -> np.ndarray:
    """(R,) activity levels at the midpoints of equal-probability bins of the frailty."""
    if process.frailty_shape is None:
        return np.ones(1)
    from scipy import stats

    q = (np.arange(_RATE_BINS) + 0.5) / _RATE_BINS
    shape = process.frailty_shape
    g = np.asarray(stats.gamma.ppf(q, shape, scale=1.0 / shape), dtype=np.float64)
    return np.power(g, process.frailty_power)


def _sessions_to_go(keep: float, cells: np.ndarray) -> np.ndarray:
    """(R, J) expected sessions from a session in cell j to the horizon, itself included.

    ``G[j] = 1 + keep * sum_l cells[l] * G[j + l]`` over ``j + l < J``; the ``l = 0`` term (a
    gap shorter than a cell) refers to ``G[j]`` itself and is solved for.
    """
    r, j_max = cells.shape
    g = np.zeros((r, j_max))
    for j in range(j_max - 1, -1, -1):
        later = cells[:, 1 : j_max - j] * g[:, j + 1 :]
        g[:, j] = (1.0 + keep * later.sum(axis=1)) / (1.0 - keep * cells[:, 0])
    return g


def _session_days(keep: float, cells: np.ndarray) -> np.ndarray:
    """(R, J) expected number of sessions starting in each cell (the first one in cell 0)."""
    r, j_max = cells.shape
    d = np.zeros((r, j_max))
    d[:, 0] = 1.0
    for j in range(j_max):
        if j > 0:
            d[:, j] = keep * (d[:, :j] * cells[:, j:0:-1]).sum(axis=1)
        d[:, j] /= 1.0 - keep * cells[:, 0]
    return d


def retention_bonus(
    process: ReturnProcess,
    env: EnvConfig,
    session_value: float,
    mean_counts: np.ndarray,
    seed: int = 0,
    n_users: int = 20_000,
) -> RetentionBonus:
    """The per-event and per-outcome continuation bonus; see the module docstring.

    Args:
        process: The return process.
        env: The lifecycle env settings (horizon, max sessions).
        session_value: Mean return of one session under the plan being improved.
        mean_counts: (4,) mean session counters (:data:`SESSION_COUNTERS`) under that plan.
        seed: Seed of the Monte Carlo run.
        n_users: Simulated users.

    Raises:
        UserError: If the counters or the session value are not finite and non-negative.
    """
    counts = np.asarray(mean_counts, dtype=np.float64)
    if counts.shape != (len(SESSION_COUNTERS),) or not np.all(np.isfinite(counts)):
        raise UserError(f"retention bonus: mean_counts {counts.tolist()}, expected 4 finite values")
    if not np.isfinite(session_value) or session_value < 0:
        raise UserError(f"retention bonus: session value {session_value}, expected >= 0")
    horizon = float(env.horizon_days)
    dt = horizon / _GRID
    x_bar = session_covariates(counts[None, :], process.covariates, smooth=True)
    keep_bar = 1.0 - float(process.dropout_probability(x_bar)[0])
    rates = _rates(process)
    cells_bar = _gap_cells(process, rates, float(process.rate_multiplier(x_bar)[0]), dt)
    to_go = _sessions_to_go(keep_bar, cells_bar)  # (R, J)
    weight = _session_days(keep_bar, cells_bar)  # (R, J) where sessions end
    weight /= weight.sum()
    # to_go_after[r, j, l] = G[r, j + l + 1/2 cell] for j + l < J, else 0 (past the horizon).
    j_idx = np.arange(_GRID)
    shifted = j_idx[:, None] + j_idx[None, :]  # (J, J) j + l
    inside = shifted < _GRID
    after = np.where(inside[None], to_go[:, np.minimum(shifted, _GRID - 1)], 0.0)  # (R, J, J)

    def continuation(c: np.ndarray) -> tuple[float, float]:
        """Mean sessions to come, and P(return within the horizon), after a session ``c``."""
        x = session_covariates(c[None, :], process.covariates, smooth=True)
        keep = 1.0 - float(process.dropout_probability(x)[0])
        cells = _gap_cells(process, rates, float(process.rate_multiplier(x)[0]), dt)  # (R, L)
        future = keep * np.einsum("rjl,rl->rj", after, cells)  # (R, J)
        back = keep * np.einsum("jl,rl->rj", inside.astype(np.float64), cells)
        return float((weight * future).sum()), float((weight * back).sum())

    sessions_after, base = continuation(counts)
    grad = np.zeros(len(SESSION_COUNTERS))
    for j in range(len(SESSION_COUNTERS)):
        # Central differences of one unit's width (counters move by whole units), clipped at 0.
        step = np.zeros_like(counts)
        step[j] = 0.5
        lo = np.maximum(counts - step, 0.0)
        hi = counts + step
        grad[j] = (continuation(hi)[0] - continuation(lo)[0]) / (hi[j] - lo[j])
    g = float(session_value) * grad
    further = sessions_after / base if base > 0 else 0.0
    engaged = float(g[1])
    return RetentionBonus(
        event=float(g[0]),
        outcome=RewardWeights(
            engage=engaged, cart=engaged + float(g[2]), buy=engaged + float(g[2] + g[3])
        ),
        session_value=float(session_value),
        further_sessions=further,
        p_return=base,
    )
