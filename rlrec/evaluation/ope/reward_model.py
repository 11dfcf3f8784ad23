r"""Cross-fitted logistic reward models for DM and the doubly robust estimators.

The model predicts the click probability :math:`\hat q(x, a, k)` of round context ``x``,
action ``a`` and position ``k`` with an L2-regularised logistic regression whose logit is a
sum of feature *blocks*::

    logit = b + context_i . beta_c + item_a . beta_a + beta_pos[k] + beta_item_pos[a, k]
            + theta . affinity[i, a]

Every block depends on the round, the action or the position alone (or on one pair), so
predictions for all (n_rounds, n_actions, len_list) combinations are a broadcast sum of small
arrays instead of a design matrix per action.

Cross-fitting: the rounds are split into K folds (stratified by reward, seeded); the model
that predicts a round's rewards never saw that round, which keeps the DR family's residuals
honest. Model selection (which blocks, how much L2) minimises the K-fold cross-validated
log-loss on the logged rounds only; nothing looks at any evaluation policy or ground truth.

The logistic regression is fitted with SciPy's optimizers (Newton-CG, L-BFGS for wide
designs; intercept unpenalised) so that the project needs no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from scipy.special import expit

from rlrec.data.bandit import BanditFeedback
from rlrec.errors import UserError

__all__ = [
    "DEFAULT_CANDIDATES",
    "NEWTON_MAX_DIM",
    "LogisticModel",
    "RewardFeatures",
    "RewardModelConfig",
    "RewardModelFit",
    "cross_fit_reward_model",
    "cross_predict",
    "design_matrix",
    "fit_logistic_regression",
    "fit_reward_model",
    "log_loss",
    "predict_all",
    "stratified_folds",
]

NEWTON_MAX_DIM = 2000
"""Widest design fitted by Newton's method; wider ones use L-BFGS."""


@dataclass(frozen=True)
class RewardFeatures:
    """Which feature blocks the logistic reward model uses.

    Attributes:
        context: Round (user) features, ``feedback.context``.
        action: ``onehot`` (one weight per item), ``features`` (the item context), or
            ``none``.
        position: One weight per position.
        action_position: One weight per (item, position) pair.
        affinity: User-item features ``feedback.affinity[i, a]``.
    """

    context: bool = False
    action: Literal["none", "onehot", "features"] = "none"
    position: bool = False
    action_position: bool = False
    affinity: bool = False

    def describe(self) -> str:
        """A short label such as ``context+item-onehot+position``."""
        parts = []
        if self.context:
            parts.append("context")
        if self.action != "none":
            parts.append(f"item-{self.action}")
        if self.position:
            parts.append("position")
        if self.action_position:
            parts.append("item-x-position")
        if self.affinity:
            parts.append("affinity")
        return "+".join(parts) or "intercept"

    def missing_inputs(self, feedback: BanditFeedback) -> list[str]:
        """Inputs these features need that ``feedback`` lacks."""
        missing = []
        if self.context and feedback.context.shape[1] == 0:
            missing.append("context")
        if self.action == "features" and feedback.action_context is None:
            missing.append("action_context (--item-context)")
        if self.affinity and feedback.affinity is None:
            missing.append("affinity")
        return missing


DEFAULT_CANDIDATES: tuple[RewardFeatures, ...] = (
    RewardFeatures(),
    RewardFeatures(position=True),
    RewardFeatures(action="onehot", position=True),
    RewardFeatures(action="features", position=True),
    RewardFeatures(context=True, action="features", position=True, affinity=True),
    RewardFeatures(context=True, action="onehot", position=True, affinity=True),
    RewardFeatures(context=True, action_position=True, affinity=True),
)
"""Feature sets tried by default, from the constant model up to item-by-position effects."""


@dataclass(frozen=True)
class RewardModelConfig:
    """Settings of the cross-fitted reward model.

    Attributes:
        n_folds: Cross-fitting folds K (1 fits and predicts on all rounds: no cross-fitting).
        l2_grid: Candidate L2 penalties (on the summed log-loss); the CV picks one.
        candidates: Candidate feature sets; None means :data:`DEFAULT_CANDIDATES`. Sets whose
            inputs the log lacks are skipped.
        max_iter: Newton (or L-BFGS) iterations per fit.
    """

    n_folds: int = 5
    l2_grid: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    candidates: tuple[RewardFeatures, ...] | None = None
    max_iter: int = 100

    def __post_init__(self) -> None:
        if self.n_folds < 1:
            raise ValueError(f"n_folds must be >= 1, got {self.n_folds}")
        if not self.l2_grid or min(self.l2_grid) < 0:
            raise ValueError(f"l2_grid must be non-empty and >= 0, got {self.l2_grid}")


