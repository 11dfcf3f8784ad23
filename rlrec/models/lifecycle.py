"""User lifecycle: session timelines and a parametric return model fitted from logs.

A user's life in a log is a sequence of sessions. After each session ``s`` the user either
leaves for good (probability ``sigmoid(gamma_0 + gamma . x_s)``, a *cure* in survival terms)
or comes back after a gap whose hazard is Weibull with a gamma frailty on the user's rate::

    h(g | u, x_s) = u * exp(beta . x_s) * k / lam * (g / lam)^(k - 1),   u ~ Gamma(1/theta, 1/theta)

The dropout log-odds also carry a per-user random effect ``e ~ N(0, dropout_sd^2)`` shared by
all of the user's sessions (heterogeneous dropout, as BG/NBD's beta-distributed ``p``): it is
integrated out with Gauss-Hermite quadrature, and each user's posterior over it is updated by
how many times the user has already come back.

``x_s`` are the last session's covariates (standardised; see :data:`SESSION_FEATURES`). The
frailty ``u`` (mean 1, variance ``theta``) is shared by all of a user's gaps, so a user's past
gaps inform its future ones: that is what makes recency and frequency predictive without being
covariates. The last gap of every user is right-censored at the end of observation, where the
user may have left or not yet returned; the likelihood integrates out ``u`` in closed form and
sums over that mixture. It is fitted by maximum likelihood with L-BFGS on torch autograd
gradients (float64).

The model is cheap to sample (:meth:`ReturnModel.sample_next`), so the multi-session simulator
draws its users' returns from it, and it serialises to JSON with the provenance of every
parameter (:meth:`ReturnModel.to_json`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special

from rlrec.data.schema import EVENT_CODE
from rlrec.models.ground_truth import session_satisfaction

__all__ = [
    "DAY_MS",
    "SESSION_FEATURES",
    "ReturnModel",
    "ReturnModelConfig",
    "Timelines",
    "build_timelines",
    "fit_return_model",
    "session_table",
    "timelines_from_sessions",
]

DAY_MS = 86_400_000
"""Milliseconds in a day; the lifecycle works in days."""

SESSION_FEATURES: tuple[str, ...] = (
    "log_events",
    "carted",
    "bought",
    "log_categories",
    "log_value",
    "satisfaction",
)
"""Per-session covariates, in this order, where the log has them (constant ones are dropped).

