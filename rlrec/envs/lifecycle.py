"""The return process of lifecycle episodes: whether, and after how many days, a user comes back.

A lifecycle episode (``env.episode: lifecycle``) follows one user over several sessions up to
``env.horizon_days``. When a session ends, the user's next session is drawn from a
:class:`ReturnProcess`, a mixture cure model driven by how the session went:

* the user drops out for good with probability ``sigmoid(dropout_intercept + dropout_coef . x)``;
* otherwise the gap to the next session (days) is ``gap_offset_days`` plus a time with the
  cumulative hazard ``H(t) = rate_u * exp(gap_coef . x) * (t / gap_scale_days) ** gap_shape``
  (a Weibull baseline whose rate is scaled by the session's covariates and by the user's own
  activity ``rate_u``), drawn as ``t = gap_scale_days * (E / (rate_u * exp(gap_coef . x))) **
  (1 / gap_shape)`` with ``E ~ Exp(1)``;
* ``rate_u = G ** frailty_power`` with ``G`` gamma with mean 1 and shape ``frailty_shape``
  (users differ in how often they come back; ``None``: every user has rate 1). Power 1 is the
  fitted model's frailty on the hazard (:class:`rlrec.models.lifecycle.ReturnModel`); the
  synthetic truth's gamma activity sits inside the Weibull power (power ``gap_shape``).

:meth:`ReturnProcess.from_return_model` converts a fitted model (standardised covariates
folded into raw-unit coefficients; covariates the simulator does not produce are held at the
log's mean), :meth:`ReturnProcess.from_truth` the synthetic generator's true process.

``x`` holds the session covariates named in ``covariates``, each a function of what a log
shows of a session (see :data:`SESSION_COVARIATES`), so the same process can be fitted from a
log (:mod:`rlrec.models.lifecycle`) and sampled here. The next session starts in the last
session's category with probability ``carryover`` (interest carries over), else from the
fitted first-category distribution (interest drifts between sessions).

The process lives in ``SimModel.info["return_process"]`` (a plain mapping of this dataclass's
fields), where the fit or the truth world puts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlrec.config import from_mapping, to_mapping
from rlrec.errors import UserError
from rlrec.models.ground_truth import RETURN_OFFSET_MS, ReturnTruthConfig, session_satisfaction
from rlrec.models.lifecycle import DAY_MS, ReturnModel

__all__ = [
    "SESSION_COUNTERS",
    "SESSION_COVARIATES",
    "LifecycleState",
    "ReturnProcess",
    "session_covariates",
]

SESSION_COUNTERS: tuple[str, ...] = ("n_events", "n_engaged", "n_carts", "n_buys")
"""What the env counts per session: steps (events), engaged recommendations, carts, buys."""

SESSION_COVARIATES: tuple[str, ...] = (
    "n_events",
    "n_engaged",
    "n_carts",
    "n_buys",
    "log_events",
    "carted",
    "bought",
    "satisfaction",
)
"""Covariates a return process may use: the counters, ``log(1 + n_events)``, whether the session
carted or bought (the names of :data:`rlrec.models.lifecycle.SESSION_FEATURES`), and the
synthetic truth's satisfaction score (:func:`rlrec.models.ground_truth.session_satisfaction`,
with the session's carted steps as its engaged steps: the simulator has no favourites)."""