@dataclass(frozen=True)
class LogisticModel:
    """A fitted logistic regression over the blocks of ``features``.

    Attributes:
        features: The blocks used.
        coef: (dim,) weights, in the order of :func:`design_matrix`'s columns.
        intercept: The unpenalised bias.
        l2: The penalty it was fitted with.
    """

    features: RewardFeatures
    coef: np.ndarray
    intercept: float
    l2: float


@dataclass(frozen=True)
class RewardModelFit:
    """A cross-fitted reward model's predictions and how it was chosen.

    Attributes:
        estimated_rewards: (n_rounds, n_actions, len_list) float64 out-of-fold predictions.
        features: The selected feature set.
        l2: The selected penalty.
        cv_log_loss: Mean out-of-fold log-loss of the selected model on the logged rounds.
        n_folds: K.
        table: Every candidate tried: (features label, l2, CV log-loss).
    """

    estimated_rewards: np.ndarray
    features: RewardFeatures
    l2: float
    cv_log_loss: float
    n_folds: int
    table: tuple[tuple[str, float, float], ...] = field(default=())

    def summary(self) -> dict[str, object]:
        """JSON-friendly description (no arrays)."""
        return {
            "model": "logistic",
            "features": self.features.describe(),
            "l2": self.l2,
            "n_folds": self.n_folds,
            "cv_log_loss": self.cv_log_loss,
            "candidates": [
                {"features": f, "l2": l2, "cv_log_loss": loss} for f, l2, loss in self.table
            ],
        }


def design_matrix(
    feedback: BanditFeedback, features: RewardFeatures, rows: np.ndarray
) -> sparse.csr_matrix:
    """Features of the logged (round, action, position) triples of ``rows``.

    Sparse, because most blocks are one-hot: with item-by-position effects a row has
    ~30 non-zeros out of ~270 columns, and L-BFGS's products cost the non-zeros only.

    Args:
        feedback: The log.
        features: Which blocks to build.
        rows: (m,) round indices.

    Returns:
        (m, dim) float64 CSR design matrix (no intercept column).
    """
    action = feedback.action[rows]
    position = feedback.position[rows]
    m = rows.shape[0]
    blocks: list[sparse.csr_matrix] = []
    if features.context:
        blocks.append(sparse.csr_matrix(feedback.context[rows]))
    if features.action == "onehot":
        blocks.append(_one_hot(action, feedback.n_actions))
    elif features.action == "features":
        assert feedback.action_context is not None
        blocks.append(sparse.csr_matrix(feedback.action_context[action]))
    if features.position:
        blocks.append(_one_hot(position, feedback.len_list))
    if features.action_position:
        n_pairs = feedback.n_actions * feedback.len_list
        blocks.append(_one_hot(action * feedback.len_list + position, n_pairs))
    if features.affinity:
        assert feedback.affinity is not None
        blocks.append(sparse.csr_matrix(feedback.affinity[rows, action][:, None]))
    if not blocks:
        return sparse.csr_matrix((m, 0), dtype=np.float64)
    return sparse.hstack(blocks, format="csr", dtype=np.float64)


