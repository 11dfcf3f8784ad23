"""The return process of lifecycle episodes: whether, and after how many days, a user comes back.

A lifecycle episode (``env.episode: lifecycle``) follows one user over several sessions up to
``env.horizon_days``. When a session ends, the user's next session is drawn from a
:class:`ReturnProcess`, a mixture cure model driven by how the session went:

* the user drops out for good with probability ``sigmoid(dropout_intercept + dropout_coef . x)``;
* otherwise the gap to the next session (days) has the cumulative hazard
  ``H(t) = rate_u * exp(gap_coef . x) * (t / gap_scale_days) ** gap_shape`` (a Weibull
  baseline whose rate is scaled by the session's covariates and by the user's own activity
  ``rate_u``), so ``t = gap_scale_days * (E / (rate_u * exp(gap_coef . x))) ** (1 /
  gap_shape)`` with ``E ~ Exp(1)``;
* ``rate_u`` is a gamma frailty with mean 1 and shape ``frailty_shape`` (users differ in how
  often they come back; ``None``: every user has rate 1).

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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rlrec.errors import UserError

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
    "any_cart",
    "any_buy",
)
"""Covariates a return process may use: the counters, ``log(1 + n_events)`` and indicators."""


def session_covariates(counts: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """The covariate matrix of ended sessions.

    Args:
        counts: (B, 4) float or int session counters in :data:`SESSION_COUNTERS` order.
        names: Covariate names, each in :data:`SESSION_COVARIATES`.

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
        "any_cart": (c[:, 2] > 0).astype(np.float64),
        "any_buy": (c[:, 3] > 0).astype(np.float64),
    }
    if not names:
        return np.zeros((len(c), 0))
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
        """Build from a JSON/YAML mapping, naming the bad field on error.

        Raises:
            UserError: For an unknown field, a wrong type or an invalid value.
        """
        if not isinstance(raw, Mapping):
            raise UserError(f"{where}: expected a mapping of ReturnProcess fields")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"{where}.{unknown[0]}: unknown field; expected one of {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                if key == "covariates":
                    kwargs[key] = tuple(str(v) for v in value)
                elif key in ("dropout_coef", "gap_coef"):
                    kwargs[key] = tuple(float(v) for v in value)
                elif key == "frailty_shape":
                    kwargs[key] = None if value is None else float(value)
                elif key == "source":
                    kwargs[key] = {str(k): str(v) for k, v in dict(value).items()}
                else:
                    if isinstance(value, bool):
                        raise TypeError("bool")
                    kwargs[key] = float(value)
            except (TypeError, ValueError):
                raise UserError(f"{where}.{key}: {value!r} has the wrong type") from None
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping that :meth:`from_mapping` reads back."""
        out = asdict(self)
        out["covariates"] = list(self.covariates)
        out["dropout_coef"] = list(self.dropout_coef)
        out["gap_coef"] = list(self.gap_coef)
        return out

    def user_rates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) users' activity multipliers: gamma with mean 1, or ones without frailty."""
        if self.frailty_shape is None:
            return np.ones(n)
        return rng.gamma(self.frailty_shape, 1.0 / self.frailty_shape, size=n)

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
        scaled = np.maximum(t_days, 0.0) / self.gap_scale_days
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
        gap = self.gap_scale_days * np.power(
            e / (rate * self.rate_multiplier(x)), 1.0 / self.gap_shape
        )
        return np.where(drop, np.inf, gap)


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