def session_covariates(
    counts: np.ndarray, names: tuple[str, ...], smooth: bool = False
) -> np.ndarray:
    """The covariate matrix of ended sessions.

    Args:
        counts: (B, 4) float or int session counters in :data:`SESSION_COUNTERS` order.
        names: Covariate names, each in :data:`SESSION_COVARIATES`.
        smooth: ``counts`` are expected counts rather than counts: ``carted``/``bought`` are
            then ``1 - exp(-count)``, the chance of at least one for a Poisson count with
            that mean (a step at 0.5 would make the indicator's slope at a mean meaningless).

    Returns:
        (B, len(names)) float64.
    """
    c = np.asarray(counts, dtype=np.float64)
    columns = {
        "n_events": c[:, 0],
        "n_engaged": c[:, 1],
        "n_carts": c[:, 2],
        "n_buys": c[:, 3],
        "log_events": np.log1p(c[:, 0]),
        "carted": -np.expm1(-c[:, 2]) if smooth else (c[:, 2] > 0).astype(np.float64),
        "bought": -np.expm1(-c[:, 3]) if smooth else (c[:, 3] > 0).astype(np.float64),
    }
    if not names:
        return np.zeros((len(c), 0))
    if "satisfaction" in names:
        columns["satisfaction"] = session_satisfaction(c[:, 0], c[:, 2], c[:, 2], c[:, 3])
    return np.stack([columns[n] for n in names], axis=1)