def fit_logistic_regression(
    x: np.ndarray | sparse.csr_matrix,
    y: np.ndarray,
    l2: float,
    max_iter: int = 100,
    init: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (L-BFGS for wide designs).

    Minimises ``sum_i logloss(y_i, sigmoid(x_i . w + b)) + l2 / 2 * |w|^2``; the intercept
    ``b`` is not penalised. Labels may be fractional in [0, 1]. Reward-model designs are
    narrow (a few hundred mostly one-hot columns), where SciPy's Newton-CG (Newton steps
    solved by conjugate gradients on Hessian-vector products, with a line search) converges
    in a few steps to machine precision; past :data:`NEWTON_MAX_DIM` columns L-BFGS is used
    instead.

    Args:
        x: (n, d) features, dense or CSR.
        y: (n,) labels in [0, 1].
        l2: Penalty (>= 0).
        max_iter: Iteration limit (Newton steps or L-BFGS iterations).
        init: Warm start (w, b), e.g. the solution for a neighbouring penalty.

    Returns:
        (w (d,), b).
    """
    n, d = x.shape
    mean = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta = np.zeros(d + 1)
    theta[-1] = np.log(mean / (1 - mean))  # start at the base rate: the optimum for w = 0
    if init is not None:
        theta[:-1], theta[-1] = init
    xb = sparse.hstack([sparse.csr_matrix(x), np.ones((n, 1))], format="csr")  # (n, d + 1)
    penalty = np.full(d + 1, float(l2))
    penalty[-1] = 0.0

    def objective(t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        z = np.asarray(xb @ t).ravel()  # (n,)
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * t * t))
        p = expit(z)  # (n,)
        grad = np.asarray(xb.T @ (p - y)).ravel() + penalty * t  # (d + 1,)
        return loss, grad, p

    if d > NEWTON_MAX_DIM:
        result = minimize(
            lambda t: objective(t)[:2],
            theta,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": 1e-8, "ftol": 1e-14},
        )
        return result.x[:-1].copy(), float(result.x[-1])

    # Newton-CG needs only Hessian-vector products: sparse mat-vecs, never a dense
    # factorisation (which, under a contended multi-threaded BLAS, cost 10-30 ms each for a
    # 266-column design). The IRLS weights p (1 - p) of the last point are reused by every
    # product at that point.
    last: dict[str, np.ndarray] = {}

    def irls_weights(t: np.ndarray) -> np.ndarray:
        if "theta" not in last or not np.array_equal(last["theta"], t):
            p = expit(np.asarray(xb @ t).ravel())  # (n,)
            last["theta"], last["weights"] = t.copy(), p * (1.0 - p)
        return last["weights"]

    def hessp(t: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.asarray(xb.T @ (irls_weights(t) * (xb @ v))).ravel() + penalty * v

    # At the optimum the line search may stop on rounding ("precision loss"): the point is
    # then as good as float64 allows, so the result is used whatever the status.
    result = minimize(
        lambda t: objective(t)[:2],
        theta,
        jac=True,
        hessp=hessp,
        method="Newton-CG",
        options={"maxiter": max_iter, "xtol": 1e-12},
    )
    return result.x[:-1].copy(), float(result.x[-1])


def fit_reward_model(
    feedback: BanditFeedback,
    features: RewardFeatures,
    l2: float,
    rows: np.ndarray,
    max_iter: int = 100,
    init: LogisticModel | None = None,
) -> LogisticModel:
    """Fit the logistic reward model on the logged rounds ``rows`` (optionally warm-started)."""
    x = design_matrix(feedback, features, rows)
    start = (init.coef, init.intercept) if init is not None else None
    coef, intercept = fit_logistic_regression(x, feedback.reward[rows], l2, max_iter, start)
    return LogisticModel(features=features, coef=coef, intercept=intercept, l2=l2)


def predict_all(model: LogisticModel, feedback: BanditFeedback, rows: np.ndarray) -> np.ndarray:
    """Predicted reward of every action at every position for the rounds ``rows``.

    Args:
        model: A fitted model.
        feedback: The log (for contexts, item features, affinities).
        rows: (m,) round indices.

    Returns:
        (m, n_actions, len_list) float64 probabilities.
    """
    f = model.features
    n_actions, len_list = feedback.n_actions, feedback.len_list
    m = rows.shape[0]
    logit = np.full((m, n_actions, len_list), model.intercept)  # (m, A, L)
    coef = model.coef
    at = 0
    if f.context:
        d = feedback.context.shape[1]
        logit += (feedback.context[rows] @ coef[at : at + d])[:, None, None]
        at += d
    if f.action == "onehot":
        logit += coef[at : at + n_actions][None, :, None]
        at += n_actions
    elif f.action == "features":
        assert feedback.action_context is not None
        d = feedback.action_context.shape[1]
        logit += (feedback.action_context @ coef[at : at + d])[None, :, None]
        at += d
    if f.position:
        logit += coef[at : at + len_list][None, None, :]
        at += len_list
    if f.action_position:
        logit += coef[at : at + n_actions * len_list].reshape(n_actions, len_list)[None]
        at += n_actions * len_list
    if f.affinity:
        assert feedback.affinity is not None
        logit += (coef[at] * feedback.affinity[rows])[:, :, None]
        at += 1
    if at != coef.shape[0]:
        raise ValueError(f"model has {coef.shape[0]} weights but its features use {at}")
    return expit(logit)


def stratified_folds(reward: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of every round: a seeded shuffle dealt round-robin within each reward value.

    Clicks are rare (about 40 in 10,000 OBD rounds); dealing them evenly keeps every fold's
    model from being fitted on almost no positives.

    Returns:
        (n_rounds,) int64 fold indices in ``[0, n_folds)``.
    """
    rng = np.random.default_rng(seed)
    folds = np.empty(reward.shape[0], dtype=np.int64)
    offset = 0
    for value in np.unique(reward):
        idx = rng.permutation(np.flatnonzero(reward == value))
        folds[idx] = (np.arange(idx.shape[0]) + offset) % n_folds
        offset += idx.shape[0]
    return folds


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy, with probabilities clipped to [1e-12, 1 - 1e-12]."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def cross_fit_reward_model(
    feedback: BanditFeedback,
    config: RewardModelConfig | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RewardModelFit:
    """Select and cross-fit the logistic reward model on logged feedback.

    For every candidate feature set and L2 penalty, the K fold models are fitted and scored
    by their out-of-fold log-loss on the logged (round, action, position) triples; the best
    pair's fold models then predict every action and position of their held-out rounds.

    Args:
        feedback: The log; rewards must lie in [0, 1].
        config: Folds, penalties and candidates; default :class:`RewardModelConfig`.
        seed: Seed of the fold assignment.
        progress: Called as ``progress(done, total)`` after every fitted candidate (for a
            progress bar); the final cross-fit counts as one more.

    Returns:
        The out-of-fold predictions, (n_rounds, n_actions, len_list), and the selection.

    Raises:
        UserError: If rewards fall outside [0, 1], no candidate is usable, or there are
            fewer rounds than folds.
    """
    config = config or RewardModelConfig()
    reward = feedback.reward
    if reward.min() < 0 or reward.max() > 1:
        raise UserError(
            f"{feedback.source}: the logistic reward model needs rewards in [0, 1], found "
            f"{reward.min():g}..{reward.max():g}"
        )
    if feedback.n_rounds < config.n_folds:
        raise UserError(
            f"{feedback.source}: {feedback.n_rounds} rounds cannot be split into "
            f"{config.n_folds} folds; use fewer folds"
        )
    candidates = config.candidates if config.candidates is not None else DEFAULT_CANDIDATES
    usable = [c for c in candidates if not c.missing_inputs(feedback)]
    if not usable:
        need = ", ".join(sorted({m for c in candidates for m in c.missing_inputs(feedback)}))
        raise UserError(f"{feedback.source}: no reward-model feature set is usable; missing {need}")
    folds = stratified_folds(reward, config.n_folds, seed)
    splits = _splits(folds, config.n_folds)

    table: list[tuple[str, float, float]] = []
    best: tuple[float, RewardFeatures, float] | None = None
    grids = {
        # The intercept-only model has no weights to penalise; the others go from the
        # strongest penalty down, each fold warm-started from the previous solution.
        features: [0.0] if features == RewardFeatures() else sorted(config.l2_grid, reverse=True)
        for features in usable
    }
    total = sum(len(g) for g in grids.values()) + 1
    for features, grid in grids.items():
        previous: list[LogisticModel | None] = [None] * len(splits)
        for l2 in grid:
            oof = np.empty(feedback.n_rounds)
            for k, (train, test) in enumerate(splits):
                model = fit_reward_model(
                    feedback, features, l2, train, config.max_iter, previous[k]
                )
                previous[k] = model
                x = design_matrix(feedback, features, test)
                oof[test] = expit(np.asarray(x @ model.coef).ravel() + model.intercept)
            loss = log_loss(reward, oof)
            table.append((features.describe(), float(l2), loss))
            # Strict improvement only: ties go to the simpler model listed first.
            if best is None or loss < best[0] - 1e-12:
                best = (loss, features, float(l2))
            if progress is not None:
                progress(len(table), total)
    assert best is not None
    loss, features, l2 = best
    predictions = _cross_predict(feedback, features, l2, splits, config.max_iter)
    if progress is not None:
        progress(total, total)
    return RewardModelFit(
        estimated_rewards=predictions,
        features=features,
        l2=l2,
        cv_log_loss=loss,
        n_folds=config.n_folds,
        table=tuple(table),
    )


