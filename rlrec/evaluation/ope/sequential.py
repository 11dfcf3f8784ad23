r"""Off-policy evaluation of sequential (session) policies from logged sessions.

Session :math:`i` has steps :math:`t = 0 .. T_i - 1` with state :math:`s_{i,t}`, logged action
:math:`a_{i,t}`, reward :math:`r_{i,t}`, the behaviour policy's propensity
:math:`\pi_b(a_{i,t} \mid s_{i,t})` and the target policy's probability
:math:`\pi_e(a_{i,t} \mid s_{i,t})`. With the per-step ratio
:math:`\rho_{i,t} = \pi_e / \pi_b` and the cumulative weight
:math:`w_{i,t} = \prod_{u \le t} \rho_{i,u}` (:math:`w_{i,-1} = 1`), and optionally a fitted
Q-function :math:`\hat q_{i,t} = \hat Q(s_{i,t}, a_{i,t})` and
:math:`\hat v_{i,t} = \sum_a \pi_e(a \mid s_{i,t}) \hat Q(s_{i,t}, a)`:

==========  =================================================================================
``is``      trajectory-wise IS: :math:`\frac1n \sum_i w_{i,T_i-1} \sum_t \gamma^t r_{i,t}`
``wis``     weighted IS: the same divided by :math:`\frac1n\sum_i w_{i,T_i-1}`
``pdis``    per-decision IS: :math:`\frac1n \sum_i \sum_t \gamma^t w_{i,t} r_{i,t}`
``wpdis``   weighted PDIS: :math:`\sum_t \gamma^t \sum_i w_{i,t} r_{i,t} / \sum_i w_{i,t}`
``dm``      the fitted Q-function's value: :math:`\frac1n \sum_i \hat v_{i,0}`
``dr``      step-wise doubly robust (Jiang & Li 2016):
            :math:`\frac1n\sum_i\sum_t \gamma^t (w_{i,t}(r_{i,t} - \hat q_{i,t})
            + w_{i,t-1}\hat v_{i,t})`
``wdr``     weighted DR (Thomas & Brunskill 2016): DR with :math:`w_{i,t}/n` replaced by
            :math:`w_{i,t} / \sum_j w_{j,t}`
``switch``  SWITCH-DR (Wang, Agarwal & Dudik 2017), per decision: DR whose cumulative weight
            is cut to 0 once it exceeds a threshold :math:`\tau`, so the session's rest is
            the model's :math:`\hat v` at the step it switched; :math:`\tau` minimises an
            estimated MSE (variance + squared bias bound), see :class:`SwitchDR`
``magic``   MAGIC (Thomas & Brunskill 2016): the blend of the off-policy j-step returns
            (weighted DR up to step j, the Q-function after it; j = -1 is DM, the last j is
            WDR) that minimises an MSE estimated from the logs alone, see
            :class:`BlendedDR`
==========  =================================================================================

Sessions have different lengths. A session that has ended is treated as absorbing: from its
end on it earns nothing, its Q and V are 0, and its cumulative weight stays at its last value
(every policy takes the same dummy action there), which is the convention that keeps the
weighted estimators' per-step normalisers comparable across steps (Thomas 2015).

Like the bandit estimators (:mod:`rlrec.evaluation.ope.bandit`), every estimator is an
:class:`~rlrec.evaluation.ope.base.Estimator`: a function of column sums of per-session
terms, so one resample of sessions (:mod:`rlrec.evaluation.ope.bootstrap`) gives every
estimator's bootstrap interval at once. The fitted Q-function is held fixed across resamples
(fit it cross-fitted, :mod:`rlrec.evaluation.ope.fqe`, so that its errors are independent of
the residuals it corrects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize

from rlrec.data.ragged import Ragged
from rlrec.errors import UserError
from rlrec.evaluation.ope.base import Estimate, Estimator, ratio
from rlrec.evaluation.ope.bootstrap import bootstrap_column_sums, estimate_values

__all__ = [
    "DEFAULT_ESTIMATOR",
    "SESSION_ESTIMATOR_NAMES",
    "SWITCH_BIAS_RULES",
    "SWITCH_THRESHOLDS",
    "BlendedDR",
    "DirectMethod",
    "LoggedSessions",
    "PerDecisionIS",
    "SessionEstimator",
    "StepwiseDR",
    "SwitchDR",
    "TrajectoryIS",
    "WeightedDR",
    "WeightedIS",
    "WeightedPDIS",
    "default_session_estimators",
    "effective_sample_size",
    "estimate_session_value",
    "j_step_returns",
    "magic_weights",
    "prepare_sessions",
    "switch_threshold",
    "switched_weights",
    "validate_session_inputs",
]

SESSION_ESTIMATOR_NAMES = ("is", "wis", "pdis", "wpdis", "dm", "dr", "wdr", "switch", "magic")
"""The sequential estimators, in report order."""

DEFAULT_ESTIMATOR = "magic"
"""The estimator reported as the default (``wpdis`` without a Q-function).