@dataclass(frozen=True)
class ReturnProcess:
    """How users come back after a session; see the module docstring for the model.

    Attributes:
        covariates: Names of the session covariates ``x`` (from :data:`SESSION_COVARIATES`).
        dropout_intercept: Log-odds of dropping out after a session with ``x = 0``.
        dropout_coef: Per-covariate log-odds slopes (negative: a better session keeps users).
        gap_shape: Weibull shape ``k`` > 0 of the gap (1: exponential).
        gap_scale_days: Weibull scale (days) at ``x = 0`` and rate 1.
        gap_coef: Per-covariate log rate multipliers (positive: a better session brings the
            user back sooner).
        frailty_shape: Shape of the users' gamma activity (mean 1); None for no frailty.
        frailty_power: ``rate_u = G ** frailty_power`` (1: gamma frailty on the hazard).
        gap_offset_days: The fixed part of every gap (days), before the Weibull part.
        carryover: Probability that the next session starts in the last session's category.
        source: Where the parameters come from (``fitted``, ``truth``, ``user``), per field.
    """

    covariates: tuple[str, ...] = ()
    dropout_intercept: float = -2.0
    dropout_coef: tuple[float, ...] = ()
    gap_shape: float = 1.0
    gap_scale_days: float = 3.0
    gap_coef: tuple[float, ...] = ()
    frailty_shape: float | None = None
    frailty_power: float = 1.0
    gap_offset_days: float = 0.0
    carryover: float = 0.5
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [c for c in self.covariates if c not in SESSION_COVARIATES]
        if bad:
            raise UserError(
                f"return_process.covariates: {bad[0]!r} is not a session covariate; expected "
                f"names from {list(SESSION_COVARIATES)}"
            )
        n = len(self.covariates)
        for name in ("dropout_coef", "gap_coef"):
            value = getattr(self, name)
            if len(value) != n:
                raise UserError(
                    f"return_process.{name}: {len(value)} values for {n} covariates; give one "
                    "per covariate"
                )
        numbers = {
            "dropout_intercept": self.dropout_intercept,
            "gap_shape": self.gap_shape,
            "gap_scale_days": self.gap_scale_days,
            "frailty_power": self.frailty_power,
            "gap_offset_days": self.gap_offset_days,
            "carryover": self.carryover,
            **{f"dropout_coef[{i}]": v for i, v in enumerate(self.dropout_coef)},
            **{f"gap_coef[{i}]": v for i, v in enumerate(self.gap_coef)},
        }
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise UserError(f"return_process.{name}: {value}, expected a finite number")
        if self.gap_shape <= 0 or self.gap_scale_days <= 0:
            raise UserError(
                "return_process.gap_shape and gap_scale_days must be > 0 (got "
                f"{self.gap_shape}, {self.gap_scale_days})"
            )
        if self.frailty_power <= 0 or self.gap_offset_days < 0:
            raise UserError(
                "return_process.frailty_power must be > 0 and gap_offset_days >= 0 (got "
                f"{self.frailty_power}, {self.gap_offset_days})"
            )
        if not 0.0 <= self.carryover <= 1.0:
            raise UserError(f"return_process.carryover: {self.carryover}, expected in [0, 1]")
        if self.frailty_shape is not None and not (
            math.isfinite(self.frailty_shape) and self.frailty_shape > 0
        ):
            raise UserError(
                f"return_process.frailty_shape: {self.frailty_shape}, expected > 0 or null"
            )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "return_process") -> ReturnProcess:
        """Build from a JSON/YAML mapping (:func:`rlrec.config.from_mapping`'s checks).

        Raises:
            UserError: For an unknown field, a wrong type or an invalid value.
        """
        return from_mapping(cls, raw, where)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping that :meth:`from_mapping` reads back."""
        out: dict[str, Any] = to_mapping(self)
        return out

    def user_rates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) users' activity multipliers ``G ** frailty_power``, or ones without frailty."""
        if self.frailty_shape is None:
            return np.ones(n)
        g = rng.gamma(self.frailty_shape, 1.0 / self.frailty_shape, size=n)
        return g if self.frailty_power == 1.0 else np.power(g, self.frailty_power)

    def dropout_probability(self, x: np.ndarray) -> np.ndarray:
        """(B,) probability of dropping out after sessions with covariates ``x`` (B, P)."""
        logit = self.dropout_intercept + x @ np.asarray(self.dropout_coef, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-logit))

    def rate_multiplier(self, x: np.ndarray) -> np.ndarray:
        """(B,) ``exp(gap_coef . x)``, how much sooner a user who stays comes back."""
        return np.exp(x @ np.asarray(self.gap_coef, dtype=np.float64))

    def survival(self, t_days: np.ndarray, x: np.ndarray, rate: np.ndarray) -> np.ndarray:
        """(B,) P(no return within ``t_days``) after sessions ``x`` for users of ``rate``.

        Dropout included: ``pi + (1 - pi) * exp(-H(t))``.
        """
        pi = self.dropout_probability(x)
        scaled = np.maximum(np.asarray(t_days) - self.gap_offset_days, 0.0) / self.gap_scale_days
        h = rate * self.rate_multiplier(x) * np.power(scaled, self.gap_shape)
        return pi + (1.0 - pi) * np.exp(-h)

    def sample_gap(self, x: np.ndarray, rate: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(B,) days to the next session; ``inf`` where the user dropped out.

        Args:
            x: (B, P) covariates of the sessions that just ended.
            rate: (B,) the users' activity multipliers.
            u: (2, B) uniforms in [0, 1): dropout, then the gap.
        """
        drop = u[0] < self.dropout_probability(x)
        e = -np.log1p(-u[1])  # Exp(1)
        gap = self.gap_offset_days + self.gap_scale_days * np.power(
            e / (rate * self.rate_multiplier(x)), 1.0 / self.gap_shape
        )
        return np.where(drop, np.inf, gap)

    @classmethod
    def from_return_model(cls, model: ReturnModel, carryover: float) -> ReturnProcess:
        """The simulator's process from a fitted :class:`~rlrec.models.lifecycle.ReturnModel`.

        The fitted model's covariates are standardised (``(x - mean) / std``); here they are
        raw, so each weight is divided by its ``std`` and the means move into the dropout
        intercept and the gap scale. A covariate the simulator does not produce (category
        diversity, monetary value) is held at the log's mean, where its standardised value is
        0 and it drops out of both parts; ``source`` says which.

        Args:
            model: The fitted return model.
            carryover: P(a session starts in the previous session's category), from the log.
        """
        names, dropout, gap = [], [], []
        intercept = float(model.gamma_0) if math.isfinite(model.gamma_0) else -50.0
        log_rate = 0.0
        held = []
        for j, name in enumerate(model.feature_names):
            std = float(model.feature_std[j])
            mean = float(model.feature_mean[j])
            if name not in SESSION_COVARIATES:
                held.append(name)
                continue
            names.append(name)
            dropout.append(float(model.gamma[j]) / std)
            gap.append(float(model.beta[j]) / std)
            if math.isfinite(model.gamma_0):
                intercept -= float(model.gamma[j]) * mean / std
            log_rate -= float(model.beta[j]) * mean / std
        # exp(c) (t / lam) ** k = (t / (lam exp(-c / k))) ** k
        scale = float(model.scale_days) * math.exp(-log_rate / float(model.shape))
        source = {"all": "fitted (rlrec.models.lifecycle.fit_return_model)"}
        if held:
            source["held_at_log_mean"] = ", ".join(held)
        if model.dropout_sd > 0:
            # Said, not silent: every simulated user gets the median user's dropout odds.
            source["dropout_sd_ignored"] = (
                f"{model.dropout_sd:.3g} (the simulator has no per-user dropout effect; fit with "
                "ReturnModelConfig(dropout_heterogeneity=False) for a simulator)"
            )
        return cls(
            covariates=tuple(names),
            dropout_intercept=intercept,
            dropout_coef=tuple(dropout),
            gap_shape=float(model.shape),
            gap_scale_days=scale,
            gap_coef=tuple(gap),
            frailty_shape=1.0 / model.frailty_var if model.frailty_var > 0 else None,
            gap_offset_days=float(model.offset_days),
            carryover=float(carryover),
            source=source,
        )

    @classmethod
    def from_truth(cls, truth: ReturnTruthConfig) -> ReturnProcess:
        """The synthetic generator's true return process, exactly.

        The truth draws a user's activity ``a ~ Gamma(shape, rate)`` and gaps with ``P(W >
        w) = exp(-(a exp(b z) w) ** k)``: with ``a = (shape / rate) G``, ``G`` of mean 1, that
        is ``H(w) = G ** k exp(b k z) (w / (rate / shape)) ** k``. Each session's first
        category is drawn afresh (no carry-over).
        """
        k = truth.gap_shape
        return cls(
            covariates=("satisfaction",),
            dropout_intercept=truth.churn_intercept,
            dropout_coef=(-truth.churn_slope,),
            gap_shape=k,
            gap_scale_days=truth.activity_rate / truth.activity_shape,
            gap_coef=(truth.satisfaction_effect * k,),
            frailty_shape=truth.activity_shape,
            frailty_power=k,
            gap_offset_days=RETURN_OFFSET_MS / DAY_MS,
            carryover=0.0,
            source={"all": "truth (the synthetic generator's return process)"},
        )


@dataclass
class LifecycleState:
    """Where B users stand in their lifecycle episodes; arrays are (B,) unless noted.

    Attributes:
        day: Start day of the current session (0 for the first), float64.
        since_last: Days between the previous session's end and this one's start (0 for the
            first session), float64.
        session_index: 0-based index of the current session, int64.
        rate: The user's activity multiplier (gamma frailty), float64.
        counts: (B, 4) int64 the current session's counters (:data:`SESSION_COUNTERS`).
    """

    day: np.ndarray
    since_last: np.ndarray
    session_index: np.ndarray
    rate: np.ndarray
    counts: np.ndarray

    @classmethod
    def start(cls, rate: np.ndarray) -> LifecycleState:
        """New users at the start of their first session, with activity ``rate`` (B,)."""
        n = len(rate)
        return cls(
            day=np.zeros(n),
            since_last=np.zeros(n),
            session_index=np.zeros(n, dtype=np.int64),
            rate=np.asarray(rate, dtype=np.float64),
            counts=np.zeros((n, len(SESSION_COUNTERS)), dtype=np.int64),
        )

    def copy(self) -> LifecycleState:
        """A deep copy (every array copied)."""
        return LifecycleState(**{k: v.copy() for k, v in vars(self).items()})

    def assign(self, rows: np.ndarray, other: LifecycleState) -> None:
        """Overwrite ``rows`` IN PLACE with ``other``'s rows (``len(rows)`` of them)."""
        for key, value in vars(other).items():
            getattr(self, key)[rows] = value