def cross_predict(
    feedback: BanditFeedback,
    features: RewardFeatures,
    l2: float,
    n_folds: int = 5,
    seed: int = 0,
    max_iter: int = 100,
) -> np.ndarray:
    """Cross-fitted predictions of one fixed model (no selection).

    Returns:
        (n_rounds, n_actions, len_list) float64 out-of-fold predicted rewards.
    """
    folds = stratified_folds(feedback.reward, n_folds, seed)
    return _cross_predict(feedback, features, l2, _splits(folds, n_folds), max_iter)


def _splits(folds: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if n_folds == 1:
        everything = np.arange(folds.shape[0])
        return [(everything, everything)]
    return [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(n_folds)]


def _cross_predict(
    feedback: BanditFeedback,
    features: RewardFeatures,
    l2: float,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    max_iter: int,
) -> np.ndarray:
    out = np.empty((feedback.n_rounds, feedback.n_actions, feedback.len_list))
    for train, test in splits:
        model = fit_reward_model(feedback, features, l2, train, max_iter)
        out[test] = predict_all(model, feedback, test)
    return out


def _one_hot(index: np.ndarray, size: int) -> sparse.csr_matrix:
    m = index.shape[0]
    return sparse.csr_matrix((np.ones(m), (np.arange(m), index)), shape=(m, size), dtype=np.float64)
