"""The ground truth of a synthetic log: the configuration that drew it and its true model.

A synthetic dataset carries ``ground_truth.json`` and ``ground_truth.npz`` beside its events
(see :class:`GroundTruth`), so that a fit can be checked against the parameters that generated
the log after preparation has remapped the vocabularies. :class:`SyntheticConfig` lives here,
not in :mod:`rlrec.models.synthetic`, because a ground truth holds it and reloads it; the
generator module re-exports it.

The truth also holds the users' **return process** (:class:`ReturnTruthConfig`): whether and
when a user comes back after a session, driven by the user's latent activity and by how
satisfying the session was (:func:`session_satisfaction`). :func:`oracle_return` predicts,
from a log's history before a cutoff and the true parameters, each user's chance of coming
back within a horizon: the ceiling a churn model fitted from the log can reach.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rlrec.config import from_mapping, to_mapping
from rlrec.errors import UserError
from rlrec.models.calibration import SESSION_GAP_MS, marginal_stay_curve
from rlrec.models.session_draw import draw_sessions
from rlrec.models.sim_model import ARRAY_FIELDS, SCALAR_FIELDS, Provenance, SimModel

if TYPE_CHECKING:
    from rlrec.data.dataset import PreparedDataset

__all__ = [
    "DAY_MS",
    "GROUND_TRUTH_JSON",
    "GROUND_TRUTH_NPZ",
    "HOUR_MS",
    "ORIGIN_MS",
    "RETURN_OFFSET_MS",
    "SATISFACTION_CENTER",
    "SATISFACTION_SCALE",
    "SATISFACTION_WEIGHTS",
    "GroundTruth",
    "ReturnTruthConfig",
    "SyntheticConfig",
    "expected_sessions_per_user",
    "load_ground_truth",
    "oracle_return",
    "sample_session_outcomes",
    "satisfaction_of",
    "session_satisfaction",
    "true_model",
]

GROUND_TRUTH_JSON = "ground_truth.json"
GROUND_TRUTH_NPZ = "ground_truth.npz"
HOUR_MS = 3_600_000
"""Milliseconds in an hour (the generator's session gaps are drawn in hours)."""
DAY_MS = 24 * HOUR_MS
"""Milliseconds in a day (the return process's rates are per day)."""
ORIGIN_MS = 1_511_568_000_000
"""2017-11-25 00:00 UTC in ms: synthetic logs start here (the Taobao sample's period)."""
RETURN_OFFSET_MS = SESSION_GAP_MS
"""The fixed part of every gap between a session's last event and the next session's first.

A session ends after 30 minutes without an event (the sessionization gap), so every gap a
log shows exceeds it: the return process draws the part beyond it,
``start[s + 1] - end[s] - RETURN_OFFSET_MS``, from its Weibull law. A fitter measures the same
quantity from a log.
"""
RETURN_ACTIVITY = "return_activity"
"""Name of the (n_users,) array of the users' true activity rates in ``ground_truth.npz``."""

SATISFACTION_WEIGHTS: tuple[float, float, float, float] = (0.5, 1.0, 1.0, 1.5)
"""Weights of log1p(events), log1p(engaged steps), log1p(carts), log1p(buys) in a session's
satisfaction (see :func:`session_satisfaction`)."""
SATISFACTION_CENTER = 1.3564
"""Mean of the weighted sum over the default synthetic world's sessions (200k-session pilot,
seed 0): fixed, so that the formula is the same for every log."""
SATISFACTION_SCALE = 1.3748
"""Standard deviation of the weighted sum over the same pilot: z is about N(0, 1)-scaled."""


def session_satisfaction(
    n_events: np.ndarray, n_engaged: np.ndarray, n_carts: np.ndarray, n_buys: np.ndarray
) -> np.ndarray:
    """The satisfaction score z of sessions, from counts that a log also shows.

    ``z = (0.5 log1p(events) + log1p(engaged) + log1p(carts) + 1.5 log1p(buys) - center) /
    scale`` with the fixed :data:`SATISFACTION_CENTER` and :data:`SATISFACTION_SCALE` (so z is
    about standardized on the default synthetic world, and the same formula applies to any
    logged session). The logarithms make the tenth view of a session matter less than the
    first cart.

    Args:
        n_events: (S,) events in each session (all types).
        n_engaged: (S,) engaged steps: steps (runs of consecutive events on one item) with at
            least one fav, cart or buy event.
        n_carts: (S,) cart events.
        n_buys: (S,) buy events.

    Returns:
        (S,) float64 satisfaction scores.
    """
    w_events, w_engaged, w_carts, w_buys = SATISFACTION_WEIGHTS
    raw = (
        w_events * np.log1p(np.asarray(n_events, dtype=np.float64))
        + w_engaged * np.log1p(np.asarray(n_engaged, dtype=np.float64))
        + w_carts * np.log1p(np.asarray(n_carts, dtype=np.float64))
        + w_buys * np.log1p(np.asarray(n_buys, dtype=np.float64))
    )
    return (raw - SATISFACTION_CENTER) / SATISFACTION_SCALE


@dataclass(frozen=True)
class ReturnTruthConfig:
    """The true return process of synthetic users (mixture cure model with gamma frailty).

    User ``u`` has a latent activity rate ``a_u ~ Gamma(activity_shape, rate=activity_rate)``
    (per day). Session ``s`` ends with a satisfaction ``z_s`` (:func:`session_satisfaction`).
    After it the user churns for good with probability ``sigmoid(churn_intercept -
    churn_slope * z_s)``; otherwise the next session starts ``RETURN_OFFSET_MS + W`` after the
    session's last event, ``W ~ Weibull(gap_shape, scale = 1 / rate)`` in days with
    ``rate = a_u * exp(satisfaction_effect * z_s)``, i.e. ``P(W > w) = exp(-(rate w)^k)``.
    Users' first sessions start uniformly over ``SyntheticConfig.start_spread_days`` from the
    origin; sessions continue until churn or until a session would start after
    ``observation_days`` (right-censoring: the log ends there).

    Attributes:
        enabled: Draw sessions by this process; False keeps the older, satisfaction-blind
            placement (``SyntheticConfig.sessions_per_user`` sessions with log-normal gaps).
        activity_shape: Gamma shape of the users' activity rates (smaller: more unequal).
        activity_rate: Gamma rate (days); the mean activity is ``shape / rate`` per day.
        gap_shape: Weibull shape k of the gaps (1: exponential; < 1: bursty, a decreasing
            return hazard, as real logs show).
        satisfaction_effect: b, the log-change of the return rate per unit of satisfaction.
        churn_intercept: c0, the log-odds of churning after a session of average satisfaction.
        churn_slope: c1, how much satisfaction lowers the log-odds of churning.
        observation_days: The log's length from the origin (days).
    """

    enabled: bool = True
    activity_shape: float = 2.0
    activity_rate: float = 0.5
    gap_shape: float = 0.8
    satisfaction_effect: float = 0.5
    churn_intercept: float = -3.5
    churn_slope: float = 1.0
    observation_days: float = 9.0

    def __post_init__(self) -> None:
        checks = [
            (self.activity_shape > 0 and self.activity_rate > 0, "activity shape, rate > 0"),
            (self.gap_shape > 0, "gap_shape must be > 0"),
            (self.observation_days > 0, "observation_days must be > 0"),
        ]
        for name in (
            "activity_shape",
            "activity_rate",
            "gap_shape",
            "satisfaction_effect",
            "churn_intercept",
            "churn_slope",
            "observation_days",
        ):
            checks.append((math.isfinite(getattr(self, name)), f"{name} must be finite"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def churn_probability(self, z: np.ndarray) -> np.ndarray:
        """(S,) P(the user never returns after a session of satisfaction ``z`` (S,))."""
        return 1.0 / (1.0 + np.exp(-(self.churn_intercept - self.churn_slope * np.asarray(z))))

    def gap_rate(self, activity: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(S,) Weibull rate (per day) of the gap after a session: ``a_u exp(b z)``."""
        return np.asarray(activity) * np.exp(self.satisfaction_effect * np.asarray(z))

    def gap_survival(self, days: np.ndarray, rate: np.ndarray) -> np.ndarray:
        """(S,) P(W > days) for Weibull gaps of rate ``rate``; 1 for days <= 0."""
        w = np.maximum(np.asarray(days, dtype=np.float64), 0.0)
        return np.exp(-((np.asarray(rate) * w) ** self.gap_shape))

    def draw_gaps(self, rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(S,) Weibull gap draws W in days, one per rate in ``rate`` (S,)."""
        return rng.weibull(self.gap_shape, size=len(rate)) / np.asarray(rate)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic world.

    Defaults marked "Taobao" were calibrated on the 10,000-event Taobao UserBehavior sample
    (114 users, 1,700 sessions with a 30-minute gap): its per-step leave hazard falls from
    0.30 after the first step to about 0.08 (fitted curve below); 46% of consecutive steps stay
    in the same category; the event mix is pv 90.5%, cart 5.4%, fav 2.1%, buy 2.1%; users have
    14.9 sessions on average; the median in-session gap is 58 s (90th percentile 333 s) and the
    median gap between a user's sessions 7 h. Its per-streak stay rate rises from 0.28 at
    streak 1 to 0.63, 0.71, 0.74, 0.78 and 0.88 at streak 8 or more, and its sessions differ
    widely in focus (per-session continuation of sessions with 8+ steps: sd 0.29); 13.8% of
    steps after a session's first revisit an item seen earlier in the session.

    Attributes:
        n_users: Number of users; ignored when ``n_events`` is given.
        n_events: Approximate number of events to generate; sets ``n_users`` from the expected
            events per user.
        n_categories: Number of categories K (default fits the fit's default top-K of 50 with no
            folding, so the truth and the fit share one category space).
        n_items: Number of items, split over categories in proportion to their sizes.
        category_zipf: Zipf exponent of category sizes (Taobao: 0.86 on the top 100).
        item_zipf: Zipf exponent of item popularity within a category (long tail).
        min_items_per_category: Smallest category's item count (>= 2, so that a stay can
            always move to a different item).
        switch_concentration: Log-normal sigma of the switch affinities; larger makes each
            category's switch destinations more specific.
        n_category_groups: Categories fall into this many groups (e.g. a department; at
            most K are used);
            switches inside a group are ``group_affinity`` times likelier.
        group_affinity: Affinity multiplier for switches inside a category's group.
        focus_alpha: Each session's stay probability is drawn from
            ``Beta(focus_alpha, focus_beta)`` (Taobao: 0.5 and 0.6, a least-squares fit of the
            session-averaged stay curve to the sample's per-streak rates; continuation 0.45
            and mean streak 1.6 against the sample's 0.46 and 1.62).
        focus_beta: See ``focus_alpha``.
        revisit_rate: P(the item is one seen earlier in the current category streak, other
            than the previous one), at steps whose streak is 3 or more (Taobao: 0.45 gives a
            within-session revisit rate near the sample's 13.8%).
        hazard_1: P(leave) after the first step of a session (Taobao: 0.299, maximum
            likelihood fit of the curve to the sample's session lengths, t <= 40).
        hazard_inf: P(leave) after many steps (Taobao fit: 0.084).
        hazard_tau: Decay scale (steps) of the hazard curve (Taobao fit: 3.84).
        p_cart: Mean P(cart | viewed) over categories (Taobao: 5.4% of events are carts,
            0.0593 per view).
        buy_given_cart: Mean P(buy | carted) (Taobao: buys per cart, 0.385).
        funnel_spread: Log-normal sigma of the per-category funnel rates around their means.
        p_fav: P(fav | viewed), category independent; shapes only the event mix (Taobao:
            0.0234 per view).
        sessions_per_user: Mean sessions per user (Taobao: 14.9); 1 + Poisson(mean - 1). Only
            with ``returns.enabled`` False (the return process sets the count otherwise).
        start_spread_days: Users' first sessions start uniformly over this many days.
        event_gap_median_s: Median gap between events in a session (Taobao: 58 s).
        event_gap_sigma: Log-normal sigma of in-session gaps (Taobao p90 333 s: 1.36).
        event_gap_max_s: In-session gaps are clipped to this (well under the 30-minute gap).
        session_gap_median_h: Median gap between a user's sessions (Taobao: 7 h); only with
            ``returns.enabled`` False.
        session_gap_sigma: Log-normal sigma of the gaps between sessions (idem).
        session_gap_min_h: Between-session gaps are at least this (well over 30 minutes;
            idem).
        max_streak: Length S of the stored ``stay_by_streak`` curve (last bin for s >= S).
        max_steps: Length T of the stored ``leave_hazard`` curve (last bin for t >= T).
        response: The world's true response to recommendations (response parameter name ->
            value, see :data:`rlrec.models.prior.RESPONSE_PRIOR`); unnamed ones keep the
            SimModel defaults. An organic log never shows them: they matter only in the truth
            world (:mod:`rlrec.envs.truth`), where the sim-to-real benchmark draws them.
        returns: The users' true return process: when (and whether) a user comes back after a
            session (:class:`ReturnTruthConfig`). The defaults give about 14 sessions per user
            over 9 days, near the Taobao sample's 14.9.
        seed: Seed of every random draw.
    """

    n_users: int = 2000
    n_events: int | None = None
    n_categories: int = 50
    n_items: int = 20_000
    category_zipf: float = 0.86
    item_zipf: float = 1.0
    min_items_per_category: int = 5
    switch_concentration: float = 1.0
    n_category_groups: int = 8
    group_affinity: float = 4.0
    focus_alpha: float = 0.5
    focus_beta: float = 0.6
    revisit_rate: float = 0.45
    hazard_1: float = 0.299
    hazard_inf: float = 0.084
    hazard_tau: float = 3.84
    p_cart: float = 0.0593
    buy_given_cart: float = 0.385
    funnel_spread: float = 0.3
    p_fav: float = 0.0234
    sessions_per_user: float = 14.9
    start_spread_days: float = 2.0
    event_gap_median_s: float = 58.0
    event_gap_sigma: float = 1.36
    event_gap_max_s: float = 1200.0
    session_gap_median_h: float = 7.0
    session_gap_sigma: float = 1.2
    session_gap_min_h: float = 1.0
    max_streak: int = 64
    max_steps: int = 256
    seed: int = 0
    response: dict[str, float] = field(default_factory=dict)
    returns: ReturnTruthConfig = field(default_factory=ReturnTruthConfig)

    def __post_init__(self) -> None:
        from rlrec.models.prior import RESPONSE_PARAMETERS

        unknown = sorted(set(self.response) - set(RESPONSE_PARAMETERS))
        if unknown:
            raise ValueError(
                f"response: {unknown[0]!r} is not one of {', '.join(RESPONSE_PARAMETERS)}"
            )
        checks = [
            (self.n_users >= 1, "n_users must be >= 1"),
            (self.n_events is None or self.n_events >= 1, "n_events must be >= 1"),
            (self.n_categories >= 2, "n_categories must be >= 2"),
            (self.min_items_per_category >= 2, "min_items_per_category must be >= 2"),
            (
                self.n_items >= self.n_categories * self.min_items_per_category,
                "n_items must be >= n_categories * min_items_per_category",
            ),
            (self.focus_alpha > 0 and self.focus_beta > 0, "focus_alpha, focus_beta > 0"),
            (0 <= self.revisit_rate <= 1, "revisit_rate must be in [0, 1]"),
            (0 < self.hazard_1 <= 1 and 0 < self.hazard_inf <= 1, "hazards must be in (0, 1]"),
            (self.hazard_tau > 0, "hazard_tau must be > 0"),
            (0 <= self.p_cart < 1 and 0 <= self.buy_given_cart <= 1, "funnel rates in [0, 1]"),
            (0 <= self.p_fav < 1, "p_fav must be in [0, 1)"),
            (self.sessions_per_user >= 1, "sessions_per_user must be >= 1"),
            (self.n_category_groups >= 1, "n_category_groups must be >= 1"),
            (
                self.event_gap_max_s * 1000 < SESSION_GAP_MS
                and self.session_gap_min_h * HOUR_MS > SESSION_GAP_MS,
                "in-session gaps must stay under 30 min and session gaps over it",
            ),
            (self.max_streak >= 1 and self.max_steps >= 1, "max_streak, max_steps >= 1"),
            (
                not self.returns.enabled or self.start_spread_days < self.returns.observation_days,
                "start_spread_days must be < returns.observation_days",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def stay_curve(self) -> np.ndarray:
        """(max_streak,) session-averaged P(stay | streak s), s = 1..S (last bin: s >= S)."""
        return marginal_stay_curve(
            self.focus_alpha, self.focus_beta, self.hazard_curve(), self.max_streak
        )

    def hazard_curve(self) -> np.ndarray:
        """(max_steps,) P(leave right after step t) for t = 1..T."""
        t = np.arange(self.max_steps, dtype=float)
        return self.hazard_inf + (self.hazard_1 - self.hazard_inf) * np.exp(-t / self.hazard_tau)

    def expected_steps_per_session(self) -> float:
        """E[session length in steps] under the hazard curve."""
        hazard = self.hazard_curve()
        survival = np.cumprod(np.r_[1.0, 1.0 - hazard[:-1]])  # P(step t happens), t = 1..T
        # Beyond T the hazard is constant: a geometric tail.
        tail = survival[-1] * (1 - hazard[-1]) / hazard[-1]
        return float(survival.sum() + tail)

    def resolved_n_users(self) -> int:
        """``n_users``, or the count that yields about ``n_events`` events."""
        if self.n_events is None:
            return self.n_users
        per_step = 1.0 + self.p_fav + self.p_cart * (1.0 + self.buy_given_cart)
        sessions = self.sessions_per_user
        if self.returns.enabled:
            # A pilot run of the process gives the mean (the count depends on the sessions).
            sessions = expected_sessions_per_user(self)
        per_user = sessions * self.expected_steps_per_session() * per_step
        return max(1, round(self.n_events / per_user))


@dataclass(frozen=True)
class GroundTruth:
    """The true parameters of a synthetic log.

    Attributes:
        model: The true user model in raw-id space: ``category_ids`` are the raw category ids
            (``c0``..), ``item_ids`` the raw integer item ids, ``category_of_dataset_category``
            the identity over the true categories.
        config: The configuration that generated the log.
        activity: (n_users,) each user's true activity rate ``a_u`` (per day), indexed by the
            raw user id (the generator's users are 0..n_users - 1); None when the return
            process is off.
    """

    model: SimModel
    config: SyntheticConfig
    activity: np.ndarray | None = None

    def to_files(self) -> dict[str, bytes]:
        """``ground_truth.json`` and ``ground_truth.npz`` as bytes, to write beside a dataset."""
        buffer = io.BytesIO()
        arrays = {name: np.asarray(getattr(self.model, name)) for name in ARRAY_FIELDS}
        if self.activity is not None:
            arrays[RETURN_ACTIVITY] = np.asarray(self.activity, dtype=np.float64)
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        payload = {
            "category_ids": list(self.model.category_ids),
            **{name: float(getattr(self.model, name)) for name in SCALAR_FIELDS},
            "config": to_mapping(self.config),
        }
        return {
            GROUND_TRUTH_JSON: (json.dumps(payload, indent=2) + "\n").encode(),
            GROUND_TRUTH_NPZ: buffer.getvalue(),
        }


def load_ground_truth(dataset_dir: str | os.PathLike[str]) -> GroundTruth | None:
    """The ground truth written beside a synthetic dataset, or None for a real log.

    A ground truth written before the return process existed (no ``returns`` in its config)
    loads with the process off.

    Raises:
        UserError: If the ground-truth files exist but are unreadable or inconsistent (one
            line naming the file and what is wrong).
    """
    root = Path(dataset_dir)
    json_file, npz_file = root / GROUND_TRUTH_JSON, root / GROUND_TRUTH_NPZ
    if not json_file.is_file() and not npz_file.is_file():
        return None
    if not (json_file.is_file() and npz_file.is_file()):
        raise UserError(
            f"{root}: has only one of {GROUND_TRUTH_JSON} and {GROUND_TRUTH_NPZ}; "
            "generate the dataset again with 'rlrec data synth'"
        )
    try:
        payload = json.loads(json_file.read_text())
        with np.load(npz_file, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAY_FIELDS}
            activity = npz[RETURN_ACTIVITY] if RETURN_ACTIVITY in npz.files else None
        config_map = dict(payload["config"])
        category_ids = tuple(payload["category_ids"])
        scalars = {name: float(payload[name]) for name in SCALAR_FIELDS}
    except (json.JSONDecodeError, KeyError, OSError, ValueError, TypeError) as exc:
        raise UserError(f"{root}: unreadable ground truth ({exc}); generate it again") from None
    # Written before the return process existed: its sessions were placed without it.
    config_map.setdefault("returns", {"enabled": False})
    config = from_mapping(SyntheticConfig, config_map, where=f"{json_file}:config")
    try:
        model = SimModel(
            category_ids=category_ids,
            **arrays,
            **scalars,  # type: ignore[arg-type]
            provenance={
                name: Provenance("user", "synthetic ground truth") for name in ARRAY_FIELDS
            },
            info={"ground_truth": True},
        )
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"{json_file}: inconsistent ground truth ({exc}); generate it again"
        ) from None
    if config.returns.enabled:
        # With n_events, the user count comes from a pilot run: not repeated at every load.
        n_users = config.n_users if config.n_events is None else None
        if (
            activity is None
            or activity.ndim != 1
            or len(activity) == 0
            or (n_users is not None and len(activity) != n_users)
            or not np.all(np.isfinite(activity))
            or np.any(activity <= 0)
        ):
            count = n_users if n_users is not None else "the users'"
            raise UserError(
                f"{npz_file}: {RETURN_ACTIVITY} must hold {count} positive finite activity "
                "rates (one per user); generate the dataset again"
            )
        activity = np.asarray(activity, dtype=np.float64)
    else:
        activity = None
    return GroundTruth(model=model, config=config, activity=activity)


def true_model(config: SyntheticConfig) -> SimModel:
    """Draw the world's true parameters (categories, items, switches, funnel) from the seed.

    The same seed gives the same world; the log's events use a separate stream of the seed.
    """
    rng = np.random.default_rng([config.seed, 0])
    k = config.n_categories
    ranks = np.arange(1, k + 1, dtype=float)
    size = ranks ** (-config.category_zipf)
    size /= size.sum()  # (K,) category share of sessions' first steps and of items

    # Items per category in proportion to size, at least the minimum; remainder to the largest.
    spare = config.n_items - k * config.min_items_per_category
    n_per_cat = config.min_items_per_category + np.floor(size * spare).astype(np.int64)
    n_per_cat[0] += config.n_items - n_per_cat.sum()
    item_category = np.repeat(np.arange(k), n_per_cat)  # (N,) contiguous per category
    within_rank = np.arange(config.n_items) - np.repeat(np.cumsum(n_per_cat) - n_per_cat, n_per_cat)
    popularity = (within_rank + 1.0) ** (-config.item_zipf)
    popularity /= np.bincount(item_category, weights=popularity, minlength=k)[item_category]

    # Switch destinations: bigger categories attract more, with a per-pair log-normal affinity
    # and a boost inside the category's group (related categories).
    group = rng.permutation(np.arange(k) % min(config.n_category_groups, k))
    affinity = rng.lognormal(0.0, config.switch_concentration, size=(k, k))
    affinity *= np.where(group[:, None] == group[None, :], config.group_affinity, 1.0)
    switch = size[None, :] * affinity
    np.fill_diagonal(switch, 0.0)
    switch /= switch.sum(axis=1, keepdims=True)

    noise = rng.lognormal(0.0, config.funnel_spread, size=(2, k))
    noise /= noise.mean(axis=1, keepdims=True)
    p_cart = np.clip(config.p_cart * noise[0], 0.0, 0.95)
    p_buy = p_cart * np.clip(config.buy_given_cart * noise[1], 0.0, 1.0)

    truth = Provenance("user", "synthetic ground truth")
    return SimModel(
        category_ids=tuple(f"c{c}" for c in range(k)),
        switch_matrix=switch,
        stay_by_streak=config.stay_curve(),
        initial_category=size,
        leave_hazard=config.hazard_curve(),
        item_ids=np.arange(config.n_items, dtype=np.int64),
        item_category=item_category,
        item_popularity=popularity,
        p_cart=p_cart,
        p_buy=p_buy,
        category_of_dataset_category=np.arange(k),
        **{name: float(v) for name, v in config.response.items()},
        provenance={name: truth for name in ARRAY_FIELDS},
        info={"ground_truth": True, "seed": config.seed},
    )


def satisfaction_of(content: dict[str, np.ndarray]) -> np.ndarray:
    """(S,) :func:`session_satisfaction` of the sessions of a :func:`draw_sessions` batch."""
    return session_satisfaction(
        content["n_events"], content["n_engaged"], content["n_carts"], content["n_buys"]
    )


def sample_session_outcomes(
    truth: GroundTruth, n_sessions: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Satisfaction and duration of ``n_sessions`` fresh sessions of the true world.

    Sessions' content does not depend on the user or on earlier sessions, so these are draws
    of the law that every session of the log follows: the oracle's Monte Carlo and the size
    pilot use them.

    Returns:
        ``z`` (n_sessions,) satisfaction scores and ``duration`` (n_sessions,) ms.
    """
    rng = np.random.default_rng([seed, 3])
    content = draw_sessions(truth.model, truth.config, n_sessions, rng)
    return satisfaction_of(content), content["duration"].astype(np.float64)


def expected_sessions_per_user(config: SyntheticConfig, n_pilot: int = 4000) -> float:
    """Mean sessions per user under the return process, from a seeded pilot of ``n_pilot`` users.

    Only the timing is simulated (sessions' satisfaction and duration come from
    :func:`sample_session_outcomes`), so it costs a fraction of generating the log; it sizes
    ``n_users`` for a requested ``n_events``.
    """
    truth = GroundTruth(model=true_model(config), config=config)
    z_pool, duration_pool = sample_session_outcomes(truth, 20_000, config.seed)
    rng = np.random.default_rng([config.seed, 4])
    returns = config.returns
    activity = rng.gamma(returns.activity_shape, 1.0 / returns.activity_rate, size=n_pilot)
    t = rng.random(n_pilot) * config.start_spread_days
    count = np.ones(n_pilot)
    alive = np.arange(n_pilot)
    while len(alive):
        draw = rng.integers(0, len(z_pool), size=len(alive))
        z = z_pool[draw]
        stays = rng.random(len(alive)) >= returns.churn_probability(z)
        gap = returns.draw_gaps(returns.gap_rate(activity[alive], z), rng)
        nxt = t[alive] + (duration_pool[draw] + RETURN_OFFSET_MS) / DAY_MS + gap
        ok = stays & (nxt < returns.observation_days)
        alive = alive[ok]
        t[alive] = nxt[ok]
        count[alive] += 1
    return float(count.mean())


def _session_summaries(events: pd.DataFrame, cutoff_ms: int) -> pd.DataFrame:
    """Each user's sessions before ``cutoff_ms``: start, end and the satisfaction counts.

    Sessions are cut by the 30-minute gap on the events strictly before the cutoff (not read
    from the dataset's session ids, which a split boundary can cut), so the result depends
    only on those events: the log truncated at the cutoff gives the same.

    Args:
        events: ``events.parquet`` columns ``user``, ``item``, ``event``, ``timestamp``.
        cutoff_ms: The cutoff (ms).

    Returns:
        One row per session, sorted by user and start: ``user``, ``start``, ``end`` (ms),
        ``n_events``, ``n_engaged``, ``n_carts``, ``n_buys``.
    """
    from rlrec.data.schema import EVENT_CODE

    before = events.loc[events["timestamp"].to_numpy() < cutoff_ms]
    columns = ("user", "start", "end", "n_events", "n_engaged", "n_carts", "n_buys")
    if before.empty:
        return pd.DataFrame({name: np.zeros(0, np.int64) for name in columns})
    order = np.lexsort((before["timestamp"].to_numpy(), before["user"].to_numpy()))
    user = before["user"].to_numpy()[order]
    time = before["timestamp"].to_numpy()[order]
    item = before["item"].to_numpy()[order]
    kind = before["event"].to_numpy()[order]
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_session = new_user | np.r_[True, np.diff(time) > SESSION_GAP_MS]
    session = np.cumsum(new_session) - 1
    new_step = new_session | np.r_[True, item[1:] != item[:-1]]
    step = np.cumsum(new_step) - 1
    engaging = np.isin(kind, [EVENT_CODE["fav"], EVENT_CODE["cart"], EVENT_CODE["buy"]])
    step_engaged = np.bincount(step, weights=engaging)
    step_session = session[new_step]
    n = int(session[-1]) + 1
    first = np.flatnonzero(new_session)
    last = np.r_[first[1:], len(time)] - 1
    return pd.DataFrame(
        {
            "user": user[first],
            "start": time[first],
            "end": time[last],
            "n_events": np.bincount(session, minlength=n),
            "n_engaged": np.bincount(step_session, weights=step_engaged > 0, minlength=n),
            "n_carts": np.bincount(session, weights=kind == EVENT_CODE["cart"], minlength=n),
            "n_buys": np.bincount(session, weights=kind == EVENT_CODE["buy"], minlength=n),
        }
    )


def oracle_return(
    truth: GroundTruth,
    dataset: PreparedDataset,
    cutoff: float,
    horizon_days: float,
    n_paths: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """The true process's prediction of each user's return in ``[cutoff, cutoff + horizon)``.

    For every user with an event strictly before ``cutoff``, from that history only: the
    last session's satisfaction ``z`` and the time ``e`` since its last event. The user's churn
    state is not known; it is integrated over its posterior given the silence since the last
    session, ``P(alive | no return yet) = q S(e') / (1 - q + q S(e'))`` with ``q = 1 -
    P(churn | z)``, ``S`` the true gap survival and ``e' = e - RETURN_OFFSET_MS``. Then
    ``p_return = q (S(e') - S(e' + h)) / (1 - q + q S(e'))`` in closed form, with ``h`` the
    horizon clipped at the end of the log's observation window (the process stops there).
    ``expected_sessions`` is ``p_return`` times the expected sessions in the window given a
    first return in it: a seeded Monte Carlo that draws the first return inside the window
    (so only the later sessions are random) and the later sessions' satisfaction and duration
    from the generator's own session sampler.

    Args:
        truth: The dataset's ground truth, with its return process on.
        dataset: The synthetic dataset (or the same log truncated at the cutoff).
        cutoff: Unix seconds; only events strictly before it are read.
        horizon_days: The window's length in days (> 0).
        n_paths: Monte Carlo paths per user for ``expected_sessions`` (its standard error is
            about the window's session-count spread / sqrt(n_paths)).
        seed: Seed of the Monte Carlo.

    Returns:
        Columns ``user`` (dataset user index), ``p_return``, ``expected_sessions``, one row
        per user with history before the cutoff, sorted by user.

    Raises:
        UserError: If the truth has no return process or the horizon is not positive.
    """
    returns = truth.config.returns
    if not returns.enabled or truth.activity is None:
        raise UserError(
            "this ground truth has no return process (generated before it existed, or with "
            "returns.enabled false); generate the dataset again with 'rlrec data synth'"
        )
    if not (horizon_days > 0 and math.isfinite(horizon_days)):
        raise UserError(f"horizon {horizon_days} days: expected a positive number of days")
    cutoff_ms = math.ceil(cutoff * 1000.0)  # an integer ms t is before cutoff iff t < this
    sessions = _session_summaries(dataset.events, cutoff_ms)
    empty = pd.DataFrame(
        {"user": np.zeros(0, np.int64), "p_return": np.zeros(0), "expected_sessions": np.zeros(0)}
    )
    if sessions.empty:
        return empty
    last = sessions.groupby("user", sort=True).tail(1)
    user = last["user"].to_numpy().astype(np.int64)
    raw = dataset.users.set_index("user").loc[user, "raw_id"].to_numpy()
    raw_index = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy()
    if np.isnan(raw_index).any() or raw_index.max() >= len(truth.activity) or raw_index.min() < 0:
        raise UserError(
            f"{dataset.path}: its users are not the ground truth's (raw ids 0..."
            f"{len(truth.activity) - 1}); pass the truth generated with this dataset"
        )
    activity = truth.activity[raw_index.astype(np.int64)]
    z = session_satisfaction(
        last["n_events"].to_numpy(),
        last["n_engaged"].to_numpy(),
        last["n_carts"].to_numpy(),
        last["n_buys"].to_numpy(),
    )
    window_end_ms = ORIGIN_MS + returns.observation_days * DAY_MS
    # The process places no session after the window's end: the horizon stops there.
    h = np.full(len(user), min(max((window_end_ms - cutoff_ms) / DAY_MS, 0.0), horizon_days))
    elapsed = (cutoff_ms - last["end"].to_numpy() - RETURN_OFFSET_MS) / DAY_MS  # e', may be < 0
    q = 1.0 - returns.churn_probability(z)
    rate = returns.gap_rate(activity, z)
    s_now = returns.gap_survival(elapsed, rate)
    s_end = returns.gap_survival(elapsed + h, rate)
    alive_mass = 1.0 - q + q * s_now
    p_return = q * (s_now - s_end) / alive_mass
    # The Monte Carlo runs in raw-id order: the same users get the same draws whatever
    # indices a (possibly truncated) log gave them.
    order = np.argsort(np.asarray(raw, dtype=str), kind="stable")
    given = np.empty(len(user))
    given[order] = _sessions_given_return(
        truth,
        activity[order],
        rate[order],
        elapsed[order],
        s_now[order],
        s_end[order],
        h[order],
        n_paths=n_paths,
        seed=seed,
    )
    expected = p_return * given
    return pd.DataFrame({"user": user, "p_return": p_return, "expected_sessions": expected})


def _sessions_given_return(
    truth: GroundTruth,
    activity: np.ndarray,
    rate: np.ndarray,
    elapsed: np.ndarray,
    s_now: np.ndarray,
    s_end: np.ndarray,
    h: np.ndarray,
    n_paths: int,
    seed: int,
) -> np.ndarray:
    """(U,) E[sessions starting in the window | the first return falls in it], by Monte Carlo.

    The first return is drawn by inverting the gap survival inside the window, so every path
    counts it; the later sessions follow the true process with satisfaction and duration
    drawn from a seeded sample of the generator's sessions.

    Args:
        truth: The ground truth.
        activity: (U,) users' activity rates.
        rate: (U,) the gap rate after each user's last session.
        elapsed: (U,) days since the last session's end, less the fixed offset.
        s_now: (U,) gap survival at ``elapsed``.
        s_end: (U,) gap survival at ``elapsed + h``.
        h: (U,) the window's length in days.
        n_paths: Paths per user.
        seed: Seed.

    Returns:
        (U,) expected session counts given a first return in the window (1 or more).
    """
    returns = truth.config.returns
    rng = np.random.default_rng([seed, 7])
    pool_z, pool_duration_ms = sample_session_outcomes(truth, 20_000, seed)
    n_users = len(activity)
    totals = np.zeros(n_users)
    k = returns.gap_shape
    # Users in blocks so that a block's paths stay a few million floats.
    block = max(1, 2_000_000 // max(n_paths, 1))
    for lo in range(0, n_users, block):
        hi = min(lo + block, n_users)
        idx = np.repeat(np.arange(lo, hi), n_paths)
        # First return W | elapsed < W < elapsed + h: S(W) uniform between S(end) and S(now).
        target = s_end[idx] + rng.random(len(idx)) * (s_now[idx] - s_end[idx])
        w = (-np.log(np.maximum(target, 1e-300))) ** (1.0 / k) / rate[idx]
        t = np.maximum(w - elapsed[idx], 0.0)  # the return's time after the cutoff (days)
        count = np.ones(len(idx))
        alive = np.arange(len(idx))
        while len(alive):
            draw = rng.integers(0, len(pool_z), size=len(alive))
            z = pool_z[draw]
            stays = rng.random(len(alive)) >= returns.churn_probability(z)
            gap = returns.draw_gaps(returns.gap_rate(activity[idx[alive]], z), rng)
            nxt = t[alive] + (pool_duration_ms[draw] + RETURN_OFFSET_MS) / DAY_MS + gap
            ok = stays & (nxt < h[idx[alive]])
            alive = alive[ok]
            t[alive] = nxt[ok]
            count[alive] += 1
        totals[lo:hi] = count.reshape(hi - lo, n_paths).mean(axis=1)
    return totals