MAGIC because neither end of the DM..WDR range is safe alone: weighted DR is consistent but
its error grows with the importance weights' spread (per-step KL), while DM has no weights
but the Q-model's bias. MAGIC picks the blend from the logs alone (bootstrap variance plus a
bias bound from WDR's interval), so it follows WDR where the weights are tame and the model
where they are not. Chosen on validation settings separate from the benchmark's targets
(10,000 sessions each): behaviour ``greedy_supervised,tau=1.5,eps=0.4``, seed 1, five
targets at 0.29-2.24 nat: MAGIC's largest relative error 8.6%, WDR's 33% (WDR was better
near the behaviour: 3.3% against 7.4% at most for KL <= 1); behaviour
``popularity,tau=1,eps=0.3``, seed 2, four targets at 0.23-1.96 nat: MAGIC 8.5%, WDR 51%
(at 0.70 nat)."""

_SUM_TOL = 1e-6


@dataclass(frozen=True)
class LoggedSessions(Ragged):
    r"""Validated logged sessions, padded to a (n_sessions, horizon) grid.

    Build it with :func:`prepare_sessions`. Cells after a session's end hold reward 0,
    Q and V 0, and the session's last cumulative weight (the absorbing convention). As a
    :class:`~rlrec.data.ragged.Ragged`, ``offsets`` are those of the steps kept (after the
    horizon cut): ``lengths`` and ``n_sessions`` come from them.

    Attributes:
        reward: (S, H) float64 rewards.
        weight: (S, H) float64 cumulative importance weights :math:`w_{i,t}`.
        q_factual: (S, H) float64 :math:`\hat q_{i,t}`, or None without a Q-function.
        v_target: (S, H) float64 :math:`\hat v_{i,t}`, or None.
        offsets: (S + 1,) int64 offsets of the kept steps (after the horizon cut).
        gamma: Discount.
    """

    reward: np.ndarray
    weight: np.ndarray
    q_factual: np.ndarray | None
    v_target: np.ndarray | None
    gamma: float = 1.0

    @property
    def n_units(self) -> int:
        """The bootstrap's units: the logged sessions."""
        return self.n_sessions

    @property
    def horizon(self) -> int:
        """Longest session's length (the grid's width)."""
        return int(self.reward.shape[1])

    @property
    def has_q_function(self) -> bool:
        """Whether Q-function quantities are present (needed by DM, DR and WDR)."""
        return self.q_factual is not None and self.v_target is not None

    @property
    def discount(self) -> np.ndarray:
        r"""(H,) :math:`\gamma^t`."""
        return self.gamma ** np.arange(self.horizon, dtype=np.float64)

    def model_terms(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(q_factual, v_target), or a UserError naming the estimator that needs them."""
        if self.q_factual is None or self.v_target is None:
            raise UserError(
                f"estimator {name} needs a fitted Q-function (q_factual and v_target); fit "
                "one with rlrec.evaluation.ope.fqe.fitted_q_evaluation and pass its output"
            )
        return self.q_factual, self.v_target


def _check_1d(name: str, arr: object, n: int | None) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if arr.ndim != 1:
        raise UserError(f"{name}: expected a 1-D array of shape (n_steps,), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise UserError(
            f"{name}: has {arr.shape[0]} steps but reward has {n}; every per-step array must "
            "have one entry per logged step"
        )
    return arr


def _check_probability(name: str, p: np.ndarray, allow_zero: bool) -> None:
    ok = np.isfinite(p) & (p <= 1.0) & ((p >= 0.0) if allow_zero else (p > 0.0))
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        span = "[0, 1]" if allow_zero else "(0, 1]"
        raise UserError(f"{name}: probabilities must lie in {span}, found {p[bad]!r} at step {bad}")


def validate_session_inputs(
    *,
    session_offsets: np.ndarray,
    reward: np.ndarray,
    behaviour_prob: np.ndarray,
    target_prob: np.ndarray | None = None,
    target_action_probs: np.ndarray | None = None,
    action: np.ndarray | None = None,
    q_factual: np.ndarray | None = None,
    v_target: np.ndarray | None = None,
    gamma: float = 1.0,
    horizon: int | None = None,
) -> None:
    """Check shapes, ranges and normalisation of logged session arrays.

    Args:
        session_offsets: (S + 1,) int non-decreasing offsets, 0 first and n_steps last;
            session ``i`` spans ``offsets[i]:offsets[i + 1]``; every session has >= 1 step.
        reward: (n_steps,) finite rewards.
        behaviour_prob: (n_steps,) behaviour propensities of the logged actions, in (0, 1].
        target_prob: (n_steps,) target probabilities of the logged actions, in [0, 1].
        target_action_probs: (n_steps, n_actions) the target policy's full distributions
            (rows sum to 1), an alternative to ``target_prob`` that needs ``action``.
        action: (n_steps,) int logged actions in [0, n_actions).
        q_factual: (n_steps,) finite Q-function values at the logged actions, or None.
        v_target: (n_steps,) finite target-policy values of the states, or None.
        gamma: Discount in [0, 1].
        horizon: Keep only each session's first ``horizon`` steps (>= 1), or None.

    Raises:
        UserError: One line naming the array, what was expected and what was found.
    """
    _check_1d("reward", reward, None)
    n = reward.shape[0]
    if n == 0:
        raise UserError("reward: the log is empty (0 steps); pass at least one logged session")
    offsets = _check_1d("session_offsets", session_offsets, None)
    if not np.issubdtype(offsets.dtype, np.integer):
        raise UserError(f"session_offsets: expected integers, got dtype {offsets.dtype}")
    if offsets.shape[0] < 2 or offsets[0] != 0 or offsets[-1] != n:
        raise UserError(
            f"session_offsets: expected (n_sessions + 1,) offsets from 0 to n_steps = {n}, got "
            f"{offsets.shape[0]} offsets from {offsets[0] if len(offsets) else None} to "
            f"{offsets[-1] if len(offsets) else None}"
        )
    lengths = np.diff(offsets)
    if (lengths < 1).any():
        bad = int(np.flatnonzero(lengths < 1)[0])
        raise UserError(
            f"session_offsets: session {bad} has {lengths[bad]} steps; offsets must increase "
            "strictly (every session needs at least one step)"
        )
    _check_1d("behaviour_prob", behaviour_prob, n)
    if not np.all(np.isfinite(reward)):
        raise UserError("reward: contains NaN or infinite values")
    _check_probability("behaviour_prob", behaviour_prob, allow_zero=False)
    if (target_prob is None) == (target_action_probs is None):
        raise UserError("target: pass exactly one of target_prob and target_action_probs")
    if target_prob is not None:
        _check_1d("target_prob", target_prob, n)
        _check_probability("target_prob", target_prob, allow_zero=True)
    else:
        probs = target_action_probs
        if not isinstance(probs, np.ndarray) or probs.ndim != 2 or probs.shape[0] != n:
            raise UserError(
                f"target_action_probs: expected shape ({n}, n_actions), got "
                f"{getattr(probs, 'shape', None)}"
            )
        if action is None:
            raise UserError("action: required with target_action_probs (the logged actions)")
        _check_1d("action", action, n)
        if not np.issubdtype(action.dtype, np.integer):
            raise UserError(f"action: expected integers, got dtype {action.dtype}")
        n_actions = probs.shape[1]
        if action.min() < 0 or action.max() >= n_actions:
            raise UserError(
                f"action: values must lie in [0, {n_actions}) (target_action_probs has "
                f"{n_actions} actions), found {action.min()}..{action.max()}"
            )
        sums = probs.sum(axis=1, dtype=np.float64)
        if not np.all(np.isfinite(sums)) or probs.min() < 0:
            raise UserError("target_action_probs: probabilities must be finite and non-negative")
        off = np.abs(sums - 1.0)
        if off.max() > _SUM_TOL:
            row = int(np.argmax(off))
            raise UserError(
                f"target_action_probs: each step's probabilities must sum to 1, step {row} "
                f"sums to {sums[row]:.6g}"
            )
    if (q_factual is None) != (v_target is None):
        raise UserError("q_factual, v_target: pass both (a fitted Q-function) or neither")
    for name, arr in (("q_factual", q_factual), ("v_target", v_target)):
        if arr is not None:
            _check_1d(name, arr, n)
            if not np.all(np.isfinite(arr)):
                raise UserError(f"{name}: contains NaN or infinite values")
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"gamma: expected a discount in [0, 1], got {gamma}")
    if horizon is not None and horizon < 1:
        raise UserError(f"horizon: expected >= 1 steps, got {horizon}")


def _to_grid(
    values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    grid = np.zeros(shape, dtype=np.float64)
    grid[rows, cols] = values
    return grid


def prepare_sessions(
    *,
    session_offsets: np.ndarray,
    reward: np.ndarray,
    behaviour_prob: np.ndarray,
    target_prob: np.ndarray | None = None,
    target_action_probs: np.ndarray | None = None,
    action: np.ndarray | None = None,
    q_factual: np.ndarray | None = None,
    v_target: np.ndarray | None = None,
    gamma: float = 1.0,
    horizon: int | None = None,
) -> LoggedSessions:
    """Validate flat per-step arrays and lay them out on the (sessions, steps) grid.

    Arguments are those of :func:`validate_session_inputs` (steps in session order).

    Returns:
        The padded sessions with cumulative importance weights.

    Raises:
        UserError: See :func:`validate_session_inputs`.
    """
    validate_session_inputs(
        session_offsets=session_offsets,
        reward=reward,
        behaviour_prob=behaviour_prob,
        target_prob=target_prob,
        target_action_probs=target_action_probs,
        action=action,
        q_factual=q_factual,
        v_target=v_target,
        gamma=gamma,
        horizon=horizon,
    )
    offsets = session_offsets.astype(np.int64)
    n_sessions = len(offsets) - 1
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(n_sessions), lengths)  # (n_steps,)
    col = np.arange(offsets[-1]) - offsets[row]  # (n_steps,) step within its session
    if target_prob is None:
        assert target_action_probs is not None and action is not None  # validated above
        target_prob = target_action_probs[np.arange(len(action)), action]
    keep = np.ones(len(row), dtype=bool) if horizon is None else col < horizon
    row, col = row[keep], col[keep]
    lengths = np.minimum(lengths, horizon) if horizon is not None else lengths
    shape = (n_sessions, int(lengths.max()))
    ratio = target_prob[keep].astype(np.float64) / behaviour_prob[keep].astype(np.float64)
    # Cumulative products along each row; ratio 1 after the end keeps the last weight.
    ratio_grid = np.ones(shape, dtype=np.float64)
    ratio_grid[row, col] = ratio
    weight = np.cumprod(ratio_grid, axis=1)  # (S, H)
    q = v = None
    if q_factual is not None and v_target is not None:
        q = _to_grid(q_factual[keep].astype(np.float64), row, col, shape)
        v = _to_grid(v_target[keep].astype(np.float64), row, col, shape)
    return LoggedSessions(
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        reward=_to_grid(reward[keep].astype(np.float64), row, col, shape),
        weight=weight,
        q_factual=q,
        v_target=v,
        gamma=float(gamma),
    )


@dataclass(frozen=True)
class SessionEstimator(Estimator[LoggedSessions]):
    """Base of the sequential estimators: :class:`~rlrec.evaluation.ope.base.Estimator` on sessions.

    ``requires_model`` marks the estimators that read the fitted Q-function.
    """


def _returns(sessions: LoggedSessions) -> np.ndarray:
    return sessions.reward @ sessions.discount  # (S,)


@dataclass(frozen=True)
class TrajectoryIS(SessionEstimator):
    """Trajectory-wise importance sampling: the whole session's weight times its return."""

    name: ClassVar[str] = "is"

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        return (sessions.weight[:, -1] * _returns(sessions))[:, None]


@dataclass(frozen=True)
class WeightedIS(SessionEstimator):
    """Weighted (self-normalised) trajectory-wise IS."""

    name: ClassVar[str] = "wis"

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        w = sessions.weight[:, -1]
        return np.column_stack([w * _returns(sessions), w])

    def combine(  # noqa: D102
        self, sums: np.ndarray, n_units: np.ndarray | int, data: LoggedSessions
    ) -> np.ndarray:
        return ratio(sums[:, 0], sums[:, 1])


@dataclass(frozen=True)
class PerDecisionIS(SessionEstimator):
    """Per-decision IS: each reward weighted by the weight of the steps up to it."""

    name: ClassVar[str] = "pdis"

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        return ((sessions.weight * sessions.reward) @ sessions.discount)[:, None]


@dataclass(frozen=True)
class WeightedPDIS(SessionEstimator):
    """Weighted PDIS: each step's weighted rewards normalised by that step's weight sum."""

    name: ClassVar[str] = "wpdis"

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        w = sessions.weight
        return np.hstack([w * sessions.reward, w])  # (S, 2H)

    def combine(  # noqa: D102
        self, sums: np.ndarray, n_units: np.ndarray | int, data: LoggedSessions
    ) -> np.ndarray:
        h = data.horizon
        return ratio(sums[:, :h], sums[:, h:], where_zero=0.0) @ data.discount


@dataclass(frozen=True)
class DirectMethod(SessionEstimator):
    """DM: the fitted Q-function's value of the target policy at the sessions' first states."""

    name: ClassVar[str] = "dm"
    requires_model: ClassVar[bool] = True

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        _, v = sessions.model_terms(self.name)
        return v[:, :1]


def _previous_weight(sessions: LoggedSessions) -> np.ndarray:
    """(S, H) :math:`w_{i,t-1}` with :math:`w_{i,-1} = 1`."""
    w = sessions.weight
    return np.hstack([np.ones((w.shape[0], 1)), w[:, :-1]])


@dataclass(frozen=True)
class StepwiseDR(SessionEstimator):
    """Step-wise doubly robust (Jiang & Li 2016): PDIS with the Q-function as control variate."""

    name: ClassVar[str] = "dr"
    requires_model: ClassVar[bool] = True

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        q, v = sessions.model_terms(self.name)
        w = sessions.weight
        per_step = w * (sessions.reward - q) + _previous_weight(sessions) * v  # (S, H)
        return (per_step @ sessions.discount)[:, None]


@dataclass(frozen=True)
class WeightedDR(SessionEstimator):
    """Weighted doubly robust (Thomas & Brunskill 2016): DR with per-step normalised weights."""

    name: ClassVar[str] = "wdr"
    requires_model: ClassVar[bool] = True

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        q, v = sessions.model_terms(self.name)
        w = sessions.weight
        # Columns: w_t (r_t - q_t), w_{t-1} v_t, w_t; each (S, H).
        return np.hstack([w * (sessions.reward - q), _previous_weight(sessions) * v, w])

    def combine(  # noqa: D102
        self, sums: np.ndarray, n_units: np.ndarray | int, data: LoggedSessions
    ) -> np.ndarray:
        h = data.horizon
        residual, control, weight = sums[:, :h], sums[:, h : 2 * h], sums[:, 2 * h :]
        previous = np.hstack([_unit_column(n_units, len(sums)), weight[:, :-1]])
        per_step = ratio(residual, weight, 0.0) + ratio(control, previous, 0.0)  # (B, H)
        return per_step @ data.discount


SWITCH_THRESHOLDS: tuple[float, ...] = (0.0, *(2.0**k for k in range(31)), float("inf"))
"""SWITCH-DR's candidate thresholds: 0 (every session switches at its first step: DM), powers
of two up to about 1e9, and infinity (no switch: step-wise DR), so the choice nests both."""


def switched_weights(weight: np.ndarray, threshold: float) -> np.ndarray:
    r"""(S, H) cumulative weights cut to 0 from the first step whose weight exceeds ``threshold``.

    :math:`\tilde w_{i,t} = w_{i,t}\,\mathbb 1[\max_{u \le t} w_{i,u} \le \tau]`: once a
    session's weight has passed the threshold it stays switched to the model, even if later
    ratios bring the weight back down (the session's rest was already handed to :math:`\hat
    v`).

    Args:
        weight: (S, H) cumulative importance weights (absorbing after a session's end).
        threshold: :math:`\tau` >= 0; ``inf`` keeps every weight.
    """
    running = np.maximum.accumulate(weight, axis=1)
    return np.where(running <= threshold, weight, 0.0)


def _switch_terms(sessions: LoggedSessions, switched: np.ndarray) -> np.ndarray:
    """(S,) per-session SWITCH-DR terms from (S, H) switched cumulative weights."""
    q, v = sessions.model_terms(SwitchDR.name)
    previous = np.hstack([np.ones((switched.shape[0], 1)), switched[:, :-1]])
    return (switched * (sessions.reward - q) + previous * v) @ sessions.discount


def _switched_mass(sessions: LoggedSessions, threshold: float) -> np.ndarray:
    r"""(S,) :math:`\gamma^k w_{i,k}` at the step k where session i switched (0 if never).

    The weight of the switching step itself, ratio included: its mean estimates the target
    policy's probability mass of the (state, action) pairs handed to the model, the
    quantity Wang et al.'s bias bound multiplies by the largest possible error.
    """
    w = sessions.weight
    over = np.maximum.accumulate(w, axis=1) > threshold  # (S, H)
    first = np.argmax(over, axis=1)  # (S,) first switched step (0 when none: masked below)
    rows = np.arange(w.shape[0])
    return np.where(over[rows, first], sessions.discount[first] * w[rows, first], 0.0)


class _SwitchPrefix:
    r"""SWITCH-DR's session terms for many thresholds from one pass over the grid.

    The running maximum of a session's weights is non-decreasing, so the steps admitted at
    :math:`\tau` are a prefix whose length is a count; a session's term is then DR's partial
    sum over that prefix plus the model's discounted value at the step it switched
    (:func:`_switch_terms` and :func:`_switched_mass` redone per threshold cost several (S, H)
    float passes each, this one comparison and a count).
    """

    def __init__(self, sessions: LoggedSessions) -> None:
        q, v = sessions.model_terms(SwitchDR.name)
        w = sessions.weight
        s = w.shape[0]
        previous = np.hstack([np.ones((s, 1)), w[:, :-1]])
        discount = sessions.discount
        step = (w * (sessions.reward - q) + previous * v) * discount  # (S, H)
        self.partial = np.hstack([np.zeros((s, 1)), np.cumsum(step, axis=1)])  # (S, H + 1)
        # The switch step's own terms: the model's value and the switching weight; 0 at H.
        self.tail = np.hstack([previous * v * discount, np.zeros((s, 1))])  # (S, H + 1)
        self.switch_weight = np.hstack([w * discount, np.zeros((s, 1))])  # (S, H + 1)
        self.running = np.maximum.accumulate(w, axis=1)  # (S, H)
        self.rows = np.arange(s)

    def admitted(self, threshold: float) -> np.ndarray:
        """(S,) steps kept before the switch (H: never switched)."""
        return np.count_nonzero(self.running <= threshold, axis=1)

    def terms(self, threshold: float) -> np.ndarray:
        """(S,) the per-session SWITCH-DR terms at ``threshold``."""
        k = self.admitted(threshold)
        return self.partial[self.rows, k] + self.tail[self.rows, k]

    def mass(self, threshold: float) -> np.ndarray:
        """(S,) :func:`_switched_mass` at ``threshold``."""
        return self.switch_weight[self.rows, self.admitted(threshold)]


SWITCH_BIAS_RULES = ("estimate", "bound")
"""How :func:`switch_threshold` prices a threshold's bias (see there)."""


def switch_threshold(
    sessions: LoggedSessions,
    thresholds: Sequence[float] = SWITCH_THRESHOLDS,
    bias: str = "estimate",
) -> tuple[float, dict[str, float]]:
    r"""SWITCH-DR's threshold: the candidate with the smallest estimated MSE.

    As in Wang, Agarwal & Dudik (2017, section 4.3), the MSE of threshold :math:`\tau` is
    estimated as the variance of the estimate (sample variance of the per-session terms
    over n) plus a squared bias. Two bias rules:

    * ``"bound"``, the paper's: the target's probability mass handed to the model (mean of
      :func:`_switched_mass`) times the largest error the model can make there; a switch
      replaces the *rest of the session* by :math:`\hat v`, so that is the return range
      (the largest logged return or model value; rewards are >= 0). From logged actions
      the mass is estimated with the switching step's own weight, which is above
      :math:`\tau` by construction, so one switched session in n already costs
      :math:`(\tau / n \cdot \text{range})^2`: on the benchmark's targets it never switched
      (it chose the largest weight, i.e. step-wise DR, on every target of seed 0).
    * ``"estimate"`` (default): the bias is estimated rather than bounded. What switching
      drops is exactly DR's correction terms past the switch, so
      :math:`\widehat{DR} - \widehat{SW}_\tau` estimates the bias; its square overstates
      the squared bias by its own variance, which is subtracted:
      :math:`\max((\overline{d})^2 - \widehat{\mathrm{Var}}(\overline{d}), 0)` with
      :math:`d_i` the per-session difference of the two (Su et al. 2020 estimate the MSE of
      their shrinkage DR the same way).

    Args:
        sessions: Sessions with a Q-function.
        thresholds: Candidate :math:`\tau` values (>= 0; ``inf`` is step-wise DR).
        bias: ``"estimate"`` or ``"bound"``.

    Returns:
        The chosen threshold, and ``{"threshold", "switched_mass", "variance", "bias",
        "mse"}`` at it (variances of the estimate, not of a session).

    Raises:
        UserError: Without a Q-function, with no or a negative threshold, or an unknown rule.
    """
    q, v = sessions.model_terms(SwitchDR.name)
    grid = np.asarray(list(thresholds), dtype=np.float64)
    if grid.size == 0 or np.any(np.isnan(grid)) or np.any(grid < 0):
        raise UserError(f"switch thresholds: expected values >= 0, got {list(thresholds)}")
    if bias not in SWITCH_BIAS_RULES:
        raise UserError(f"switch bias rule: expected one of {SWITCH_BIAS_RULES}, got {bias!r}")
    n = sessions.n_sessions
    value_range = float(max(np.max(_returns(sessions)), np.max(q), np.max(v), 0.0))
    by_threshold = _SwitchPrefix(sessions)
    dr_terms = by_threshold.terms(np.inf)  # (S,) no switch: step-wise DR
    best: tuple[float, dict[str, float]] | None = None
    for tau in np.unique(grid):
        terms = by_threshold.terms(float(tau))
        variance = float(np.var(terms, ddof=1) / n) if n > 1 else 0.0
        mass = float(np.mean(by_threshold.mass(float(tau))))
        if bias == "bound":
            bias_sq = (mass * value_range) ** 2
        else:
            dropped = dr_terms - terms  # (S,) DR's corrections past each session's switch
            spread = float(np.var(dropped, ddof=1) / n) if n > 1 else 0.0
            bias_sq = max(float(np.mean(dropped)) ** 2 - spread, 0.0)
        mse = variance + bias_sq
        if not np.isfinite(mse):
            continue
        info = {
            "threshold": float(tau),
            "switched_mass": mass,
            "variance": variance,
            "bias": float(np.sqrt(bias_sq)),
            "mse": mse,
        }
        if best is None or mse < best[1]["mse"]:
            best = (float(tau), info)
    if best is None:  # every candidate's variance overflowed: fall back to DM
        nan = float("nan")
        return 0.0, {
            "threshold": 0.0,
            "switched_mass": 1.0,
            "variance": nan,
            "bias": nan,
            "mse": nan,
        }
    return best


@dataclass(frozen=True)
class SwitchDR(SessionEstimator):
    r"""SWITCH-DR (Wang, Agarwal & Dudik 2017) for sessions, switching per decision.

    Step-wise DR's recursion :math:`V_t = \hat v_t + \rho_t(r_t + \gamma V_{t+1} - \hat
    q_t)` keeps its importance correction only while the session's cumulative weight stays
    at or below :math:`\tau`; from the first step whose weight exceeds it, the rest of the
    session is the model's :math:`\hat v` of that step's state. Unrolled, it is DR with the
    switched weights of :func:`switched_weights`:
    :math:`\frac1n\sum_i\sum_t\gamma^t(\tilde w_{i,t}(r_{i,t}-\hat q_{i,t}) +
    \tilde w_{i,t-1}\hat v_{i,t})`. :math:`\tau = 0` is DM and :math:`\tau = \infty` is DR;
    the threshold is chosen on the data by :func:`switch_threshold` and held fixed across
    bootstrap resamples (as the Q-function is in :func:`estimate_session_value`).

    Attributes:
        thresholds: Candidate thresholds.
        bias: How a threshold's bias is priced (:data:`SWITCH_BIAS_RULES`).
    """

    name: ClassVar[str] = "switch"
    requires_model: ClassVar[bool] = True
    thresholds: tuple[float, ...] = SWITCH_THRESHOLDS
    bias: str = "estimate"

    def threshold(self, sessions: LoggedSessions) -> float:
        r"""The chosen :math:`\tau` on ``sessions``."""
        return switch_threshold(sessions, self.thresholds, self.bias)[0]

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        switched = switched_weights(sessions.weight, self.threshold(sessions))
        return _switch_terms(sessions, switched)[:, None]


def _unit_column(n_units: np.ndarray | float, rows: int) -> np.ndarray:
    """(B, 1) the number of sessions of each resample, :math:`W_{-1}` (scalar or (B,))."""
    return np.broadcast_to(np.asarray(n_units, dtype=np.float64).reshape(-1, 1), (rows, 1))


def j_step_returns(
    sums: np.ndarray,
    n_sessions: np.ndarray | float,
    horizon: int,
    discount: np.ndarray,
    steps: np.ndarray,
) -> np.ndarray:
    r"""(B, J) off-policy j-step returns from (B, 3H) weighted-DR column sums.

    ``n_sessions`` is the number of sessions the sums are over: a scalar, or (B,) when the
    resamples differ in size (the Q-refit bootstrap resamples groups of sessions).

    With per-step sums :math:`R_t = \sum_i w_{i,t}(r_{i,t} - \hat q_{i,t})`,
    :math:`C_t = \sum_i w_{i,t-1} \hat v_{i,t}`, :math:`W_t = \sum_i w_{i,t}`
    (:math:`W_{-1} = n`) and the weighted-DR step term :math:`d_t = R_t / W_t + C_t / W_{t-1}`:
    :math:`g^{(j)} = \sum_{t \le j} \gamma^t d_t + \gamma^{j+1} C_{j+1} / W_j` (the model's
    value of the states reached after step j, weighted like step j; :math:`C_H = 0`).
    """
    h = horizon
    residual, control, weight = sums[:, :h], sums[:, h : 2 * h], sums[:, 2 * h :]
    previous = np.hstack([_unit_column(n_sessions, len(sums)), weight[:, :-1]])
    per_step = (ratio(residual, weight, 0.0) + ratio(control, previous, 0.0)) * discount
    head = np.hstack([np.zeros((sums.shape[0], 1)), np.cumsum(per_step, axis=1)])  # (B, H+1)
    # Tail after step j: gamma^{j+1} C_{j+1} / W_j, i.e. the control term of step j + 1.
    control_next = np.hstack([ratio(control, previous, 0.0) * discount, np.zeros((len(sums), 1))])
    return head[:, steps + 1] + control_next[:, steps + 1]


def _simplex_quadratic_minimum(matrix: np.ndarray) -> np.ndarray:
    """The minimiser of x' M x over the probability simplex (M symmetric PSD), by SLSQP."""
    k = matrix.shape[0]
    scale = max(float(np.max(np.abs(matrix))), 1e-300)
    m = matrix / scale  # the minimiser does not change; SLSQP's tolerances do
    start = np.full(k, 1.0 / k)
    result = minimize(
        lambda x: float(x @ m @ x),
        start,
        jac=lambda x: 2.0 * (m @ x),
        bounds=[(0.0, 1.0)] * k,
        # The constraint's gradient given: SLSQP's finite differences of it cost more than
        # the rest of the solve (MAGIC re-solves this on every Q-refit resample).
        constraints=[
            {"type": "eq", "fun": lambda x: float(np.sum(x) - 1.0), "jac": lambda x: np.ones(k)}
        ],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    x = np.clip(result.x, 0.0, None)
    return x / x.sum() if x.sum() > 0 else start


def magic_weights(point: np.ndarray, resampled: np.ndarray, bias_interval: float) -> np.ndarray:
    r"""MAGIC's blend weights of the candidate j-step returns (the last one is WDR).

    Args:
        point: (J,) the candidate returns on the data.
        resampled: (B, J) the same on bootstrap resamples (non-finite rows are dropped).
        bias_interval: Level of WDR's percentile interval that bounds each return's bias.

    Returns:
        (J,) weights on the simplex minimising :math:`x^\top(\hat\Omega + \hat b \hat
        b^\top)x`; all on WDR when fewer than two resamples are finite.
    """
    resampled = resampled[np.all(np.isfinite(resampled), axis=1)]
    if len(resampled) < 2:
        weights = np.zeros(len(point))
        weights[-1] = 1.0
        return weights
    tail = 100.0 * (1.0 - bias_interval) / 2.0
    low, high = np.percentile(resampled[:, -1], [tail, 100.0 - tail])
    bias = np.maximum(low - point, 0.0) + np.maximum(point - high, 0.0)  # (J,)
    omega = np.cov(resampled, rowvar=False)  # (J, J)
    return _simplex_quadratic_minimum(omega + np.outer(bias, bias))


@dataclass(frozen=True)
class BlendedDR(SessionEstimator):
    r"""MAGIC (Thomas & Brunskill 2016): a data-chosen blend of DM, partial WDR and WDR.

    The off-policy j-step return :math:`g^{(j)}` uses weighted DR for steps :math:`\le j`
    and the fitted Q-function for the rest (:math:`g^{(-1)}` is DM, :math:`g^{(H-1)}` is
    WDR). Short j has little variance but the model's bias; long j is consistent but carries
    the importance weights' variance. The blend weights :math:`x` on the simplex minimise
    the estimated MSE :math:`x^\top(\hat\Omega + \hat b \hat b^\top)x`, where
    :math:`\hat\Omega` is the bootstrap covariance of the :math:`g^{(j)}` (resampled
    sessions) and :math:`\hat b_j` is the distance from :math:`g^{(j)}` to the percentile
    bootstrap interval (level ``bias_interval``) of WDR, the consistent end: a model value
    inside WDR's plausible range counts as unbiased. Everything comes from the logs; no
    ground truth is used.

    The blend weights are chosen once on all sessions and held fixed across the outer
    bootstrap resamples (as the Q-function is), so its interval is conditional on them.

    Attributes:
        steps: The j of the candidate returns (-1 = DM); the last step (WDR) is always added.
        n_bootstrap: Resamples for :math:`\hat\Omega` and WDR's interval.
        bias_interval: Level of WDR's percentile interval that bounds the bias. The paper's
            0.9: with the (unweighted) default Q-model it let MAGIC pull the farthest
            benchmark target's -13.8% DM bias to -11.7% on average; 0.99 (tried) keeps MAGIC
            on DM there (``docs/ope.md#magics-bias-interval``).
        seed: Seed of those resamples.
    """

    name: ClassVar[str] = "magic"
    requires_model: ClassVar[bool] = True
    steps: tuple[int, ...] = (-1, 0, 1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50)
    n_bootstrap: int = 200
    bias_interval: float = 0.9
    seed: int = 0

    def terms(self, sessions: LoggedSessions) -> np.ndarray:  # noqa: D102
        return WeightedDR().terms(sessions)

    def candidate_steps(self, sessions: LoggedSessions) -> np.ndarray:
        """(J,) the j of the candidate returns within this log's horizon, WDR's last."""
        h = sessions.horizon
        return np.unique(np.append([j for j in self.steps if -1 <= j < h - 1], h - 1))

    def blend(self, sessions: LoggedSessions) -> tuple[np.ndarray, np.ndarray]:
        """(J,) candidate steps and (J,) their blend weights, chosen on ``sessions``."""
        steps = self.candidate_steps(sessions)
        n = sessions.n_sessions
        terms = self.terms(sessions)
        g = partial(
            j_step_returns,
            n_sessions=n,
            horizon=sessions.horizon,
            discount=sessions.discount,
            steps=steps,
        )
        point = g(terms.sum(axis=0, keepdims=True))[0]  # (J,)
        resampled = g(
            bootstrap_column_sums(terms, self.n_bootstrap, np.random.default_rng(self.seed))
        )
        return steps, magic_weights(point, resampled, self.bias_interval)

    def combine(  # noqa: D102
        self, sums: np.ndarray, n_units: np.ndarray | int, data: LoggedSessions
    ) -> np.ndarray:
        steps, weights = self.blend(data)
        g = j_step_returns(sums, n_units, data.horizon, data.discount, steps)
        return g @ weights


def default_session_estimators(seed: int = 0) -> tuple[SessionEstimator, ...]:
    """The estimators of :data:`SESSION_ESTIMATOR_NAMES`, in that order.

    Args:
        seed: Seed of MAGIC's internal resamples.
    """
    return (
        TrajectoryIS(),
        WeightedIS(),
        PerDecisionIS(),
        WeightedPDIS(),
        DirectMethod(),
        StepwiseDR(),
        WeightedDR(),
        SwitchDR(),
        BlendedDR(seed=seed),
    )


def estimate_session_value(
    sessions: LoggedSessions,
    estimators: Sequence[SessionEstimator] | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile bootstrap of sessions (Q-model held fixed)",
) -> dict[str, Estimate]:
    """Estimate the target policy's expected (discounted) session return with every estimator.

    Bootstrap intervals resample whole sessions (the independent units), once for all
    estimators; the Q-function is held fixed across resamples.

    Args:
        sessions: Validated sessions from :func:`prepare_sessions`.
        estimators: Default: :func:`default_session_estimators`, without DM, DR and WDR when
            ``sessions`` has no Q-function.
        n_bootstrap: Resamples; 0 gives point estimates with NaN intervals.
        confidence: Interval level in (0, 1).
        seed: Seed of the resampling.
        method: The interval method in words, recorded on every estimate. Intervals that
            include the Q-model's own error come from
            :func:`rlrec.evaluation.ope.refit_bootstrap.refit_bootstrap`.

    Returns:
        Estimates keyed by estimator name, in the given order.

    Raises:
        UserError: For a bad ``n_bootstrap`` or ``confidence``, or duplicate names.
    """
    if estimators is None:
        estimators = [
            e
            for e in default_session_estimators(seed)
            if sessions.has_q_function or not e.requires_model
        ]
    return estimate_values(
        sessions,
        estimators,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        method=method,
    )


def effective_sample_size(sessions: LoggedSessions) -> float:
    """Kish's effective number of sessions of the trajectory weights, ``(sum w)^2 / sum w^2``."""
    w = sessions.weight[:, -1]
    denom = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / denom) if denom > 0 else 0.0
