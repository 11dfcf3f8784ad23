r"""Off-policy evaluation of bandit (slate-position) policies from logged feedback.

Notation follows Open Bandit Pipeline (OBP): in round :math:`i` the behaviour policy showed
action :math:`a_i` at position :math:`k_i` with propensity :math:`\pi_b(a_i \mid x_i, k_i)`
(``pscore``) and observed reward :math:`r_i`. The evaluation policy is given by its action
distribution :math:`\pi_e(a \mid x_i, k)` (``action_dist``, shape (n_rounds, n_actions,
len_list), or (1, n_actions, len_list) for a context-free policy), and a reward model by
:math:`\hat q(x_i, a, k)` (``estimated_rewards_by_reg_model``, same shape with n_rounds rows).
With :math:`w_i = \pi_e(a_i \mid x_i, k_i) / \pi_b(a_i \mid x_i, k_i)` and
:math:`\hat q_\pi(x_i, k_i) = \sum_a \pi_e(a \mid x_i, k_i)\, \hat q(x_i, a, k_i)`:

=========  ==========================================================================
``dm``     :math:`\frac1n\sum_i \hat q_\pi(x_i,k_i)`
``ipw``    :math:`\frac1n\sum_i w_i r_i`
``snipw``  :math:`\sum_i w_i r_i / \sum_i w_i`
``dr``     :math:`\frac1n\sum_i \hat q_\pi(x_i,k_i) + w_i (r_i - \hat q(x_i,a_i,k_i))`
``sndr``   :math:`\frac1n\sum_i \hat q_\pi(x_i,k_i) + \sum_i w_i (r_i - \hat q_i) / \sum_i w_i`
``switch-dr``  DR with the correction kept only where :math:`w_i \le \lambda` (default 100)
``dr-os``  DR with :math:`w_i` shrunk to :math:`\lambda w_i / (w_i^2 + \lambda)` (default 10000)
=========  ==========================================================================

These are exactly OBP 0.5.7's definitions, so that given the same action distribution and
reward model the values agree (tested for IPW and SNIPW against OBP's own output).

Every estimator is a small frozen dataclass (an :class:`~rlrec.evaluation.ope.base.Estimator`)
that turns the validated per-round quantities (:class:`LoggedRounds`) into a few per-round
*terms* (columns) and *combines* their sums into the estimate. Because every estimate is a
function of column sums, the bootstrap needs only resampled column sums:
:func:`~rlrec.evaluation.ope.bootstrap.bootstrap_column_sums` draws the resamples once (as
count vectors, in chunks) and multiplies them with the stacked columns of all estimators,
which is what makes 200 resamples of a million rounds take seconds. Self-normalised
estimators recompute their normaliser inside every resample (OBP reuses the full-sample one).

Sequential (session) estimators (:mod:`rlrec.evaluation.ope.sequential`) share the same
base, ratio helper and bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from rlrec.errors import UserError
from rlrec.evaluation.ope.base import Estimate, Estimator, ratio
from rlrec.evaluation.ope.bootstrap import estimate_values

__all__ = [
    "ESTIMATOR_NAMES",
    "BanditEstimator",
    "DirectMethod",
    "DoublyRobust",
    "DoublyRobustWithShrinkage",
    "InverseProbabilityWeighting",
    "LoggedRounds",
    "SelfNormalizedDR",
    "SelfNormalizedIPW",
    "SwitchDoublyRobust",
    "default_estimators",
    "estimate_policy_value",
    "prepare_rounds",
    "validate_bandit_inputs",
]

ESTIMATOR_NAMES = ("dm", "ipw", "snipw", "dr", "sndr", "switch-dr", "dr-os")
"""The default estimators, in report order (the JSON contract's keys)."""

_SUM_TOL = 1e-6
"""Tolerance on action distributions summing to 1 (float32 inputs carry ~1e-7 error)."""


@dataclass(frozen=True)
class LoggedRounds:
    r"""The per-round quantities every bandit estimator is a function of.

    Build it with :func:`prepare_rounds`, which validates the raw arrays.

    Attributes:
        reward: (n_rounds,) float64 observed rewards :math:`r_i`.
        importance_weight: (n_rounds,) float64 :math:`w_i = \pi_e / \pi_b` at the logged
            action and position.
        q_hat_factual: (n_rounds,) float64 :math:`\hat q(x_i, a_i, k_i)`, or None without a
            reward model.
        q_hat_policy: (n_rounds,) float64 :math:`\hat q_\pi(x_i, k_i)`, or None.
    """

    reward: np.ndarray
    importance_weight: np.ndarray
    q_hat_factual: np.ndarray | None = None
    q_hat_policy: np.ndarray | None = None

    @property
    def n_rounds(self) -> int:
        """Number of logged rounds."""
        return int(self.reward.shape[0])

    @property
    def n_units(self) -> int:
        """The bootstrap's units: the logged rounds."""
        return self.n_rounds

    @property
    def has_reward_model(self) -> bool:
        """Whether reward-model quantities are present (needed by DM and the DR family)."""
        return self.q_hat_factual is not None and self.q_hat_policy is not None

    def model_terms(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(q_hat_factual, q_hat_policy), or a UserError naming the estimator that needs them."""
        if self.q_hat_factual is None or self.q_hat_policy is None:
            raise UserError(
                f"estimator {name} needs estimated_rewards_by_reg_model; fit a reward model "
                "(rlrec.evaluation.ope.reward_model) and pass its predictions"
            )
        return self.q_hat_factual, self.q_hat_policy


def validate_bandit_inputs(
    *,
    reward: np.ndarray,
    action: np.ndarray,
    pscore: np.ndarray,
    action_dist: np.ndarray,
    position: np.ndarray | None = None,
    estimated_rewards_by_reg_model: np.ndarray | None = None,
) -> None:
    """Check the shapes, ranges and normalisation of logged arrays and policies.

    Args:
        reward: (n_rounds,) finite rewards.
        action: (n_rounds,) integer actions in ``[0, n_actions)``.
        pscore: (n_rounds,) behaviour propensities in (0, 1].
        action_dist: (n_rounds or 1, n_actions, len_list) evaluation-policy probabilities,
            non-negative, summing to 1 over actions for every round and position.
        position: (n_rounds,) integer positions in ``[0, len_list)``; None means all 0.
        estimated_rewards_by_reg_model: (n_rounds, n_actions, len_list) finite, or None.

    Raises:
        UserError: One line naming the array, what was expected and what was found.
    """
    arrays = {"reward": reward, "action": action, "pscore": pscore}
    if position is not None:
        arrays["position"] = position
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            raise UserError(f"{name}: expected a numpy array, got {type(arr).__name__}")
        if arr.ndim != 1:
            raise UserError(f"{name}: expected a 1-D array of shape (n_rounds,), got {arr.shape}")
    n = reward.shape[0]
    if n == 0:
        raise UserError("reward: the log is empty (0 rounds); pass at least one logged round")
    for name, arr in arrays.items():
        if arr.shape[0] != n:
            raise UserError(
                f"{name}: has {arr.shape[0]} rounds but reward has {n}; all logged arrays "
                "must have the same length"
            )
    if not isinstance(action_dist, np.ndarray) or action_dist.ndim != 3:
        shape = getattr(action_dist, "shape", None)
        raise UserError(f"action_dist: expected shape (n_rounds, n_actions, len_list), got {shape}")
    if action_dist.shape[0] not in (1, n):
        raise UserError(
            f"action_dist: has {action_dist.shape[0]} rounds, expected {n} (one per logged "
            "round) or 1 (a context-free policy)"
        )
    _, n_actions, len_list = action_dist.shape
    if not np.issubdtype(action.dtype, np.integer):
        raise UserError(f"action: expected integers, got dtype {action.dtype}")
    if action.min() < 0 or action.max() >= n_actions:
        raise UserError(
            f"action: values must lie in [0, {n_actions}) (action_dist has {n_actions} "
            f"actions), found {action.min()}..{action.max()}"
        )
    if position is not None:
        if not np.issubdtype(position.dtype, np.integer):
            raise UserError(f"position: expected integers, got dtype {position.dtype}")
        if position.min() < 0 or position.max() >= len_list:
            raise UserError(
                f"position: values must lie in [0, {len_list}) (action_dist has {len_list} "
                f"positions), found {position.min()}..{position.max()}"
            )
    elif len_list != 1:
        raise UserError(
            f"position: required because action_dist has len_list = {len_list} positions"
        )
    if not np.all(np.isfinite(reward)):
        raise UserError("reward: contains NaN or infinite values")
    if not (np.all(pscore > 0) and np.all(pscore <= 1)):
        bad = int(np.flatnonzero(~((pscore > 0) & (pscore <= 1)))[0])
        raise UserError(
            f"pscore: propensities must lie in (0, 1], found {pscore[bad]!r} at round {bad}"
        )
    # Sums are accumulated in float64 without an (n, n_actions, len_list) temporary (einsum
    # casts through small buffers, and is ~3x faster here than ``sum(axis=1, dtype=...)``);
    # a NaN or inf anywhere makes its sum non-finite, so checking the sums covers finiteness.
    sums = np.einsum("nal->nl", action_dist, dtype=np.float64)  # (n or 1, len_list)
    if not np.all(np.isfinite(sums)) or action_dist.min() < 0:
        raise UserError("action_dist: probabilities must be finite and non-negative")
    off = np.abs(sums - 1.0)
    if off.max() > _SUM_TOL:
        row, pos = np.unravel_index(int(np.argmax(off)), off.shape)
        raise UserError(
            f"action_dist: probabilities over actions must sum to 1 for every round and "
            f"position, round {row} position {pos} sums to {sums[row, pos]:.6g}"
        )
    if estimated_rewards_by_reg_model is not None:
        q = estimated_rewards_by_reg_model
        if not isinstance(q, np.ndarray) or q.shape != (n, n_actions, len_list):
            raise UserError(
                f"estimated_rewards_by_reg_model: expected shape {(n, n_actions, len_list)} "
                f"(n_rounds, n_actions, len_list), got {getattr(q, 'shape', None)}"
            )
        if not np.isfinite(q.sum(dtype=np.float64)):
            raise UserError("estimated_rewards_by_reg_model: contains NaN or infinite values")


def prepare_rounds(
    *,
    reward: np.ndarray,
    action: np.ndarray,
    pscore: np.ndarray,
    action_dist: np.ndarray,
    position: np.ndarray | None = None,
    estimated_rewards_by_reg_model: np.ndarray | None = None,
    chunk_rounds: int = 65536,
) -> LoggedRounds:
    """Validate logged arrays and compute the per-round quantities of all estimators.

    Args:
        reward: (n_rounds,) observed rewards.
        action: (n_rounds,) logged actions.
        pscore: (n_rounds,) behaviour propensities of the logged (action, position).
        action_dist: (n_rounds or 1, n_actions, len_list) evaluation policy; float32 is
            accepted as is (a million rounds x 80 actions x 3 positions is 1 GB in float32).
        position: (n_rounds,) logged positions; None for single-slot logs.
        estimated_rewards_by_reg_model: (n_rounds, n_actions, len_list) reward model, or None.
        chunk_rounds: Rounds per chunk when reducing over actions (bounds temporaries).

    Returns:
        The validated per-round quantities.

    Raises:
        UserError: See :func:`validate_bandit_inputs`.
    """
    validate_bandit_inputs(
        reward=reward,
        action=action,
        pscore=pscore,
        action_dist=action_dist,
        position=position,
        estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
    )
    n = reward.shape[0]
    pos = np.zeros(n, dtype=np.int64) if position is None else position.astype(np.int64)
    act = action.astype(np.int64)
    rows = np.arange(n) if action_dist.shape[0] == n else np.zeros(n, dtype=np.int64)
    pi_factual = action_dist[rows, act, pos].astype(np.float64)  # (n,)
    importance_weight = pi_factual / pscore.astype(np.float64)
    q_factual = q_policy = None
    q = estimated_rewards_by_reg_model
    if q is not None:
        q_factual = q[np.arange(n), act, pos].astype(np.float64)  # (n,)
        q_policy = np.empty(n, dtype=np.float64)
        for start in range(0, n, chunk_rounds):
            stop = min(n, start + chunk_rounds)
            idx = np.arange(start, stop)
            q_at = q[idx, :, pos[idx]].astype(np.float64)  # (chunk, n_actions)
            pi_at = action_dist[rows[idx], :, pos[idx]].astype(np.float64)  # (chunk, n_actions)
            q_policy[start:stop] = np.einsum("ij,ij->i", pi_at, q_at)
    return LoggedRounds(
        reward=reward.astype(np.float64),
        importance_weight=importance_weight,
        q_hat_factual=q_factual,
        q_hat_policy=q_policy,
    )


@dataclass(frozen=True)
class BanditEstimator(Estimator[LoggedRounds]):
    """Base of the bandit estimators: :class:`~rlrec.evaluation.ope.base.Estimator` on rounds.

    ``requires_model`` marks estimators that read the reward model (DM, DR family);
    :func:`estimate_policy_value` skips them by default when there is none.
    """


@dataclass(frozen=True)
class DirectMethod(BanditEstimator):
    """DM: the reward model's value of the evaluation policy, averaged over logged contexts."""

    name: ClassVar[str] = "dm"
    requires_model: ClassVar[bool] = True

    def terms(self, rounds: LoggedRounds) -> np.ndarray:  # noqa: D102
        _, q_policy = rounds.model_terms(self.name)
        return q_policy[:, None]


@dataclass(frozen=True)
class InverseProbabilityWeighting(BanditEstimator):
    """IPW (IPS): the importance-weighted mean reward; unbiased, high variance."""

    name: ClassVar[str] = "ipw"

    def terms(self, rounds: LoggedRounds) -> np.ndarray:  # noqa: D102
        return (rounds.importance_weight * rounds.reward)[:, None]


@dataclass(frozen=True)
class SelfNormalizedIPW(BanditEstimator):
    """SNIPW: IPW divided by the mean weight; bounded by the rewards, slightly biased."""

    name: ClassVar[str] = "snipw"

    def terms(self, rounds: LoggedRounds) -> np.ndarray:  # noqa: D102
        w = rounds.importance_weight
        return np.column_stack([w * rounds.reward, w])

    def combine(  # noqa: D102
        self, sums: np.ndarray, n_units: np.ndarray | int, data: LoggedRounds
    ) -> np.ndarray:
        return ratio(sums[:, 0], sums[:, 1])


@dataclass(frozen=True)
class DoublyRobust(BanditEstimator):
    """DR: DM plus the importance-weighted residual of the reward model."""

    name: ClassVar[str] = "dr"
    requires_model: ClassVar[bool] = True

    def _weight(self, w: np.ndarray) -> np.ndarray:
        return w

    def terms(self, rounds: LoggedRounds) -> np.ndarray:  # noqa: D102
        q_factual, q_policy = rounds.model_terms(self.name)
        residual = rounds.reward - q_factual
        return (q_policy + self._weight(rounds.importance_weight) * residual)[:, None]


@dataclass(frozen=True)
class SelfNormalizedDR(BanditEstimator):
    """SNDR: DR whose residual correction is normalised by the sum of the weights."""

    name: ClassVar[str] = "sndr"
    requires_model: ClassVar[bool] = True

    def terms(self, rounds: LoggedRounds) -> np.ndarray:  # noqa: D102
        q_factual, q_policy = rounds.model_terms(self.name)
        w = rounds.importance_weight
        return np.column_stack([q_policy, w * (rounds.reward - q_factual), w])

    def combine(  # noqa: D102
        self, sums: np.ndarray, n_units: np.ndarray | int, data: LoggedRounds
    ) -> np.ndarray:
        return ratio(sums[:, 0], n_units) + ratio(sums[:, 1], sums[:, 2])


@dataclass(frozen=True)
class SwitchDoublyRobust(DoublyRobust):
    """Switch-DR: DR that drops the correction of rounds whose weight exceeds ``lambda_``.

    Attributes:
        lambda_: Weight threshold (OBP's benchmark uses 100); ``inf`` gives DR, 0 gives DM.
    """

    name: ClassVar[str] = "switch-dr"
    lambda_: float = 100.0

    def __post_init__(self) -> None:
        if not self.lambda_ >= 0:
            raise UserError(f"switch-dr: lambda must be >= 0, got {self.lambda_}")

    def _weight(self, w: np.ndarray) -> np.ndarray:
        return np.where(w <= self.lambda_, w, 0.0)


@dataclass(frozen=True)
class DoublyRobustWithShrinkage(DoublyRobust):
    """DR-OS: DR with optimistically shrunk weights ``lambda w / (w^2 + lambda)``.

    Attributes:
        lambda_: Shrinkage strength (OBP's benchmark uses 10000); ``inf`` gives DR, 0 gives DM.
    """

    name: ClassVar[str] = "dr-os"
    lambda_: float = 10000.0

    def __post_init__(self) -> None:
        if not self.lambda_ >= 0:
            raise UserError(f"dr-os: lambda must be >= 0, got {self.lambda_}")

    def _weight(self, w: np.ndarray) -> np.ndarray:
        if np.isinf(self.lambda_):
            return w
        if self.lambda_ == 0:
            return np.zeros_like(w)
        return self.lambda_ * w / (w**2 + self.lambda_)


def default_estimators(
    switch_lambda: float = 100.0, os_lambda: float = 10000.0
) -> tuple[BanditEstimator, ...]:
    """The seven estimators of :data:`ESTIMATOR_NAMES` with OBP's benchmark thresholds."""
    return (
        DirectMethod(),
        InverseProbabilityWeighting(),
        SelfNormalizedIPW(),
        DoublyRobust(),
        SelfNormalizedDR(),
        SwitchDoublyRobust(lambda_=switch_lambda),
        DoublyRobustWithShrinkage(lambda_=os_lambda),
    )


def estimate_policy_value(
    rounds: LoggedRounds,
    estimators: Sequence[BanditEstimator] | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Estimate the evaluation policy's value with every estimator, with bootstrap intervals.

    All estimators share the same resamples (one draw for all), so their intervals are
    comparable and the cost is paid once. The reward model is held fixed across resamples,
    as in OBP.

    Args:
        rounds: Validated per-round quantities from :func:`prepare_rounds`.
        estimators: Default: :func:`default_estimators`; DM and the DR family are skipped
            when ``rounds`` has no reward model.
        n_bootstrap: Bootstrap resamples; 0 gives point estimates with NaN intervals.
        confidence: Interval level in (0, 1).
        seed: Seed of the resampling; the same seed gives the same intervals.

    Returns:
        Estimates keyed by estimator name, in the given order.

    Raises:
        UserError: For a bad ``n_bootstrap`` or ``confidence``, or duplicate names.
    """
    if estimators is None:
        estimators = [
            e for e in default_estimators() if rounds.has_reward_model or not e.requires_model
        ]
    return estimate_values(
        rounds, estimators, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
    )
