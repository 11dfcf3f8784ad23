"""Churn prediction at a cutoff: who comes back within the next H days, and how often.

Only events strictly before the cutoff are read, so the same log truncated at the cutoff gives
the same predictions. Users are ordered by raw id (not by a preparation's indices), so two
preparations of the same events agree too.

The default predictor (``model``) is a convex blend of five candidates: the parametric return
model (:mod:`rlrec.models.lifecycle`), BG/NBD, Pareto/NBD and, when the calibration period
holds at least ``min_train_rows`` pseudo-cutoff rows, scikit-learn histogram gradient boosting
on recency/frequency/tenure/inter-session-time/value/session-content features plus BG/NBD's and
the return model's own predictions (stacking) and the RFM logistic regression, both trained on
labels at earlier pseudo-cutoffs ``cutoff - k H`` (k = 1..n) whose outcomes are known. A
classic calibration/holdout split (a holdout as long as the calibration) leaves no such
window; the pseudo-cutoffs then use windows of a third of the calibration period and a
monotone map, fitted on Pareto/NBD's own predictions at both horizons, carries their
probabilities to H (:class:`_HorizonMap`). The weights are chosen on a held-back
last slice of the calibration period (fit every candidate on what came before it, score the
slice, keep the weights; then refit on everything before the cutoff), so they never see the
holdout, and ``info["blend"]`` reports them with the validation scores. Why a blend rather than
one model: on logs drawn from a true BTYD process the BTYD models are the truth and the return
model (Weibull gaps, dropout after a session, no dropout heterogeneity) trails them; on
bursty, regular or content-driven logs it is the other way round; the validation slice says
which world a log is in (benchmarks/bench_churn_grid.py measures both). The survival curve
inside the window takes the return model's shape scaled to the blend's P(return by H).

Baselines: ``recency`` and ``frequency`` (one-feature logistic / Poisson regressions on the
same pseudo-cutoff labels), ``rfm_logistic`` (recency, frequency, monetary), ``bgnbd`` and
``pareto_nbd`` (fitted on the calibration period's ``(x, t_x, T)``), ``return_model`` (the
parametric mixture-cure frailty model alone) and ``gradient_boosting`` when trained: every
candidate is also scored alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from rlrec.evaluation import survival_metrics as sm
from rlrec.models.btyd import BGNBD, ParetoNBD, fit_bgnbd, fit_pareto_nbd
from rlrec.models.lifecycle import (
    DAY_MS,
    ReturnModel,
    ReturnModelConfig,
    Timelines,
    fit_return_model,
    session_features,
    session_table,
    timelines_from_sessions,
)

__all__ = [
    "CANDIDATES",
    "SEGMENTS",
    "ChurnConfig",
    "ChurnResult",
    "NotEnoughHistory",
    "choose_blend",
    "evaluate_churn",
    "predict_churn",
    "user_features",
]

SEGMENTS: tuple[tuple[str, float], ...] = (
    ("active", 0.7),
    ("at_risk", 0.3),
    ("likely_lost", 0.0),
)
"""Risk segment -> lowest ``p_return`` in it (checked in order)."""


class NotEnoughHistory(ValueError):
    """The log before the cutoff holds nothing to learn returns from."""


CURVE_POINTS = 21
"""Points of the survival curves written for the report (0..H)."""


@dataclass(frozen=True)
class ChurnConfig:
    """Settings of :func:`predict_churn`.

    Attributes:
        horizon_days: Window length H: predict sessions in ``[cutoff, cutoff + H)``.
        n_pseudo_cutoffs: Earlier cutoffs ``cutoff - k H`` whose known outcomes train the
            discriminative model (fewer when the log does not reach back that far).
        seed: Seed of the gradient boosting, the user subsample and the Monte Carlo draws.
        max_fit_users: Users (a seeded sample) the parametric and BTYD fits see; their
            parameters are population-level, so a sample keeps a 100k-user fit fast.
        n_draws: Monte Carlo draws per user for the return model's expected sessions (at
            least; up to ten times more while users x draws stays within ``max_draws``).
        max_draws: Budget of Monte Carlo draws over all users.
        max_iter: Boosting iterations of the discriminative model.
        learning_rate: Boosting learning rate.
        min_samples_leaf: Smallest leaf of the boosted trees.
        baselines: Also fit and predict the baselines (needed for metrics).
        min_train_rows: Below this many pseudo-cutoff rows (users x pseudo-cutoffs with a full
            window), the discriminative model is not trained and the parametric return model
            predicts alone: a classic calibration/holdout split whose holdout is as long as
            the calibration period leaves no full window inside it, and a few hundred rows
            overfit boosted trees.
        stack: Give the classifier BG/NBD's and the return model's predictions as covariates
            (both fitted once, on the calibration period before the cutoff).
        max_train_rows: Pseudo-cutoff rows (a seeded sample) the boosted trees train on.
        n_threads: OpenMP/BLAS threads of the scikit-learn fits (1: on shared cores the
            spinning OpenMP workers of gradient boosting cost far more than they gain; raise
            it on a dedicated machine).
        blend: Choose the default predictor's blend of the candidates on a held-back slice
            of the calibration period; False uses ``default_weights``.
        min_validation_users: Below this many users before the validation cutoff, no blend
            is chosen: the default weights predict.
        blend_prior_users: Strength of the shrinkage of the slice's weights toward the
            default weights, in users: the slice's ``p_return`` weights count
            ``m / (m + blend_prior_users)`` with ``m`` the slice's returned or not-returned
            users, whichever are fewer (a binary outcome carries no more information than
            its rarer class), and its ``expected_sessions`` weights likewise with ``m`` the
            users who had a session in the slice. 0 trusts the slice fully.
        default_weights: The fixed, robust default blend the slice's weights are shrunk
            toward (and used alone without a slice): candidate -> weight, renormalised over
            the candidates that were fitted. Most weight is on the covariate models because
            they nest the most (the return model has heterogeneous activity and dropout like
            the BTYD models, plus Weibull gaps and session covariates); the RFM regression and
            the BTYD models keep a share as a hedge. On the grid of
            benchmarks/bench_churn_grid.py the slices are large and the default moves the
            weights by 2-8%; only the 114-user Taobao sample is decided by it (equal weights
            gave it AUC 0.684, this default 0.702).
    """

    horizon_days: float
    n_pseudo_cutoffs: int = 3
    seed: int = 0
    max_fit_users: int = 20_000
    n_draws: int = 100
    max_draws: int = 2_000_000
    max_iter: int = 200
    learning_rate: float = 0.05
    min_samples_leaf: int = 20
    baselines: bool = True
    stack: bool = True
    min_train_rows: int = 1000
    max_train_rows: int = 100_000
    n_threads: int = 1
    blend: bool = True
    min_validation_users: int = 50
    blend_prior_users: float = 30.0
    # The covariate models (boosting, the return model) carry 3/9 each and the RFM regression
    # and the BTYD models 1/9 each (with neither boosting nor RFM: 0.6, 0.2, 0.2); why in the
    # docstring.
    default_weights: tuple[tuple[str, float], ...] = (
        ("gradient_boosting", 3.0),
        ("return_model", 3.0),
        ("rfm_logistic", 1.0),
        ("bgnbd", 1.0),
        ("pareto_nbd", 1.0),
    )

    def __post_init__(self) -> None:
        if not self.horizon_days > 0:
            raise ValueError(f"horizon_days must be > 0, got {self.horizon_days}")
        if self.blend_prior_users < 0:
            raise ValueError(f"blend_prior_users must be >= 0, got {self.blend_prior_users}")
        unknown = [n for n, _ in self.default_weights if n not in CANDIDATES]
        if unknown or any(w < 0 for _, w in self.default_weights):
            raise ValueError(
                f"default_weights must give candidates of {CANDIDATES} weights >= 0, "
                f"got {self.default_weights}"
            )

    def defaults_for(self, names: list[str]) -> dict[str, float]:
        """The default weights over the fitted candidates ``names`` (summing to 1).

        Candidates the defaults give no weight share equally when none of them has any.
        """
        given = dict(self.default_weights)
        w = np.array([max(given.get(n, 0.0), 0.0) for n in names], dtype=np.float64)
        if w.sum() <= 0:
            w = np.ones(len(names))
        return {n: float(v) for n, v in zip(names, w / w.sum(), strict=True)}


@dataclass
class ChurnResult:
    """Predictions at the cutoff, and what produced them.

    Attributes:
        predictions: One row per user seen before the cutoff: ``user`` (raw id), ``p_return``,
            ``expected_sessions``, ``segment`` and the covariates that drive it.
        baselines: Baseline name -> frame with ``p_return`` and ``expected_sessions`` (rows
            as in ``predictions``).
        survival: Predictor name -> (U, CURVE_POINTS) P(no return by t), t on ``curve_days``.
        curve_days: (CURVE_POINTS,) times of the survival curves.
        return_model: The fitted parametric model (None when the log has no repeat session).
        importances: Feature -> permutation importance (AUC drop) of the classifier.
        info: Cutoff, horizon, users, which predictor is the model, fit times.
    """

    predictions: pd.DataFrame
    baselines: dict[str, pd.DataFrame]
    survival: dict[str, np.ndarray]
    curve_days: np.ndarray
    return_model: ReturnModel | None
    importances: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


STACKED: tuple[str, ...] = ("bgnbd_p_alive", "bgnbd_expected", "rm_p_return", "rm_p_alive")
"""Stacked covariates: BG/NBD's and the return model's own predictions (``config.stack``)."""

FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "tenure_days",
    "sessions_last_h",
    "sessions_last_2h",
    "mean_gap_days",
    "last_gap_days",
    "gap_cv",
    "recency_over_mean_gap",
    "monetary",
    "last_value",
    "last_log_events",
    "last_carted",
    "last_bought",
    "last_log_categories",
    "last_satisfaction",
    "mean_log_events",
    "buy_rate",
)
"""Covariates of the discriminative model (NaN where the log lacks them; boosting handles it)."""


def user_features(sessions: pd.DataFrame, at_ms: int, horizon_days: float) -> pd.DataFrame:
    """Recency/frequency/tenure/gap/value/content features of users seen before ``at_ms``.

    Args:
        sessions: :func:`rlrec.models.lifecycle.session_table` rows, plus a ``rank`` column
            (the user's position by raw id), sorted by (rank, start_ms).
        at_ms: The (pseudo-)cutoff; sessions starting at or after it are ignored.
        horizon_days: H, for the "sessions in the last H / 2H days" counts.

    Returns:
        Index ``rank`` (sorted), columns :data:`FEATURES`.
    """
    before = sessions.loc[sessions["start_ms"].to_numpy() < at_ms]
    rank = before["rank"].to_numpy(np.int64)
    start = before["start_ms"].to_numpy(np.int64) / DAY_MS
    at = at_ms / DAY_MS
    if len(rank) == 0:
        return pd.DataFrame(columns=list(FEATURES), index=pd.Index([], name="rank"))
    first = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]])
    last = np.r_[first[1:] - 1, len(rank) - 1]
    n = np.diff(np.r_[first, len(rank)]).astype(np.float64)
    gaps = np.diff(start)
    gaps_sq = np.r_[0.0, np.cumsum(np.where(rank[1:] == rank[:-1], gaps**2, 0.0))]
    span = start[last] - start[first]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gap = np.where(n > 1, span / (n - 1), np.nan)
        var_gap = np.where(n > 2, (gaps_sq[last] - gaps_sq[first]) / (n - 1) - mean_gap**2, np.nan)
        gap_cv = np.sqrt(np.maximum(var_gap, 0.0)) / mean_gap
        last_gap = np.where(n > 1, start[last] - start[np.maximum(last - 1, 0)], np.nan)
    recency = at - start[last]

    def window_count(days: float) -> np.ndarray:
        recent = (start >= at - days).astype(np.int64)
        return np.add.reduceat(recent, first).astype(np.float64)

    content = session_features(before.reset_index(drop=True))
    value = before["value"].to_numpy(np.float64)
    has_value = not np.all(np.isnan(value))
    monetary = (
        np.add.reduceat(np.nan_to_num(value), first) / n if has_value else np.full(len(n), np.nan)
    )
    log_events = content["log_events"].to_numpy()
    out = {
        "recency_days": recency,
        "frequency": n,
        "tenure_days": at - start[first],
        "sessions_last_h": window_count(horizon_days),
        "sessions_last_2h": window_count(2 * horizon_days),
        "mean_gap_days": mean_gap,
        "last_gap_days": last_gap,
        "gap_cv": gap_cv,
        "recency_over_mean_gap": recency / mean_gap,
        "monetary": monetary,
        "last_value": value[last] if has_value else np.full(len(n), np.nan),
        "last_log_events": log_events[last],
        "last_carted": content["carted"].to_numpy()[last],
        "last_bought": content["bought"].to_numpy()[last],
        "last_log_categories": content["log_categories"].to_numpy()[last],
        "last_satisfaction": (
            content["satisfaction"].to_numpy()[last]
            if "satisfaction" in content
            else np.full(len(n), np.nan)
        ),
        "mean_log_events": np.add.reduceat(log_events, first) / n,
        "buy_rate": np.add.reduceat(content["bought"].to_numpy(), first) / n,
    }
    return pd.DataFrame(out, index=pd.Index(rank[first], name="rank"))


def _outcomes(
    starts_ms: np.ndarray, rank: np.ndarray, users: np.ndarray, at_ms: int, horizon_days: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions in ``[at, at + H)`` and days to the first one (H when none), per user in ``users``.

    Args:
        starts_ms: (S,) session start times.
        rank: (S,) user rank of each session.
        users: (U,) sorted user ranks to report.
        at_ms: Window start.
        horizon_days: Window length.

    Returns:
        ``count`` (U,), ``first_days`` (U,) and ``returned`` (U,) bool.
    """
    end = at_ms + horizon_days * DAY_MS
    inside = (starts_ms >= at_ms) & (starts_ms < end)
    pos = np.searchsorted(users, rank[inside])
    known = (pos < len(users)) & (users[np.minimum(pos, len(users) - 1)] == rank[inside])
    count = np.bincount(pos[known], minlength=len(users)).astype(np.float64)
    first = np.full(len(users), float(horizon_days))
    np.minimum.at(first, pos[known], (starts_ms[inside][known] - at_ms) / DAY_MS)
    return count, first, count > 0


def _subsample(timelines: Timelines, max_users: int, seed: int) -> Timelines:
    """The timelines of a seeded sample of at most ``max_users`` users (by rank)."""
    users = np.unique(timelines.user)
    if len(users) <= max_users:
        return timelines
    keep = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return timelines.subset(keep)


def _segment(p: np.ndarray) -> np.ndarray:
    out = np.full(len(p), SEGMENTS[-1][0], dtype=object)
    for name, low in reversed(SEGMENTS):
        out[p >= low] = name
    return out


def _btyd_summary(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) in days from :func:`user_features` columns."""
    x = features["frequency"].to_numpy() - 1
    T = features["tenure_days"].to_numpy()
    t_x = T - features["recency_days"].to_numpy()
    return x, np.maximum(t_x, 0.0), T


def churn_sessions(
    events: pd.DataFrame, raw_ids: np.ndarray, cutoff_ms: int, gap_ms: int
) -> pd.DataFrame:
    """Sessions of events before the cutoff, users ranked by raw id (the output's order).

    Args:
        events: An events frame (``user`` indices into ``raw_ids``).
        raw_ids: (n_users,) raw id of each user index.
        cutoff_ms: Only events strictly before it are read.
        gap_ms: Inactivity gap that cuts sessions (the dataset's session ids are not used:
            preparation cuts them at split boundaries, which a truncated log moves).

    Returns:
        :func:`rlrec.models.lifecycle.session_table` rows with ``rank`` and ``raw_id``,
        sorted by (rank, start_ms).
    """
    table = session_table(events, before_ms=cutoff_ms, gap_ms=gap_ms)
    seen = np.unique(table["user"].to_numpy())
    raw = np.asarray(raw_ids, dtype=object)[seen].astype(str)
    order = np.argsort(raw, kind="stable")
    rank_of = np.empty(int(seen.max()) + 1 if len(seen) else 0, dtype=np.int64)
    rank_of[seen[order]] = np.arange(len(seen))
    table["rank"] = rank_of[table["user"].to_numpy()]
    table["raw_id"] = raw[order][table["rank"].to_numpy()]
    return table.sort_values(["rank", "start_ms", "session"], kind="stable").reset_index(drop=True)


def predict_churn(sessions: pd.DataFrame, cutoff_ms: int, config: ChurnConfig) -> ChurnResult:
    """Predict every user's return (see :func:`_predict`) with the configured thread count."""
    # Import first: threadpoolctl limits only the OpenMP/BLAS libraries already loaded.
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=config.n_threads):
        return _predict(sessions, cutoff_ms, config)


@dataclass(frozen=True)
class _HorizonMap:
    """Carries predictions for a ``window`` of days to the horizon H (identity when equal).

    A classic calibration/holdout split trains the discriminative models on windows shorter
    than H (see :func:`_fit_candidates`); their ``P(return within window)`` becomes
    ``P(return within H)`` through ``logit p_H = a + b logit p_window``, fitted by least
    squares over the users at the cutoff on a BTYD model's own two predictions for each user
    (Pareto/NBD first: its dropout runs in continuous time, so it relates any two horizons;
    then BG/NBD). With ``b > 0`` the map is increasing, so it keeps the classifier's ranking
    and only calibrates it. Counts are multiplied by the model's ratio of expected
    transactions in H and in the window, summed over the users. Without a BTYD model it
    assumes a constant hazard: ``1 - p_H = (1 - p_window)^(H / window)`` and counts in
    proportion to time.

    Attributes:
        window: Days of the windows the models were trained on.
        horizon: H.
        source: ``identity``, ``pareto_nbd``, ``bgnbd`` or ``constant_hazard``.
        a: Intercept of the logit map.
        b: Slope of the logit map.
        ratio: Count multiplier.
    """

    window: float
    horizon: float
    source: str
    a: float = 0.0
    b: float = 1.0
    ratio: float = 1.0

    @classmethod
    def fit(
        cls,
        btyd: dict[str, BGNBD | ParetoNBD],
        feats: pd.DataFrame,
        window: float,
        horizon: float,
    ) -> _HorizonMap:
        """The map from ``window`` to ``horizon`` for the users of ``feats`` (see the class)."""
        if window >= horizon:
            return cls(window, horizon, "identity")
        x, t_x, T = _btyd_summary(feats)
        for name in ("pareto_nbd", "bgnbd"):
            model = btyd.get(name)
            if model is None:
                continue
            with np.errstate(all="ignore"):
                p_w = 1 - model.p_no_transaction(window, x, t_x, T)
                p_h = 1 - model.p_no_transaction(horizon, x, t_x, T)
                n_w = float(np.sum(model.expected_transactions(window, x, t_x, T)))
                n_h = float(np.sum(model.expected_transactions(horizon, x, t_x, T)))
            ok = np.isfinite(p_w) & np.isfinite(p_h) & (p_w > 1e-9) & (p_w < 1 - 1e-9)
            ok &= (p_h > 1e-9) & (p_h < 1 - 1e-9)
            if ok.sum() < 2 or np.ptp(p_w[ok]) <= 0:
                continue
            b, a = np.polyfit(_logit(p_w[ok]), _logit(p_h[ok]), 1)
            if not (b > 0 and np.isfinite(a)):
                continue
            ratio = n_h / n_w if n_w > 0 and np.isfinite(n_h / n_w) else horizon / window
            return cls(window, horizon, name, float(a), float(b), float(ratio))
        return cls(window, horizon, "constant_hazard", ratio=horizon / window)

    def p(self, p_window: np.ndarray) -> np.ndarray:
        """(n,) P(return within H) from (n,) P(return within the window)."""
        q = np.clip(np.asarray(p_window, np.float64), 1e-9, 1 - 1e-9)
        if self.source == "identity":
            return np.asarray(p_window, np.float64)
        if self.source == "constant_hazard":
            return np.asarray(1 - (1 - q) ** (self.horizon / self.window))
        return np.asarray(special.expit(self.a + self.b * _logit(q)))

    def n(self, n_window: np.ndarray) -> np.ndarray:
        """(n,) expected sessions in H from (n,) expected sessions in the window."""
        return np.asarray(n_window, np.float64) * self.ratio

    def describe(self) -> dict[str, Any]:
        """The map as JSON-ready numbers (``info["horizon_map"]``)."""
        return {
            "window_days": self.window,
            "horizon_days": self.horizon,
            "source": self.source,
            "logit_intercept": self.a,
            "logit_slope": self.b,
            "count_ratio": self.ratio,
        }


def _logit(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(p) - np.log1p(-p))


@dataclass
class _Fitted:
    """Every candidate predictor fitted on the sessions before one (pseudo-)cutoff.

    Attributes:
        feats: :func:`user_features` at the cutoff (index ``rank``), stacked columns added.
        preds: Candidate name -> (``p_return`` (U,), ``expected_sessions`` (U,)).
        survival: Candidate name -> (U, CURVE_POINTS) P(no return by t).
        return_model: The fitted parametric model, or None.
        p_alive: (U,) the return model's P(alive), or None.
        params: Candidate name -> fitted parameters (BTYD models).
        train: Pseudo-cutoff rows (features, returned, counts) for the GLM baselines, with
            windows of ``info["train_window_days"]``.
        horizon_map: Carries predictions for that window to the horizon H.
        importances: Feature -> permutation importance of the classifier.
        info: What was fitted, and how long it took.
    """

    feats: pd.DataFrame
    preds: dict[str, tuple[np.ndarray, np.ndarray]]
    survival: dict[str, np.ndarray]
    return_model: ReturnModel | None
    p_alive: np.ndarray | None
    params: dict[str, dict[str, float]]
    train: tuple[list[pd.DataFrame], list[np.ndarray], list[np.ndarray]]
    horizon_map: _HorizonMap
    importances: dict[str, float]
    info: dict[str, Any]


CANDIDATES: tuple[str, ...] = (
    "gradient_boosting",
    "return_model",
    "rfm_logistic",
    "bgnbd",
    "pareto_nbd",
)
"""Predictors the default model blends, in the order their weights are reported."""


def _fit_candidates(
    sessions: pd.DataFrame,
    at_ms: int,
    H: float,
    config: ChurnConfig,
    importances: bool,
    window: float | None = None,
) -> _Fitted:
    """Fit every candidate on the sessions before ``at_ms`` and predict ``[at, at + H)``.

    Candidates: the parametric return model, BG/NBD, Pareto/NBD (each fitted on a seeded
    sample of at most ``config.max_fit_users`` users) and, when the calibration period holds
    at least ``config.min_train_rows`` pseudo-cutoff rows, gradient boosting on the user
    features plus BG/NBD's and the return model's predictions (stacking) and the RFM
    logistic regression.

    Args:
        sessions: From :func:`churn_sessions`.
        at_ms: The (pseudo-)cutoff.
        H: The horizon in days.
        config: Fit settings.
        importances: Compute the classifier's permutation importances.
        window: Train the discriminative candidates on pseudo-cutoff windows of this many
            days (the validation slice repeats the final fit's ratio ``H / window``); None
            chooses: H when the calibration period has enough rows with full windows, else
            a third of the calibration period.
    """
    import time

    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.inspection import permutation_importance

    sessions = sessions.loc[sessions["start_ms"].to_numpy() < at_ms]
    feats = user_features(sessions, at_ms, H)
    starts = sessions["start_ms"].to_numpy(np.int64)
    srank = sessions["rank"].to_numpy(np.int64)
    first_ms = int(starts.min())
    curve = np.linspace(0.0, H, CURVE_POINTS)
    info: dict[str, Any] = {}
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    survival: dict[str, np.ndarray] = {}
    params: dict[str, dict[str, float]] = {}

    timelines = timelines_from_sessions(sessions, at_ms, user_column="rank")
    return_model: ReturnModel | None = None
    p_alive = None
    if timelines.observed.any():
        clock = time.perf_counter()
        return_model = fit_return_model(
            _subsample(timelines, config.max_fit_users, config.seed), ReturnModelConfig()
        )
        info["return_model_fit_seconds"] = time.perf_counter() - clock
        hist = return_model.history(timelines)
        elapsed, X_last = hist["elapsed"], hist["X_last"]
        log_s = np.stack(
            [return_model.log_no_return(elapsed, t, X_last, hist) for t in curve], axis=1
        )
        survival["return_model"] = np.exp(log_s)
        # At least n_draws per user, more while the total stays within the draw budget:
        # Monte Carlo noise adds to every user's count error, and small logs can afford less.
        draws = max(config.n_draws, min(10 * config.n_draws, config.max_draws // len(elapsed)))
        rm_n = return_model.expected_sessions(
            elapsed, H, X_last, hist, seed=config.seed, n_draws=draws
        )
        info["return_model_draws"] = draws
        preds["return_model"] = (1 - survival["return_model"][:, -1], rm_n)
        p_alive = return_model.p_alive(elapsed, X_last, hist)
        info["return_model_p_alive_mean"] = float(p_alive.mean())

    clock = time.perf_counter()
    x, t_x, T = _btyd_summary(feats)
    rows = np.sort(np.random.default_rng(config.seed).permutation(len(x))[: config.max_fit_users])
    btyd: dict[str, BGNBD | ParetoNBD] = {}
    for name, fit in (("bgnbd", fit_bgnbd), ("pareto_nbd", fit_pareto_nbd)):
        try:
            model = fit(x[rows], t_x[rows], T[rows])
            none = model.no_transaction_curve(curve, x, t_x, T)
            expected = model.expected_transactions(H, x, t_x, T)
        except (ValueError, FloatingPointError, ZeroDivisionError):
            continue
        if not (np.all(np.isfinite(none)) and np.all(np.isfinite(expected))):
            continue
        survival[name] = np.clip(none, 0.0, 1.0)
        preds[name] = (1 - survival[name][:, -1], np.maximum(expected, 0.0))
        params[name] = model.to_dict()
        btyd[name] = model
    info["btyd_seconds"] = time.perf_counter() - clock
    bgnbd = btyd.get("bgnbd")

    def with_stack(f: pd.DataFrame, at: int, window: float) -> pd.DataFrame:
        """Add the fitted models' own predictions at ``at`` as covariates (stacking)."""
        if not config.stack:
            return f
        f = f.copy()
        if bgnbd is not None:
            x, t_x, T = _btyd_summary(f)
            f["bgnbd_p_alive"] = bgnbd.p_alive(x, t_x, T)
            f["bgnbd_expected"] = bgnbd.expected_transactions(window, x, t_x, T)
        if return_model is not None:
            tl = timelines_from_sessions(sessions, at, user_column="rank")
            h = return_model.history(tl)
            order = np.searchsorted(tl.users(), f.index.to_numpy())
            f["rm_p_return"] = return_model.p_return(h["elapsed"], window, h["X_last"], h)[order]
            f["rm_p_alive"] = return_model.p_alive(h["elapsed"], h["X_last"], h)[order]
        return f

    def pseudo_rows(
        window: float,
    ) -> tuple[list[pd.DataFrame], list[np.ndarray], list[np.ndarray], list[int]]:
        """Features at ``at - k window`` with the known outcome in the next ``window`` days."""
        rows_X: list[pd.DataFrame] = []
        rows_y: list[np.ndarray] = []
        rows_n: list[np.ndarray] = []
        cutoffs: list[int] = []
        for k in range(1, config.n_pseudo_cutoffs + 1):
            at = int(at_ms - k * window * DAY_MS)
            if at <= first_ms:
                break
            f = user_features(sessions, at, window)
            if len(f) == 0:
                break
            count, _, returned = _outcomes(starts, srank, f.index.to_numpy(), at, window)
            rows_X.append(with_stack(f, at, window))
            rows_y.append(returned)
            rows_n.append(count)
            cutoffs.append(at)
        return rows_X, rows_y, rows_n, cutoffs

    def enough(rows_y: list[np.ndarray]) -> bool:
        return (
            sum(len(y) for y in rows_y) >= config.min_train_rows
            and len(np.unique(np.concatenate(rows_y))) == 2
        )

    # Training rows with full windows of H days; a classic calibration/holdout split (a
    # holdout as long as the calibration period) has none, so the rows then come from the
    # longest window that leaves earlier cutoffs: a third of the calibration period, the
    # validation slice's window. The classifier learns who returns within that window and its
    # probabilities are carried to H by the BTYD models' own relation between the two
    # horizons (_HorizonMap); without it the classic split had no discriminative model and
    # no recency/frequency/RFM baselines at all.
    span_days = (at_ms - first_ms) / DAY_MS
    if window is None:
        window = H
        train_X, train_y, train_n, pseudo = pseudo_rows(H)
        if not enough(train_y) and span_days / 3 < H:
            short = pseudo_rows(span_days / 3)
            if enough(short[1]):
                window = span_days / 3
                train_X, train_y, train_n, pseudo = short
    else:
        train_X, train_y, train_n, pseudo = pseudo_rows(window)
    horizon_map = _HorizonMap.fit(btyd, feats, window, H)
    info["pseudo_cutoffs_ms"] = pseudo
    info["train_window_days"] = window
    info["horizon_map"] = horizon_map.describe()
    feats = with_stack(feats, at_ms, H)
    # The classifier reads features of its own window (sessions in the last w and 2w days,
    # stacked predictions for w days); recomputing them for w = H cost seconds at 100k users.
    feats_window = (
        feats if window == H else with_stack(user_features(sessions, at_ms, window), at_ms, window)
    )
    n_rows = sum(len(y) for y in train_y)
    info["n_train_rows"] = n_rows
    found: dict[str, float] = {}
    if n_rows >= config.min_train_rows and len(np.unique(np.concatenate(train_y))) == 2:
        clock = time.perf_counter()
        stacked = pd.concat(train_X)
        # Columns the log does not have (all NaN) or that never vary carry nothing.
        used = [
            name
            for name in (*FEATURES, *STACKED)
            if name in stacked
            and np.isfinite(stacked[name].to_numpy(np.float64)).any()
            and np.nanstd(stacked[name].to_numpy(np.float64)) > 0
        ]
        X_train = stacked[used].to_numpy(np.float64)
        X_now = feats_window[used].to_numpy(np.float64)
        y_train = np.concatenate(train_y)
        n_train = np.concatenate(train_n)
        if len(y_train) > config.max_train_rows:
            # A seeded sample of the rows: beyond ~100k rows of ~20 features the trees'
            # splits no longer change, and boosting's time grows with the rows.
            keep = np.sort(
                np.random.default_rng(config.seed).permutation(len(y_train))[
                    : config.max_train_rows
                ]
            )
            X_train, y_train, n_train = X_train[keep], y_train[keep], n_train[keep]
        common = {
            "max_iter": config.max_iter,
            "learning_rate": config.learning_rate,
            "max_leaf_nodes": 15,
            "min_samples_leaf": config.min_samples_leaf,
            "l2_regularization": 1.0,
            "early_stopping": False,
            "random_state": config.seed,
        }
        classifier = HistGradientBoostingClassifier(**common).fit(X_train, y_train)
        p_window = classifier.predict_proba(X_now)[:, 1]
        if window == H:
            regressor = HistGradientBoostingRegressor(loss="poisson", **common)
            regressor.fit(X_train, n_train)
            preds["gradient_boosting"] = (p_window, regressor.predict(X_now))
        else:
            # Only the classifier: a monotone map keeps its ranking, but a count learned on a
            # third of the window scaled up lost MAE to every parametric candidate on CDNOW
            # (0.886 against 0.789), so the count is the return model's (or a BTYD model's).
            fallback = next(
                (preds[n][1] for n in ("return_model", "pareto_nbd", "bgnbd") if n in preds),
                None,
            )
            if fallback is not None:
                preds["gradient_boosting"] = (horizon_map.p(p_window), fallback)
        if importances:
            # A seeded sample: permutation importance predicts n_features x n_repeats times.
            sample = np.random.default_rng(config.seed).permutation(len(y_train))[:5_000]
            result = permutation_importance(
                classifier,
                X_train[sample],
                y_train[sample],
                scoring="roc_auc",
                n_repeats=3,
                random_state=config.seed,
            )
            found = {
                name: float(value)
                for name, value in zip(used, result["importances_mean"], strict=True)
            }
        info["features"] = used
        info["boosting_seconds"] = time.perf_counter() - clock
    if train_y and enough(train_y):
        # The RFM logistic regression as a candidate too: smooth in log recency, frequency and
        # value, it carries from pseudo-cutoffs to the cutoff where trees, which can split on
        # the cutoff's own tenure range, may not (CDNOW's cohort, see docs/churn.md).
        rfm = _glm((train_X, train_y, train_n), feats, _rfm_columns(feats), horizon_map)
        if rfm is not None:
            preds["rfm_logistic"] = rfm
    return _Fitted(
        feats=feats,
        preds=preds,
        survival=survival,
        return_model=return_model,
        p_alive=p_alive,
        params=params,
        train=(train_X, train_y, train_n),
        horizon_map=horizon_map,
        importances=found,
        info=info,
    )


def _simplex(k: int, steps: int) -> np.ndarray:
    """(m, k) every weight vector on the simplex with entries in multiples of 1/steps."""
    if k == 1:
        return np.ones((1, 1))
    grids = np.stack(np.meshgrid(*[np.arange(steps + 1)] * (k - 1), indexing="ij"), -1)
    head = grids.reshape(-1, k - 1)
    head = head[head.sum(axis=1) <= steps]
    return np.column_stack([head, steps - head.sum(axis=1)]) / steps


def choose_blend(
    preds: dict[str, tuple[np.ndarray, np.ndarray]],
    returned: np.ndarray,
    count: np.ndarray,
    steps: int = 10,
    default: dict[str, float] | None = None,
    prior_users: float = 0.0,
    strata: np.ndarray | None = None,
) -> dict[str, Any]:
    """Convex weights of the candidates that best predict a validation window.

    ``p_return`` weights minimise the log loss of the blended probability and
    ``expected_sessions`` weights the MAE of the blended count, each over the simplex grid
    with steps of ``1 / steps``. Why log loss, not the AUC ``rlrec churn`` is judged on: AUC
    is flat in the weights wherever the blend's order does not change (a constant candidate
    never changes it, so it ties everything), and on a few thousand validation users its
    maximiser jumped between corners of the simplex from seed to seed; the log loss is a
    proper scoring rule, smooth in the weights, and rewards both ranking and calibration. A
    convex blend of probabilities is a probability and of expectations an expectation, so
    the blended columns keep their meaning. Ties keep the first weight vector in grid order,
    so the result is deterministic.

    With a ``default`` and ``prior_users > 0`` the slice's weights are shrunk toward the
    default: ``lam w_slice + (1 - lam) w_default``, ``lam = m / (m + prior_users)``, with ``m``
    the slice's rarer outcome class for ``p_return`` and its users with a session for
    ``expected_sessions``. A slice of 114 users of whom 113 returned (the Taobao sample) holds
    about one user's worth of evidence on who does not return, and its best weights were
    noise; a slice of thousands moves the weights almost all the way.

    With ``strata`` the ``expected_sessions`` weights are also chosen within each stratum (by
    MAE on its users) and shrunk toward the overall weights with ``m`` the stratum's users
    with a session. MAE is a sum over users, so weights per stratum can only lower the
    slice's MAE, and a small stratum falls back to the overall choice. The default strata
    (:func:`_count_strata`) split users seen in one session from repeat users: the
    candidates know the first only through the population and their recency, and rank
    differently there (on CDNOW's slice Pareto/NBD's count is the better one for one-session
    users and the return model's for repeat users; one weight set for both lost MAE to
    Pareto/NBD in the holdout, 0.792 against 0.789; one per stratum, 0.778).

    Args:
        preds: Candidate name -> (``p_return`` (n,), ``expected_sessions`` (n,)) for the
            validation users; the first is the default.
        returned: (n,) bool, the user had a session in the validation window.
        count: (n,) sessions in the validation window.
        steps: Grid resolution.
        default: Name -> default weight (summing to 1); None is the first candidate alone.
        prior_users: Shrinkage strength in users (0: the slice's weights as they are).
        strata: (n,) a stratum label per user for the ``expected_sessions`` weights, or None.

    Returns:
        ``p_weights`` and ``n_weights`` (name -> weight, after shrinkage),
        ``slice_p_weights`` and ``slice_n_weights`` (before), ``shrinkage_p`` and
        ``shrinkage_n`` (the slice's share ``lam``), ``first_candidate``,
        the paired z-statistics ``z_log_loss`` and ``z_mae`` of the blend's per-user loss
        reduction against the first candidate alone, and the validation ``auc``,
        ``log_loss`` and ``mae`` of every candidate and of the blend; with ``strata`` also
        ``n_weights_by_stratum`` (label -> name -> weight, after shrinkage), and the blend's
        ``mae`` and ``z_mae`` are the stratified blend's.
    """
    names = list(preds)
    P = np.stack([preds[n][0] for n in names], axis=1)
    N = np.stack([preds[n][1] for n in names], axis=1)
    W = _simplex(len(names), steps)
    y = np.asarray(returned, dtype=np.float64)[:, None]

    def log_loss(q: np.ndarray) -> np.ndarray:
        q = np.clip(q, 1e-6, 1 - 1e-6)
        return np.asarray(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean(axis=0))

    losses = log_loss(P @ W.T)
    best_p = W[int(np.argmin(losses))]
    maes = np.abs(N @ W.T - count[:, None]).mean(axis=0)
    best_n = W[int(np.argmin(maes))]
    slice_p, slice_n = best_p, best_n
    base = np.array([(default or {names[0]: 1.0}).get(n, 0.0) for n in names], np.float64)
    base = base / base.sum() if base.sum() > 0 else np.eye(len(names))[0]
    n_returned = int(np.sum(returned))
    m_p = min(n_returned, len(returned) - n_returned)
    lam_p = m_p / (m_p + prior_users) if prior_users > 0 else 1.0
    lam_n = n_returned / (n_returned + prior_users) if prior_users > 0 else 1.0
    best_p = lam_p * best_p + (1 - lam_p) * base
    best_n = lam_n * best_n + (1 - lam_n) * base
    # The blended count per user: overall weights, or each stratum's own.
    n_blend = N @ best_n
    by_stratum: dict[str, dict[str, float]] = {}
    if strata is not None:
        labels = np.asarray(strata)
        for label in sorted(set(labels.tolist())):
            rows = labels == label
            w = W[int(np.argmin(np.abs(N[rows] @ W.T - count[rows, None]).mean(axis=0)))]
            m = int(np.sum(returned[rows]))
            lam = m / (m + prior_users) if prior_users > 0 else 1.0
            w = lam * w + (1 - lam) * best_n
            by_stratum[str(label)] = {n: float(v) for n, v in zip(names, w, strict=True)}
            n_blend[rows] = N[rows] @ w
    # How sure the slice is that the blend beats the first candidate alone (boosting when
    # trained, else the return model): a paired z-statistic of the per-user losses, reported
    # only. Gating the blend on it (one-sided 5%) was measured on bench_churn_grid.py and lost
    # AUC and MAE in total: where the first candidate is the weaker one (logs drawn from a
    # true BTYD process) the slice often could not prove the better blend significant.
    y1 = y[:, 0]
    q_blend = np.clip(P @ best_p, 1e-6, 1 - 1e-6)
    q_first = np.clip(P[:, 0], 1e-6, 1 - 1e-6)
    z_p = _paired_z(
        -(y1 * np.log(q_first) + (1 - y1) * np.log1p(-q_first)),
        -(y1 * np.log(q_blend) + (1 - y1) * np.log1p(-q_blend)),
    )
    z_n = _paired_z(np.abs(N[:, 0] - count), np.abs(n_blend - count))
    blend_p = P @ best_p
    strata_out = {"n_weights_by_stratum": by_stratum} if strata is not None else {}
    return {
        **strata_out,
        "first_candidate": names[0],
        "z_log_loss": z_p,
        "z_mae": z_n,
        "p_weights": {n: float(w) for n, w in zip(names, best_p, strict=True)},
        "n_weights": {n: float(w) for n, w in zip(names, best_n, strict=True)},
        "slice_p_weights": {n: float(w) for n, w in zip(names, slice_p, strict=True)},
        "slice_n_weights": {n: float(w) for n, w in zip(names, slice_n, strict=True)},
        "shrinkage_p": float(lam_p),
        "shrinkage_n": float(lam_n),
        "auc": {
            **{n: sm.roc_auc(returned, P[:, i]) for i, n in enumerate(names)},
            "blend": sm.roc_auc(returned, blend_p),
        },
        "log_loss": {
            **{n: float(log_loss(P[:, i : i + 1])[0]) for i, n in enumerate(names)},
            "blend": float(log_loss(blend_p[:, None])[0]),
        },
        "mae": {
            **{n: float(np.abs(N[:, i] - count).mean()) for i, n in enumerate(names)},
            "blend": float(np.abs(n_blend - count).mean()),
        },
    }


def _count_strata(feats: pd.DataFrame) -> np.ndarray:
    """(n,) ``one_session`` for users seen in one session, ``repeat`` for the others."""
    return np.where(feats["frequency"].to_numpy() <= 1, "one_session", "repeat")


def _weights_text(weights: dict[str, float]) -> str:
    """``0.70 return_model+0.30 pareto_nbd`` (weights below 0.005 left out)."""
    # Two decimals: shrinkage toward the defaults leaves weights like 0.03 a tenth would hide.
    return "+".join(f"{w:.2f} {n}" for n, w in weights.items() if w >= 0.005)


def _paired_z(loss_default: np.ndarray, loss_blend: np.ndarray) -> float:
    """Paired z-statistic of the per-user loss reduction ``loss_default - loss_blend`` (n,)."""
    d = np.asarray(loss_default, np.float64) - np.asarray(loss_blend, np.float64)
    if len(d) < 2:
        return 0.0
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        # Every user gains the same: certain when it is a gain (capped to stay valid JSON).
        return _MAX_Z if d.mean() > 0 else (0.0 if d.mean() == 0 else -_MAX_Z)
    return float(np.clip(d.mean() / (sd / math.sqrt(len(d))), -_MAX_Z, _MAX_Z))


_MAX_Z = 1e6
"""Cap of the paired z-statistic (a loss reduction with no spread)."""


def _validate(
    sessions: pd.DataFrame, cutoff_ms: int, config: ChurnConfig, final: _Fitted
) -> dict[str, Any]:
    """Choose the blend on a held-back last slice of the calibration period.

    The slice is ``[cutoff - h, cutoff)`` with ``h = H`` when the discriminative model is
    trained (its pseudo-cutoffs already have full windows) and otherwise ``h = min(H, a third
    of the calibration period)`` (a classic calibration/holdout split has no full window
    before the cutoff). Every candidate is refitted on the sessions before ``cutoff - h`` of a
    seeded sample of at most ``config.max_fit_users`` users, predicts the slice, and the
    weights that score best there are used for the predictions at the cutoff (made by the
    candidates refitted on everything before it). When the final fit trained its
    discriminative candidates on windows shorter than H, the slice's train on windows shorter
    than h by the same ratio. Nothing at or after the cutoff is read.
    """
    H = config.horizon_days
    starts = sessions["start_ms"].to_numpy(np.int64)
    span = (cutoff_ms - int(starts.min())) / DAY_MS
    full = "gradient_boosting" in final.preds and final.info.get("train_window_days") == H
    h = H if full else min(H, span / 3)
    at = int(cutoff_ms - h * DAY_MS)
    ranks = np.unique(sessions["rank"].to_numpy()[starts < at])
    out: dict[str, Any] = {"cutoff": _iso_ms(at), "horizon_days": h}
    if len(ranks) < config.min_validation_users:
        out["reason"] = (
            f"{len(ranks)} users before the validation cutoff (< {config.min_validation_users})"
        )
        return out
    if len(ranks) > config.max_fit_users:
        rng = np.random.default_rng(config.seed)
        ranks = np.sort(rng.choice(ranks, config.max_fit_users, replace=False))
    sub = sessions.loc[np.isin(sessions["rank"].to_numpy(), ranks)]
    try:
        # A final fit trained on shorter windows than H is checked the way it is used: the
        # slice's candidates train on windows as much shorter than h, so the slice sees the
        # horizon map's extrapolation too (trained on the slice's own window, they scored as
        # if no extrapolation were needed, and the blend over-trusted them: BG/NBD-truth AUC
        # -0.013 on bench_churn_grid.py).
        final_window = float(final.info.get("train_window_days", H))
        short = final_window < H and "gradient_boosting" in final.preds
        fitted = _fit_candidates(
            sub, at, h, config, importances=False, window=h * final_window / H if short else None
        )
    except (ValueError, NotEnoughHistory) as exc:
        out["reason"] = f"the candidates could not be fitted before the validation cutoff: {exc}"
        return out
    names = [n for n in CANDIDATES if n in final.preds and n in fitted.preds]
    if not names:
        out["reason"] = "no candidate could be fitted before the validation cutoff"
        return out
    count, _, returned = _outcomes(
        sub["start_ms"].to_numpy(np.int64),
        sub["rank"].to_numpy(np.int64),
        fitted.feats.index.to_numpy(),
        at,
        h,
    )
    out["users"] = len(returned)
    out["returned"] = int(returned.sum())
    out.update(
        choose_blend(
            {n: fitted.preds[n] for n in names},
            returned,
            count,
            default=config.defaults_for(names),
            prior_users=config.blend_prior_users,
            strata=_count_strata(fitted.feats),
        )
    )
    return out


def _predict(sessions: pd.DataFrame, cutoff_ms: int, config: ChurnConfig) -> ChurnResult:
    """Predict every user's return in ``[cutoff, cutoff + H)`` from sessions before the cutoff.

    The default predictor (``model``) is a convex blend of the candidates (gradient boosting
    and the RFM regression when trained, the return model, BG/NBD, Pareto/NBD) with weights
    chosen on a held-back slice of the calibration period (:func:`_validate`);
    ``info["blend"]`` reports them.

    Args:
        sessions: From :func:`churn_sessions` (only sessions starting before the cutoff).
        cutoff_ms: The cutoff (ms).
        config: Horizon and fit settings.

    Raises:
        NotEnoughHistory: No user has a session before the cutoff, or none has two and the
            log is too short for a pseudo-cutoff.
    """
    import time

    clock = time.perf_counter()
    H = config.horizon_days
    sessions = sessions.loc[sessions["start_ms"].to_numpy() < cutoff_ms]
    if len(sessions) == 0:
        raise NotEnoughHistory("no user has a session before the cutoff")
    final = _fit_candidates(sessions, cutoff_ms, H, config, importances=True)
    if not final.preds:
        raise NotEnoughHistory(
            "no user has two sessions before the cutoff and the log is too short for a "
            "pseudo-cutoff: nothing to learn returns from"
        )
    feats = final.feats
    ranks = feats.index.to_numpy()
    raw_ids = sessions.drop_duplicates("rank").set_index("rank").loc[ranks, "raw_id"].to_numpy()
    info: dict[str, Any] = {
        "horizon_days": H,
        "n_users": len(feats),
        "n_sessions": len(sessions),
        "config": asdict(config),
        **final.info,
    }
    validation_clock = time.perf_counter()
    blend = _validate(sessions, cutoff_ms, config, final) if config.blend else {}
    info["validation_seconds"] = time.perf_counter() - validation_clock
    names = [n for n in CANDIDATES if n in final.preds]
    if "p_weights" not in blend:
        # No validation (disabled, or too little history before it): the default weights.
        default = config.defaults_for(names)
        blend = {**blend, "p_weights": default, "n_weights": dict(default)}
    p_w, n_w = blend["p_weights"], blend["n_weights"]
    p_model = sum(w * final.preds[n][0] for n, w in p_w.items() if w > 0)
    p_model = np.clip(np.asarray(p_model, dtype=np.float64), 0.0, 1.0)
    # The count: each stratum's weights (a stratum the slice did not have: the overall ones).
    by_stratum = blend.get("n_weights_by_stratum", {})
    strata = _count_strata(feats)
    n_model = np.zeros(len(feats))
    for label in np.unique(strata):
        rows = strata == label
        weights = by_stratum.get(str(label), n_w)
        for n, w in weights.items():
            if w > 0:
                n_model[rows] += w * final.preds[n][1][rows]
    n_model = np.maximum(n_model, 0.0)
    info["model"] = "blend"
    info["blend"] = blend
    info["blend_p_return"] = _weights_text(p_w)
    info["blend_expected_sessions"] = (
        "; ".join(f"{label}: {_weights_text(w)}" for label, w in by_stratum.items())
        if by_stratum
        else _weights_text(n_w)
    )

    survival = dict(final.survival)
    curve = np.linspace(0.0, H, CURVE_POINTS)
    if "gradient_boosting" in final.preds:
        survival["gradient_boosting"] = _scaled_curve(
            final.preds["gradient_boosting"][0], survival.get("return_model"), curve
        )
    survival["model"] = _scaled_curve(p_model, survival.get("return_model"), curve)
    info["model_seconds"] = time.perf_counter() - clock

    predictions = pd.DataFrame(
        {
            "user": raw_ids,
            "p_return": p_model,
            "expected_sessions": n_model,
            "segment": _segment(p_model),
        }
    )
    if final.p_alive is not None:
        predictions["p_alive"] = final.p_alive
    for name in FEATURES:
        column = feats[name].to_numpy()
        if not np.all(np.isnan(column)):
            predictions[name] = column

    baselines: dict[str, pd.DataFrame] = {}
    if config.baselines:
        base_clock = time.perf_counter()
        baselines.update(_baselines(feats, final.train, final.horizon_map, skip=tuple(names)))
        for name in names:
            baselines[name] = pd.DataFrame(
                {"p_return": final.preds[name][0], "expected_sessions": final.preds[name][1]}
            )
            if name in final.params:
                baselines[name].attrs["params"] = final.params[name]
        info["baseline_seconds"] = time.perf_counter() - base_clock
    return ChurnResult(
        predictions=predictions,
        baselines=baselines,
        survival=survival,
        curve_days=curve,
        return_model=final.return_model,
        importances=final.importances,
        info=info,
    )


def _scaled_curve(p: np.ndarray, shape_from: np.ndarray | None, curve: np.ndarray) -> np.ndarray:
    """(U, CURVE_POINTS) P(no return by t): P(return by H) ``p`` (U,) spread over the window.

    The spread takes the parametric return model's shape when there is one, else linear.
    """
    H = curve[-1]
    if shape_from is None:
        return 1 - p[:, None] * (curve / H)[None]
    F = 1 - shape_from
    shape = np.divide(F, F[:, -1:], out=np.tile(curve / H, (len(F), 1)), where=F[:, -1:] > 0)
    return 1 - p[:, None] * shape


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _glm_inputs(feats: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Log-transformed, NaN-free inputs of the GLM baselines."""
    parts = []
    for name in columns:
        v = feats[name].to_numpy(np.float64)
        parts.append(np.log1p(np.maximum(np.nan_to_num(v), 0.0)))
    return np.stack(parts, axis=1)


def _rfm_columns(feats: pd.DataFrame) -> tuple[str, ...]:
    """Recency, frequency and, when the log has values, monetary value."""
    has_value = not np.all(np.isnan(feats["monetary"].to_numpy()))
    return ("recency_days", "frequency", "monetary") if has_value else ("recency_days", "frequency")


def _glm(
    train: tuple[list[pd.DataFrame], list[np.ndarray], list[np.ndarray]],
    feats: pd.DataFrame,
    columns: tuple[str, ...],
    horizon_map: _HorizonMap,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Logistic ``p_return`` and Poisson ``expected_sessions`` on log ``columns`` (n,) each.

    Trained on the pseudo-cutoff rows ``train`` (features, returned, counts), predicted for
    ``feats`` and carried to H by ``horizon_map``; None without rows of both outcomes.
    """
    from sklearn.linear_model import LogisticRegression, PoissonRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_X, train_y, train_n = train
    if not train_X or len(np.unique(np.concatenate(train_y))) != 2:
        return None
    X_train = _glm_inputs(pd.concat(train_X), columns)
    X_now = _glm_inputs(feats, columns)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    reg = make_pipeline(StandardScaler(), PoissonRegressor(alpha=1e-6, max_iter=1000))
    clf.fit(X_train, np.concatenate(train_y))
    reg.fit(X_train, np.concatenate(train_n))
    return horizon_map.p(clf.predict_proba(X_now)[:, 1]), horizon_map.n(reg.predict(X_now))


def _baselines(
    feats: pd.DataFrame,
    train: tuple[list[pd.DataFrame], list[np.ndarray], list[np.ndarray]],
    horizon_map: _HorizonMap,
    skip: tuple[str, ...] = (),
) -> dict[str, pd.DataFrame]:
    """Recency, frequency and RFM logistic/Poisson regressions on the pseudo-cutoff rows.

    Rows with windows shorter than H (a classic calibration/holdout split) predict through
    ``horizon_map``. Names in ``skip`` (already fitted as blend candidates) are left out.
    """
    out: dict[str, pd.DataFrame] = {}
    for name, columns in (
        ("recency", ("recency_days",)),
        ("frequency", ("frequency",)),
        ("rfm_logistic", _rfm_columns(feats)),
    ):
        if name in skip:
            continue
        fitted = _glm(train, feats, columns, horizon_map)
        if fitted is not None:
            out[name] = pd.DataFrame({"p_return": fitted[0], "expected_sessions": fitted[1]})
    return out


def _metrics(
    p: np.ndarray,
    n_pred: np.ndarray,
    count: np.ndarray,
    first_days: np.ndarray,
    returned: np.ndarray,
    surv: np.ndarray | None,
    curve: np.ndarray,
) -> dict[str, Any]:
    err = n_pred - count
    out: dict[str, Any] = {
        "auc": sm.roc_auc(returned, p),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(math.sqrt(np.mean(err**2))),
        "c_index": sm.concordance_index(first_days, returned, p),
        "brier": float(np.mean((p - returned) ** 2)),
        "calibration": sm.calibration_bins(returned, p),
    }
    times = curve[curve > 0]
    risk_at = 1 - surv[:, curve > 0] if surv is not None else np.tile(p[:, None], len(times))
    _, out["td_auc"] = sm.cumulative_dynamic_auc(first_days, returned, risk_at, times)
    out["ibs"] = (
        sm.integrated_brier_score(first_days, returned, surv[:, curve > 0], times)
        if surv is not None
        else None
    )
    return out


def evaluate_churn(
    result: ChurnResult,
    all_sessions: pd.DataFrame,
    cutoff_ms: int,
    oracle: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Metrics of the model, each baseline and the oracle against what happened in the window.

    Args:
        result: From :func:`predict_churn`.
        all_sessions: Session starts of the whole log: columns ``rank`` (users ranked as in
            :func:`churn_sessions`; sessions of users unseen before the cutoff have rank -1)
            and ``start_ms``.
        cutoff_ms: The cutoff the predictions were made at.
        oracle: Optional frame with ``p_return`` and ``expected_sessions`` in the rows of
            ``result.predictions`` (the synthetic truth's).

    Returns:
        ``{"model": {...}, "baselines": {name: {...}}, "oracle": {...}}`` (``oracle`` only
        when given), each with ``auc``, ``mae``, ``rmse``, ``c_index``, ``brier``,
        ``td_auc``, ``ibs`` and ``calibration``, plus ``window``: users and returns.
    """
    H = result.info["horizon_days"]
    users = np.arange(len(result.predictions))
    count, first_days, returned = _outcomes(
        all_sessions["start_ms"].to_numpy(np.int64),
        all_sessions["rank"].to_numpy(np.int64),
        users,
        cutoff_ms,
        H,
    )
    curve = result.curve_days
    pred = result.predictions
    out: dict[str, Any] = {
        "model": _metrics(
            pred["p_return"].to_numpy(),
            pred["expected_sessions"].to_numpy(),
            count,
            first_days,
            returned,
            result.survival.get("model"),
            curve,
        ),
        "baselines": {
            name: _metrics(
                frame["p_return"].to_numpy(),
                frame["expected_sessions"].to_numpy(),
                count,
                first_days,
                returned,
                result.survival.get(name),
                curve,
            )
            for name, frame in result.baselines.items()
        },
    }
    if oracle is not None:
        out["oracle"] = _metrics(
            oracle["p_return"].to_numpy(),
            oracle["expected_sessions"].to_numpy(),
            count,
            first_days,
            returned,
            None,
            curve,
        )
    out["window"] = {
        "users": len(users),
        "returned": int(returned.sum()),
        "sessions": float(count.sum()),
        "return_rate": float(returned.mean()) if len(users) else None,
    }
    return out