``log_events`` = log(1 + events), ``carted``/``bought`` = the session had a cart/buy event,
``log_categories`` = log(1 + distinct categories), ``log_value`` = log(1 + summed ``value``),
``satisfaction`` = the synthetic truth's per-session score
(:func:`rlrec.models.ground_truth.session_satisfaction`: the same formula on any log's counts).
"""

_MIN_GAP_DAYS = 1e-6
"""Floor of a gap in days (log of a zero gap); sessions are >= 30 minutes apart anyway."""


def session_table(
    events: pd.DataFrame, before_ms: int | None = None, gap_ms: int | None = None
) -> pd.DataFrame:
    """One row per session from an events frame sorted by (session, step).

    Args:
        events: Columns ``user``, ``session``, ``timestamp`` (ms), optionally ``event``,
            ``item``, ``category`` and ``value``.
        before_ms: Keep only events strictly before this time (ms); None keeps all.
        gap_ms: Cut sessions again by this inactivity gap on each user's events, ignoring the
            ``session`` column (whose sessions preparation cuts at its split boundaries, which
            move when the log is truncated); None keeps the ``session`` column.

    Returns:
        Columns ``user``, ``session``, ``start_ms``, ``end_ms`` (first and last event),
        ``n_events``, ``n_engaged`` (steps with a fav, cart or buy), ``n_carts``, ``n_buys``,
        ``n_categories`` and ``value`` (NaN when the log has no value), sorted by
        (user, start_ms, session).
    """
    frame = events
    if before_ms is not None:
        frame = frame.loc[frame["timestamp"].to_numpy() < before_ms]
    if gap_ms is not None and len(frame):
        frame = _resessionize(frame, gap_ms)
    session = frame["session"].to_numpy(np.int64)
    if len(session) == 0:
        return pd.DataFrame(
            {
                "user": np.zeros(0, np.int64),
                "session": np.zeros(0, np.int64),
                "start_ms": np.zeros(0, np.int64),
                "end_ms": np.zeros(0, np.int64),
                "n_events": np.zeros(0, np.int64),
                "n_engaged": np.zeros(0, np.int64),
                "n_carts": np.zeros(0, np.int64),
                "n_buys": np.zeros(0, np.int64),
                "n_categories": np.zeros(0, np.int64),
                "value": np.zeros(0, np.float64),
            }
        )
    # Sorted by session, so a new session starts wherever the id changes.
    if np.any(session[1:] < session[:-1]):
        order = np.argsort(session, kind="stable")
        frame = frame.iloc[order]
        session = session[order]
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    ts = frame["timestamp"].to_numpy(np.int64)
    lengths = np.diff(np.r_[starts, len(session)])
    out: dict[str, Any] = {
        "user": frame["user"].to_numpy(np.int64)[starts],
        "session": session[starts],
        "start_ms": np.minimum.reduceat(ts, starts),
        "end_ms": np.maximum.reduceat(ts, starts),
        "n_events": lengths.astype(np.int64),
    }
    if "event" in frame:
        codes = frame["event"].to_numpy()
        out["n_carts"] = np.add.reduceat((codes == EVENT_CODE["cart"]).astype(np.int64), starts)
        out["n_buys"] = np.add.reduceat((codes == EVENT_CODE["buy"]).astype(np.int64), starts)
        engaging = np.isin(codes, [EVENT_CODE["fav"], EVENT_CODE["cart"], EVENT_CODE["buy"]])
    else:
        out["n_carts"] = np.zeros(len(starts), np.int64)
        out["n_buys"] = np.zeros(len(starts), np.int64)
        engaging = np.zeros(len(session), bool)
    # A step is a run of consecutive events on one item (events are in step order within a
    # session); it is engaged when any of its events is a fav, cart or buy.
    new_session = np.zeros(len(session), bool)
    new_session[starts] = True
    if "item" in frame:
        item = frame["item"].to_numpy()
        new_step = new_session | np.r_[True, item[1:] != item[:-1]]
    else:
        new_step = np.ones(len(session), bool)
    step_id = np.cumsum(new_step) - 1
    step_engaged = np.bincount(step_id, weights=engaging) > 0
    step_session = (np.cumsum(new_session) - 1)[new_step]
    out["n_engaged"] = np.bincount(
        step_session, weights=step_engaged, minlength=len(starts)
    ).astype(np.int64)
    if "category" in frame:
        cats = pd.DataFrame({"s": session, "c": frame["category"].to_numpy()})
        out["n_categories"] = cats.groupby("s", sort=True)["c"].nunique().to_numpy(np.int64)
    else:
        out["n_categories"] = np.ones(len(starts), np.int64)
    if "value" in frame:
        value = frame["value"].to_numpy(np.float64)
        known = np.add.reduceat((~np.isnan(value)).astype(np.int64), starts)
        total = np.add.reduceat(np.nan_to_num(value), starts)
        out["value"] = np.where(known > 0, total, np.nan)
    else:
        out["value"] = np.full(len(starts), np.nan)
    table = pd.DataFrame(out)
    return table.sort_values(["user", "start_ms", "session"], kind="stable").reset_index(drop=True)


def _resessionize(frame: pd.DataFrame, gap_ms: int) -> pd.DataFrame:
    """The frame in (user, time) order with ``session`` renumbered by the inactivity gap."""
    keys = [frame["user"].to_numpy(), frame["timestamp"].to_numpy()]
    ties = [frame[c].to_numpy() for c in ("session", "step") if c in frame]
    order = np.lexsort((*reversed(ties), keys[1], keys[0]))
    frame = frame.iloc[order]
    user = frame["user"].to_numpy()
    ts = frame["timestamp"].to_numpy(np.int64)
    new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(ts) > gap_ms)]
    return frame.assign(session=np.cumsum(new) - 1)


def _satisfaction(table: pd.DataFrame) -> np.ndarray:
    """The synthetic truth's satisfaction formula on each session's counts."""
    return np.asarray(
        session_satisfaction(
            table["n_events"].to_numpy(),
            table["n_engaged"].to_numpy(),
            table["n_carts"].to_numpy(),
            table["n_buys"].to_numpy(),
        ),
        dtype=np.float64,
    )


def session_features(table: pd.DataFrame) -> pd.DataFrame:
    """All of :data:`SESSION_FEATURES` the session table supports, one row per session."""
    features: dict[str, np.ndarray] = {
        "log_events": np.log1p(table["n_events"].to_numpy(np.float64)),
        "carted": (table["n_carts"].to_numpy() > 0).astype(np.float64),
        "bought": (table["n_buys"].to_numpy() > 0).astype(np.float64),
        "log_categories": np.log1p(table["n_categories"].to_numpy(np.float64)),
    }
    value = table["value"].to_numpy(np.float64)
    if not np.all(np.isnan(value)):
        # A session of unknown value counts as the median known one (neutral for the model).
        filled = np.where(np.isnan(value), np.nanmedian(value), value)
        features["log_value"] = np.log1p(np.maximum(filled, 0.0))
    features["satisfaction"] = _satisfaction(table)
    return pd.DataFrame({name: features[name] for name in SESSION_FEATURES if name in features})


@dataclass(frozen=True)
class Timelines:
    """Every user's sessions up to the end of observation, with gaps right-censored there.

    A gap runs from a session's last event to the next session's first (the time the user
    was away), so long sessions do not eat into it.

    Attributes:
        user: (S,) int64 user index of each session, grouped by user, sessions in time order.
        start_days: (S,) float64 session start (first event) in days since the epoch.
        features: (S, d) float64 raw (unstandardised) covariates of each session.
        feature_names: The d covariate names (a subset of :data:`SESSION_FEATURES`).
        gap_days: (S,) days from the session's end to the user's next session, or to
            ``end_days`` for its last one.
        observed: (S,) bool, True where the next session was seen (False: censored).
        end_days: End of observation in days (the cutoff).
    """

    user: np.ndarray
    start_days: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    gap_days: np.ndarray
    observed: np.ndarray
    end_days: float

    @property
    def n_sessions(self) -> int:
        """Number of sessions S."""
        return len(self.user)

    def last_index(self) -> np.ndarray:
        """(U,) index of each user's last session (users in order of first appearance here)."""
        return np.flatnonzero(~self.observed)

    def users(self) -> np.ndarray:
        """(U,) user index of each user's last session (the order of :meth:`last_index`)."""
        return self.user[self.last_index()]

    def subset(self, users: np.ndarray) -> Timelines:
        """The timelines of the users in ``users`` only."""
        mask = np.isin(self.user, users)
        return Timelines(
            user=self.user[mask],
            start_days=self.start_days[mask],
            features=self.features[mask],
            feature_names=self.feature_names,
            gap_days=self.gap_days[mask],
            observed=self.observed[mask],
            end_days=self.end_days,
        )


def timelines_from_sessions(
    table: pd.DataFrame,
    end_ms: int,
    feature_names: tuple[str, ...] | None = None,
    user_column: str = "user",
) -> Timelines:
    """Timelines from a :func:`session_table` (sorted by user, then start), censored at end_ms.

    Args:
        table: Session rows; those starting at or after ``end_ms`` are ignored.
        end_ms: End of observation (ms).
        feature_names: Covariates to keep; None keeps every one the log supports.
        user_column: The column that identifies the user (e.g. a rank by raw id).

    Raises:
        ValueError: If ``feature_names`` names a covariate the log does not have.
    """
    table = table.loc[table["start_ms"].to_numpy() < end_ms].reset_index(drop=True)
    feats = session_features(table)
    if feature_names is not None:
        missing = [n for n in feature_names if n not in feats.columns]
        if missing:
            raise ValueError(f"the log has no {', '.join(missing)} for the return model")
        feats = feats[list(feature_names)]
    user = table[user_column].to_numpy(np.int64)
    start_days = table["start_ms"].to_numpy(np.int64) / DAY_MS
    stop_days = np.minimum(table["end_ms"].to_numpy(np.int64), end_ms - 1) / DAY_MS
    end_days = end_ms / DAY_MS
    last = np.r_[user[1:] != user[:-1], True] if len(user) else np.zeros(0, bool)
    next_start = np.r_[start_days[1:], end_days] if len(user) else np.zeros(0)
    gap = np.where(last, end_days, next_start) - stop_days
    return Timelines(
        user=user,
        start_days=start_days,
        features=feats.to_numpy(np.float64).reshape(len(user), len(feats.columns)),
        feature_names=tuple(feats.columns),
        gap_days=np.maximum(gap, _MIN_GAP_DAYS),
        observed=~last,
        end_days=end_days,
    )


def build_timelines(
    events: pd.DataFrame, end_ms: int, feature_names: tuple[str, ...] | None = None
) -> Timelines:
    """Per-user session timelines from an events frame, censored at ``end_ms``.

    Args:
        events: Columns as for :func:`session_table`.
        end_ms: End of observation (ms); only events strictly before it are used.
        feature_names: Covariates to keep; None keeps every one the log supports.
    """
    return timelines_from_sessions(session_table(events, before_ms=end_ms), end_ms, feature_names)


@dataclass(frozen=True)
class ReturnModelConfig:
    """How :func:`fit_return_model` fits.

    Attributes:
        cure: Fit the dropout (cure) part; False fixes P(leave) at 0.
        frailty: Fit the gamma frailty; False fixes its variance at 0 (no user heterogeneity).
        l2: L2 penalty per session on the covariate weights (keeps separable data finite).
        max_iter: L-BFGS iterations.
        min_std: Covariates with a smaller standard deviation are dropped as constant.
        offset_days: The fixed part of every gap: sessions cut by an inactivity gap are at
            least that far apart (default 30 minutes, rlrec's session gap), so the Weibull
            part models the time beyond it.
        dropout_heterogeneity: Fit a per-user random effect on the dropout log-odds
            (normal, standard deviation ``dropout_sd``), pooled across users and updated by
            each user's own sessions; False fixes it at 0 (every user with the same sessions
            has the same dropout). Needs ``cure``.
        quadrature_nodes: Gauss-Hermite nodes that integrate the random effect out.
    """

    cure: bool = True
    frailty: bool = True
    l2: float = 1e-4
    max_iter: int = 500
    min_std: float = 1e-8
    offset_days: float = 30 / (24 * 60)
    dropout_heterogeneity: bool = True
    quadrature_nodes: int = 12


@dataclass(frozen=True)
class ReturnModel:
    """A fitted mixture-cure Weibull return model with gamma frailty.

    Attributes:
        feature_names: The covariates, in the order of ``beta`` and ``gamma``.
        feature_mean: (d,) mean used to standardise each covariate.
        feature_std: (d,) standard deviation used to standardise each covariate.
        shape: Weibull shape k of the gap hazard (of the time beyond ``offset_days``).
        scale_days: Weibull scale (days) at standardised covariates 0 and frailty 1.
        frailty_var: Variance theta of the gamma frailty on the user's rate (0: none).
        beta: (d,) log rate multipliers of the standardised covariates.
        gamma_0: Log-odds of leaving after a session at standardised covariates 0.
        gamma: (d,) log-odds weights of the standardised covariates on leaving.
        offset_days: Fixed part of every gap (the hazard is 0 before it).
        dropout_sd: Standard deviation of the user's random effect ``e ~ N(0, sd^2)`` on
            the dropout log-odds (0: none): P(leave after a session) is
            ``sigmoid(gamma_0 + gamma . x + e)``, ``e`` shared by all of a user's sessions.
        quadrature_nodes: Gauss-Hermite nodes that integrate ``e`` out.
        provenance: Parameter name -> how it was obtained (fitted, fixed, ...).
        fit_info: Log-likelihood, sessions, users, convergence.
    """

    feature_names: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    shape: float
    scale_days: float
    frailty_var: float
    beta: np.ndarray
    gamma_0: float
    gamma: np.ndarray
    offset_days: float = 0.0
    dropout_sd: float = 0.0
    quadrature_nodes: int = 12
    provenance: dict[str, str] = field(default_factory=dict)
    fit_info: dict[str, Any] = field(default_factory=dict)

    # --- covariates -----------------------------------------------------------------------

    def standardize(self, X: np.ndarray) -> np.ndarray:
        """(n, d) standardised covariates from raw ones (n, d)."""
        X = np.asarray(X, dtype=np.float64)
        # Keep a 2-D X as it is: reshape(-1, 0) cannot infer the rows of a model without
        # covariates (a user/time log whose sessions are all one event).
        if X.ndim != 2:
            X = X.reshape(-1, len(self.feature_names))
        return (X - self.feature_mean) / self.feature_std

    def p_leave(self, X: np.ndarray, dropout_effect: np.ndarray | None = None) -> np.ndarray:
        """(n,) P(the user leaves for good after a session with raw covariates X (n, d)).

        Args:
            X: (n, d) raw covariates.
            dropout_effect: (n,) the users' random effects on the log-odds; None gives the
                population average over them (a new, unknown user).
        """
        if self.gamma_0 == -math.inf:
            return np.zeros(len(np.atleast_2d(X)))
        logit = self.gamma_0 + self.standardize(X) @ self.gamma
        if dropout_effect is not None:
            return np.asarray(special.expit(logit + np.asarray(dropout_effect, np.float64)))
        nodes, log_w = self.dropout_nodes()
        return np.asarray(special.expit(logit[:, None] + nodes[None]) @ np.exp(log_w))

    def dropout_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-Hermite nodes (J,) of the dropout random effect and their log-weights (J,).

        ``E[f(e)] ~ sum_j exp(log_w_j) f(nodes_j)`` for ``e ~ N(0, dropout_sd^2)``; one node
        at 0 with weight 1 when there is no random effect (the model is then exactly the
        homogeneous one).
        """
        if self.dropout_sd <= 0 or self.gamma_0 == -math.inf:
            return np.zeros(1), np.zeros(1)
        return _hermite_nodes(self.quadrature_nodes, self.dropout_sd)

    def sample_dropout_effect(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) users' random effects on the dropout log-odds, drawn from N(0, dropout_sd^2)."""
        if self.dropout_sd <= 0:
            return np.zeros(n)
        return rng.normal(0.0, self.dropout_sd, size=n)

    def rate(self, X: np.ndarray) -> np.ndarray:
        """(n,) hazard multiplier exp(beta . x) of raw covariates X (n, d)."""
        return np.exp(self.standardize(X) @ self.beta)

    def cumulative_hazard(self, t_days: np.ndarray, X: np.ndarray) -> np.ndarray:
        """(n,) cumulative hazard exp(beta . x) ((t - offset) / lam)^k at frailty 1 (0 before)."""
        t = np.maximum(np.asarray(t_days, dtype=np.float64) - self.offset_days, 0.0)
        return self.rate(X) * (t / self.scale_days) ** self.shape

    # --- marginal and conditional predictions ---------------------------------------------

    def _log_frailty_laplace(self, n_gaps: np.ndarray, load: np.ndarray) -> np.ndarray:
        """(n,) log E[u^m exp(-u B)] for u ~ Gamma(1/theta, 1/theta), m = n_gaps, B = load."""
        if self.frailty_var <= 0:
            return -load
        a = 1.0 / self.frailty_var
        return (
            a * math.log(a)
            + special.gammaln(a + n_gaps)
            - special.gammaln(a)
            - (a + n_gaps) * np.log(a + load)
        )

    def survival(self, t_days: Any, X: np.ndarray) -> np.ndarray:
        """(n,) P(no return within t days of a session | covariates X (n, d)) for a new user.

        Marginal over the frailty prior and the dropout: ``p + (1 - p) L(H(t))``.
        """
        X = np.atleast_2d(X)
        p = self.p_leave(X)  # averaged over the dropout random effect
        load = self.cumulative_hazard(np.broadcast_to(t_days, (len(X),)), X)
        laplace = np.exp(self._log_frailty_laplace(np.zeros(len(X)), load))
        return p + (1 - p) * laplace

    def _posterior_terms(
        self, elapsed_days: np.ndarray, X_last: np.ndarray, history: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Log-weights of "left" and "alive, not back yet", and the frailty's posterior.

        The dropout random effect is integrated out on :meth:`dropout_nodes`: each node is
        weighted by the user's own evidence, P(stayed after every earlier session | node)
        (``history["stay_nodes"]``), so a user who came back many times is believed less
        likely to leave than the population, as in BG/NBD.

        Returns:
            ``log_left`` (n,), ``log_alive`` (n,), ``n_gaps`` (n,), ``load`` (n,) with the
            posterior frailty (alive) ``Gamma(1/theta + n_gaps, 1/theta + load)``.
        """
        n_gaps = np.asarray(history["n_gaps"], dtype=np.float64)
        past = np.asarray(history["load"], dtype=np.float64)
        load = past + self.cumulative_hazard(elapsed_days, X_last)
        log_leave, log_stay = self._log_last_nodes(X_last, history)
        with np.errstate(divide="ignore"):
            log_left = special.logsumexp(log_leave, axis=1) + self._log_frailty_laplace(
                n_gaps, past
            )
            log_alive = special.logsumexp(log_stay, axis=1) + self._log_frailty_laplace(
                n_gaps, load
            )
        return log_left, log_alive, n_gaps, load

    def _log_last_nodes(
        self, X_last: np.ndarray, history: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, J) log joint weights of each dropout node j with leaving / staying after the last.

        Leaving: ``log w_j + log P(stayed after every earlier session | j) + log P(leave | j)``;
        staying likewise with ``log P(stay | j)``.
        """
        X_last = np.atleast_2d(X_last)
        nodes, log_w = self.dropout_nodes()
        n = len(np.asarray(history["n_gaps"]))
        if self.gamma_0 == -math.inf:
            return np.full((n, 1), -np.inf), np.zeros((n, 1))
        logit = (self.gamma_0 + self.standardize(X_last) @ self.gamma)[:, None] + nodes[None]
        if len(nodes) == 1:
            before = np.zeros((n, 1))
        elif "stay_nodes" in history:
            before = np.asarray(history["stay_nodes"], dtype=np.float64)
        else:
            raise ValueError(
                "history lacks stay_nodes: a model with dropout heterogeneity needs the "
                "history from ReturnModel.history"
            )
        prior = log_w[None] + before
        # log sigmoid(l) = -softplus(-l); log(1 - sigmoid(l)) = -softplus(l).
        return prior - np.logaddexp(0.0, -logit), prior - np.logaddexp(0.0, logit)

    def p_return(
        self,
        elapsed_days: Any,
        horizon_days: Any,
        X_last: np.ndarray,
        history: dict[str, np.ndarray],
    ) -> np.ndarray:
        """(n,) P(a session within ``horizon_days`` | no session for ``elapsed_days``, history).

        Args:
            elapsed_days: (n,) days since each user's last session.
            horizon_days: Window length in days (scalar or (n,)).
            X_last: (n, d) raw covariates of each user's last session.
            history: From :meth:`history`: ``n_gaps`` (n,) observed gaps and ``load`` (n,)
                their summed baseline cumulative hazard.
        """
        return 1.0 - np.exp(self.log_no_return(elapsed_days, horizon_days, X_last, history))

    def log_no_return(
        self,
        elapsed_days: Any,
        horizon_days: Any,
        X_last: np.ndarray,
        history: dict[str, np.ndarray],
    ) -> np.ndarray:
        """(n,) log P(no session within ``horizon_days`` | history) (see :meth:`p_return`)."""
        elapsed = np.asarray(elapsed_days, dtype=np.float64)
        log_left, log_alive, _, _ = self._posterior_terms(elapsed, X_last, history)
        later = self._posterior_terms(elapsed + np.asarray(horizon_days), X_last, history)[1]
        denominator = np.logaddexp(log_left, log_alive)
        return np.minimum(np.logaddexp(log_left, later) - denominator, 0.0)

    def p_alive(
        self, elapsed_days: Any, X_last: np.ndarray, history: dict[str, np.ndarray]
    ) -> np.ndarray:
        """(n,) posterior P(the user has not left | history, no session for elapsed_days)."""
        log_left, log_alive, _, _ = self._posterior_terms(
            np.asarray(elapsed_days, dtype=np.float64), X_last, history
        )
        return np.exp(log_alive - np.logaddexp(log_left, log_alive))

    def history(self, timelines: Timelines) -> dict[str, np.ndarray]:
        """Each user's sufficient history (order of :meth:`Timelines.last_index`).

        Returns:
            ``n_gaps`` (U,) observed gaps, ``load`` (U,) their summed baseline cumulative
            hazard, ``elapsed`` (U,) days since the last session, ``X_last`` (U, d) raw
            covariates of the last session, ``X_mean`` (U, d) their mean over the user's
            sessions, ``stay_nodes`` (U, J) log P(stayed after each session before the last
            | dropout node j) (see :meth:`dropout_nodes`), and for drawing future sessions
            like the user's past ones: ``session_X`` (S, d) raw covariates of every session,
            ``session_duration`` (S,) days from its first event to its last, ``session_first``
            (U,) the row of each user's first one, ``session_count`` (U,) its number of
            sessions; ``duration_mean`` (U,) is the user's mean session duration.
        """
        last = timelines.last_index()
        first = np.r_[0, last[:-1] + 1]
        X = self._features_of(timelines)
        hazard = np.where(timelines.observed, self.cumulative_hazard(timelines.gap_days, X), 0.0)
        cumulative = np.r_[0.0, np.cumsum(hazard)]
        sessions = (last - first + 1).astype(np.float64)
        nodes, _ = self.dropout_nodes()
        if len(nodes) > 1 and len(X):
            logit = (self.gamma_0 + self.standardize(X) @ self.gamma)[:, None] + nodes[None]
            log_stay = np.where(timelines.observed[:, None], -np.logaddexp(0.0, logit), 0.0)
            stay_nodes = np.add.reduceat(log_stay, first, axis=0)
        else:
            stay_nodes = np.zeros((len(last), 1))
        # A gap runs from a session's last event, so the session's own duration is the start
        # of the next one minus the gap, or the end of observation minus the censored gap.
        following = np.r_[timelines.start_days[1:], timelines.end_days]
        following[last] = timelines.end_days
        duration = np.maximum(following - timelines.gap_days - timelines.start_days, 0.0)
        return {
            "stay_nodes": stay_nodes,
            "session_X": X,
            "session_duration": duration,
            "duration_mean": np.add.reduceat(duration, first) / sessions
            if len(duration)
            else np.zeros(0),
            "session_first": first,
            "session_count": (last - first + 1).astype(np.int64),
            "n_gaps": (last - first).astype(np.float64),
            "load": cumulative[last + 1] - cumulative[first],
            "elapsed": timelines.gap_days[last],
            "X_last": X[last],
            "X_mean": np.add.reduceat(X, first, axis=0) / sessions[:, None]
            if len(X) and X.shape[1]
            else X[last],
        }

    def _features_of(self, timelines: Timelines) -> np.ndarray:
        names = list(timelines.feature_names)
        missing = [n for n in self.feature_names if n not in names]
        if missing:
            raise ValueError(f"timelines lack the model's covariates {missing}")
        return timelines.features[:, [names.index(n) for n in self.feature_names]]

    # --- sampling -------------------------------------------------------------------------

    def sample_user_rate(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) frailties drawn from the prior Gamma(1/theta, 1/theta) (ones without frailty)."""
        if self.frailty_var <= 0:
            return np.ones(n)
        a = 1.0 / self.frailty_var
        return rng.gamma(a, 1.0 / a, size=n)

    def sample_next(
        self,
        rng: np.random.Generator,
        X: np.ndarray,
        user_rate: np.ndarray | None = None,
        elapsed_days: np.ndarray | None = None,
        dropout_effect: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n,) days from a session to the user's next one; ``inf`` where the user leaves.

        Args:
            rng: Random generator (the only source of randomness).
            X: (n, d) raw covariates of the session just ended.
            user_rate: (n,) frailties; None draws them from the prior.
            elapsed_days: (n,) days already waited without a session (the gap is drawn
                conditional on exceeding it, and the dropout is not drawn again); None is 0.
            dropout_effect: (n,) the users' random effects on the dropout log-odds (from
                :meth:`sample_dropout_effect`, kept per user); None leaves with the
                population-average probability (a user seen once).
        """
        X = np.atleast_2d(X)
        n = len(X)
        u = self.sample_user_rate(rng, n) if user_rate is None else np.asarray(user_rate)
        leave = (
            rng.random(n) < self.p_leave(X, dropout_effect)
            if elapsed_days is None
            else np.zeros(n, bool)
        )
        waited = np.zeros(n) if elapsed_days is None else np.asarray(elapsed_days, np.float64)
        waited = np.maximum(waited - self.offset_days, 0.0)
        # Inverse of the cumulative hazard: (w / lam)^k = (e / lam)^k + E / (u exp(beta . x)).
        extra = rng.exponential(size=n) / (u * self.rate(X))
        gap = self.offset_days + self.scale_days * (
            (waited / self.scale_days) ** self.shape + extra
        ) ** (1.0 / self.shape)
        return np.where(leave, np.inf, gap)

    def expected_sessions(
        self,
        elapsed_days: Any,
        horizon_days: float,
        X_last: np.ndarray,
        history: dict[str, np.ndarray],
        seed: int = 0,
        n_draws: int = 200,
    ) -> np.ndarray:
        """(n,) expected sessions in the next ``horizon_days``, by seeded Monte Carlo.

        Each draw samples "left or alive", the dropout random effect (a quadrature node) and
        the frailty from their posterior, then simulates gaps and dropouts. The gap after the
        last session follows its covariates; the model does not forecast session content, so
        each future session's covariates are drawn from the user's own past sessions
        (``history["session_X"]``, ``session_first``, ``session_count`` from :meth:`history`).
        Without those keys they are the user's mean covariates (``history["X_mean"]``; the
        last session's when absent too): the gap rate and the dropout are not linear in the
        covariates, so the mean session's rate and dropout are not the mean session's, and
        with them the counts of the synthetic logs came out about 15% too high. Repeating the
        last session's content forever over-weights one session. A gap runs from a session's
        last event, so each future session also lasts as long as the past session it was
        drawn from (``history["session_duration"]``; ``duration_mean`` on the mean path; 0
        when absent) before its gap starts. The same seed and inputs give the same result.
        """
        elapsed = np.asarray(elapsed_days, dtype=np.float64)
        n = len(elapsed)
        rng = np.random.default_rng(seed)
        log_left, log_alive, n_gaps, load = self._posterior_terms(elapsed, X_last, history)
        alive = np.exp(log_alive - np.logaddexp(log_left, log_alive))
        # Per-user hazard multipliers and dropout, computed once (not per draw and step):
        # standardising (n * n_draws, d) covariates at every step dominated the cost at scale.
        X_next = np.atleast_2d(history.get("X_mean", X_last))
        rate_last = np.repeat(self.rate(np.atleast_2d(X_last)), n_draws)
        resample = "session_X" in history
        if resample:
            # Per past session: rate and dropout log-odds, computed once; a draw's next session
            # is session_first[user] + floor(uniform * session_count[user]).
            X_past = np.atleast_2d(history["session_X"])
            past_rate = self.rate(X_past)
            past_logit = (
                self.gamma_0 + self.standardize(X_past) @ self.gamma
                if self.gamma_0 != -math.inf
                else np.full(len(X_past), -np.inf)
            )
            past_first = np.repeat(np.asarray(history["session_first"], np.int64), n_draws)
            past_count = np.repeat(np.asarray(history["session_count"], np.int64), n_draws)
            past_duration = np.asarray(
                history.get("session_duration", np.zeros(len(X_past))), np.float64
            )
        rate_next = np.repeat(self.rate(X_next), n_draws)
        duration_next = np.repeat(
            np.asarray(history.get("duration_mean", np.zeros(n)), np.float64), n_draws
        )
        nodes, _ = self.dropout_nodes()
        if len(nodes) > 1:
            # The random effect of an alive user: its nodes weighted by having stayed after
            # every session so far (the last included), drawn by inverting the cumulative
            # weights with one uniform per draw.
            log_stay = self._log_last_nodes(X_last, history)[1]
            post = np.exp(log_stay - special.logsumexp(log_stay, axis=1, keepdims=True))
            cdf = np.cumsum(post, axis=1)
            draw = rng.random((n, n_draws))
            pick = np.zeros((n, n_draws), np.int64)
            for j in range(len(nodes) - 1):  # J passes over (n, n_draws), not an (n, n_draws, J)
                pick += draw > cdf[:, j : j + 1]
            effect = nodes[pick.reshape(-1)]
        else:
            effect = np.zeros(n * n_draws)
        logit_next = (
            self.gamma_0 + self.standardize(X_next) @ self.gamma
            if self.gamma_0 != -math.inf
            else np.full(len(X_next), -np.inf)
        )
        leave_next = special.expit(np.repeat(logit_next, n_draws) + effect)
        is_alive = rng.random((n, n_draws)).reshape(-1) < np.repeat(alive, n_draws)
        if self.frailty_var > 0:
            a = 1.0 / self.frailty_var
            u = rng.gamma(np.repeat(a + n_gaps, n_draws), 1.0 / np.repeat(a + load, n_draws))
        else:
            u = np.ones(n * n_draws)
        clock = np.repeat(elapsed, n_draws)
        end = clock + horizon_days
        counts = np.zeros(n * n_draws)
        k, lam = self.shape, self.scale_days
        # The gap after the last session, conditional on having lasted ``clock`` already (no
        # second dropout draw: the posterior P(alive) has it); see :meth:`sample_next`.
        waited = np.maximum(clock - self.offset_days, 0.0)
        extra = rng.exponential(size=n * n_draws) / (u * rate_last)
        gap = self.offset_days + lam * ((waited / lam) ** k + extra) ** (1.0 / k) - clock
        active = is_alive.copy()
        for _ in range(10_000):
            clock = clock + np.where(active, gap, 0.0)
            active &= clock < end
            if not active.any():
                break
            counts += active
            idx = np.flatnonzero(active)
            # The session that starts now lasts a while before the next gap starts (a gap
            # runs from a session's last event): its duration, like its content, is one of
            # the user's past sessions'. Leaving it out advanced the clock too slowly and
            # over-counted the busiest users' sessions (3% in all on the synthetic logs).
            if resample:
                past = past_first[idx] + (rng.random(len(idx)) * past_count[idx]).astype(np.int64)
                leave = rng.random(len(idx)) < special.expit(past_logit[past] + effect[idx])
                extra = rng.exponential(size=len(idx)) / (u[idx] * past_rate[past])
                lasts = past_duration[past]
            else:
                leave = rng.random(len(idx)) < leave_next[idx]
                extra = rng.exponential(size=len(idx)) / (u[idx] * rate_next[idx])
                lasts = duration_next[idx]
            step = np.where(leave, np.inf, lasts + self.offset_days + lam * extra ** (1.0 / k))
            gap = np.zeros(n * n_draws)
            gap[idx] = step
            active[idx] &= np.isfinite(step)
        return counts.reshape(n, n_draws).mean(axis=1)

    # --- persistence ----------------------------------------------------------------------

    def to_json(self) -> str:
        """The model as a JSON document (arrays as lists, provenance per parameter)."""
        payload = {
            "kind": "mixture_cure_weibull_gamma_frailty",
            "version": 1,
            "feature_names": list(self.feature_names),
            "feature_mean": self.feature_mean.tolist(),
            "feature_std": self.feature_std.tolist(),
            "shape": self.shape,
            "scale_days": self.scale_days,
            "frailty_var": self.frailty_var,
            "beta": self.beta.tolist(),
            "gamma_0": None if self.gamma_0 == -math.inf else self.gamma_0,
            "gamma": self.gamma.tolist(),
            "offset_days": self.offset_days,
            "dropout_sd": self.dropout_sd,
            "quadrature_nodes": self.quadrature_nodes,
            "provenance": self.provenance,
            "fit_info": self.fit_info,
        }
        return json.dumps(payload, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReturnModel:
        """Load a model written by :meth:`to_json`."""
        data = json.loads(text)
        if data.get("kind") != "mixture_cure_weibull_gamma_frailty":
            raise ValueError(f"not a return model (kind {data.get('kind')!r})")
        return cls(
            feature_names=tuple(data["feature_names"]),
            feature_mean=np.asarray(data["feature_mean"], dtype=np.float64),
            feature_std=np.asarray(data["feature_std"], dtype=np.float64),
            shape=float(data["shape"]),
            scale_days=float(data["scale_days"]),
            frailty_var=float(data["frailty_var"]),
            beta=np.asarray(data["beta"], dtype=np.float64),
            gamma_0=-math.inf if data["gamma_0"] is None else float(data["gamma_0"]),
            gamma=np.asarray(data["gamma"], dtype=np.float64),
            offset_days=float(data.get("offset_days", 0.0)),
            # Models written before dropout heterogeneity have none.
            dropout_sd=float(data.get("dropout_sd", 0.0)),
            quadrature_nodes=int(data.get("quadrature_nodes", 12)),
            provenance=dict(data["provenance"]),
            fit_info=dict(data["fit_info"]),
        )


def _hermite_nodes(n: int, sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (n,) and log-weights (n,) of ``E[f(e)]`` for ``e ~ N(0, sd^2)`` (Gauss-Hermite)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return sd * nodes, np.log(weights / math.sqrt(2 * math.pi))


def fit_return_model(timelines: Timelines, config: ReturnModelConfig | None = None) -> ReturnModel:
    """Fit the mixture-cure Weibull gamma-frailty return model by maximum likelihood.

    Args:
        timelines: From :func:`build_timelines`.
        config: Which parts to fit and the optimiser's settings.

    Raises:
        ValueError: With no observed gap there is nothing to fit a gap distribution to.
    """
    import torch

    config = config or ReturnModelConfig()
    if timelines.n_sessions == 0 or not timelines.observed.any():
        raise ValueError("no user has two sessions: the return model needs observed gaps")
    std = timelines.features.std(axis=0) if timelines.n_sessions else np.zeros(0)
    keep = np.flatnonzero(std > config.min_std)
    names = tuple(timelines.feature_names[i] for i in keep)
    mean = timelines.features[:, keep].mean(axis=0)
    sd = std[keep]
    Z = (timelines.features[:, keep] - mean) / sd
    d = len(keep)

    last = timelines.last_index()
    n_users = len(last)
    user_of = np.repeat(np.arange(n_users), np.diff(np.r_[-1, last]))
    t = torch.as_tensor
    Zt = t(Z, dtype=torch.float64)
    away = np.maximum(timelines.gap_days - config.offset_days, _MIN_GAP_DAYS)
    log_gap = t(np.log(away), dtype=torch.float64)
    observed = t(timelines.observed, dtype=torch.float64)
    user_idx = t(user_of, dtype=torch.int64)
    last_t = t(last, dtype=torch.int64)
    obs_t = t(np.flatnonzero(timelines.observed), dtype=torch.int64)
    obs_user = t(user_of[timelines.observed], dtype=torch.int64)
    n_gaps = torch.zeros(n_users, dtype=torch.float64).index_add_(0, user_idx, observed)
    log_scale0 = float(np.log(np.median(away[timelines.observed])))

    # Parameter vector: log k, log lam, log theta, beta (d), gamma_0, gamma (d), log sd.
    heterogeneous = config.cure and config.dropout_heterogeneity
    start = np.concatenate(
        [[0.0, log_scale0, math.log(0.5)], np.zeros(d), [-1.0], np.zeros(d), [math.log(0.5)]]
    )
    n_sessions = timelines.n_sessions
    # Standard-normal Gauss-Hermite nodes (J,) and log-weights; the sd scales them in the loss.
    if heterogeneous:
        unit_nodes, unit_log_w = _hermite_nodes(config.quadrature_nodes, 1.0)
    else:
        unit_nodes, unit_log_w = np.zeros(1), np.zeros(1)
    z_nodes = t(unit_nodes, dtype=torch.float64)
    log_w = t(unit_log_w, dtype=torch.float64)

    def unpack(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return v[0], v[1], v[2], v[3 : 3 + d], v[3 + d], v[4 + d : 4 + 2 * d], v[4 + 2 * d]

    def negative_ll(v: torch.Tensor) -> torch.Tensor:
        log_k, log_lam, log_theta, beta, gamma_0, gamma, log_sd = unpack(v)
        k = torch.exp(log_k)
        eta = Zt @ beta
        log_load = eta + k * (log_gap - log_lam)
        load = torch.exp(log_load)
        log_density = eta + log_k - log_lam + (k - 1) * (log_gap - log_lam)
        # Dropout per quadrature node: the user's random effect e = sd z_j shifts every one of
        # its sessions' log-odds (J = 1, e = 0 without heterogeneity). Sessions followed by a
        # return contribute P(stay) (S_obs, J); each user's last session P(stay) or P(leave)
        # (U, J), with log P(leave) = log P(stay) + logit. Split so that the (S, J) work is one
        # softplus on the observed gaps only: it dominates the fit's cost at scale.
        stays = torch.zeros((n_users, len(z_nodes)), dtype=torch.float64)
        if config.cure:
            shift = torch.exp(log_sd) * z_nodes[None]
            base = gamma_0 + Zt @ gamma
            stays = stays.index_add_(
                0, obs_user, -torch.nn.functional.softplus(base[obs_t][:, None] + shift)
            )
            logit_last = base[last_t][:, None] + shift
            log_stay_last = -torch.nn.functional.softplus(logit_last)
            log_leave_last = log_stay_last + logit_last
        else:
            log_stay_last = torch.zeros((n_users, 1), dtype=torch.float64)
            log_leave_last = torch.full((n_users, 1), -math.inf, dtype=torch.float64)
        per_gap = observed * log_density
        fixed = torch.zeros(n_users, dtype=torch.float64).index_add_(0, user_idx, per_gap)
        past = torch.zeros(n_users, dtype=torch.float64).index_add_(0, user_idx, observed * load)
        censored = load[last_t]
        if config.frailty:
            a = torch.exp(-log_theta)

            def laplace(b: torch.Tensor) -> torch.Tensor:
                return (
                    a * torch.log(a)
                    + torch.lgamma(a + n_gaps)
                    - torch.lgamma(a)
                    - (a + n_gaps) * torch.log(a + b)
                )
        else:

            def laplace(b: torch.Tensor) -> torch.Tensor:
                return -b

        tail = torch.logaddexp(
            log_leave_last + laplace(past)[:, None],
            log_stay_last + laplace(past + censored)[:, None],
        )
        dropout = torch.logsumexp(log_w[None] + stays + tail, dim=1)
        ll = (fixed + dropout).sum()
        penalty = config.l2 * n_sessions * ((beta**2).sum() + (gamma**2).sum())
        return -(ll - penalty) / n_sessions

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        vt = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        loss = negative_ll(vt)
        loss.backward()
        assert vt.grad is not None
        value = float(loss.detach())
        if not np.isfinite(value):
            return 1e10, np.zeros_like(v)
        return value, vt.grad.numpy().copy()

    bounds: list[tuple[float | None, float | None]] = [(-3.0, 3.0), (-12.0, 12.0)]
    bounds.append((-12.0, 4.0) if config.frailty else (0.0, 0.0))
    bounds += [(-20.0, 20.0)] * d
    bounds.append((-20.0, 20.0) if config.cure else (0.0, 0.0))
    bounds += [(-20.0, 20.0) if config.cure else (0.0, 0.0)] * d
    # The sd's floor e^-5 is "no heterogeneity" in effect (the model reports 0 below it).
    bounds.append((-5.0, 2.0) if heterogeneous else (start[-1], start[-1]))
    # Element-wise float64 ops on ~1e6 sessions gain nothing from torch's intra-op threads
    # and lose much when the cores are shared: one thread, restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = optimize.minimize(
            objective,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": config.max_iter},
        )
    finally:
        torch.set_num_threads(threads)
    v = result.x
    fitted = "fitted by maximum likelihood (right-censored gaps)"
    provenance = {
        "shape": fitted,
        "scale_days": fitted,
        "frailty_var": fitted if config.frailty else "fixed at 0 (config.frailty=False)",
        "beta": fitted,
        "gamma_0": fitted if config.cure else "fixed at -inf (config.cure=False)",
        "gamma": fitted if config.cure else "fixed at 0 (config.cure=False)",
        "feature_mean": "mean of each covariate over the fitted sessions",
        "feature_std": "standard deviation of each covariate over the fitted sessions",
        "offset_days": "fixed (config.offset_days: the sessionization gap)",
        "dropout_sd": fitted
        if heterogeneous
        else "fixed at 0 (config.dropout_heterogeneity=False or config.cure=False)",
        "quadrature_nodes": "config.quadrature_nodes",
    }
    fitted_sd = float(np.exp(v[4 + 2 * d])) if heterogeneous else 0.0
    return ReturnModel(
        feature_names=names,
        feature_mean=mean,
        feature_std=sd,
        shape=float(np.exp(v[0])),
        scale_days=float(np.exp(v[1])),
        frailty_var=float(np.exp(v[2])) if config.frailty else 0.0,
        beta=np.asarray(v[3 : 3 + d], dtype=np.float64),
        gamma_0=float(v[3 + d]) if config.cure else -math.inf,
        gamma=np.asarray(v[4 + d : 4 + 2 * d], dtype=np.float64),
        offset_days=config.offset_days,
        dropout_sd=fitted_sd if fitted_sd > math.exp(-5.0) * 1.001 else 0.0,
        quadrature_nodes=config.quadrature_nodes,
        provenance=provenance,
        fit_info={
            "log_likelihood": -float(result.fun) * n_sessions,
            "n_sessions": int(n_sessions),
            "n_users": int(n_users),
            "n_observed_gaps": int(timelines.observed.sum()),
            "converged": bool(result.success),
            "iterations": int(result.nit),
            "config": asdict(config),
        },
    )
