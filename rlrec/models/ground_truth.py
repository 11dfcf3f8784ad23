"""The ground truth of a synthetic log: the configuration that drew it and its true model.

A synthetic dataset carries ``ground_truth.json`` and ``ground_truth.npz`` beside its events
(see :class:`GroundTruth`), so that a fit can be checked against the parameters that generated
the log after preparation has remapped the vocabularies. :class:`SyntheticConfig` lives here,
not in :mod:`rlrec.models.synthetic`, because a ground truth holds it and reloads it; the
generator module re-exports it.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.config import from_mapping, to_mapping
from rlrec.errors import UserError
from rlrec.models.calibration import SESSION_GAP_MS, marginal_stay_curve
from rlrec.models.sim_model import ARRAY_FIELDS, SCALAR_FIELDS, Provenance, SimModel

__all__ = [
    "GROUND_TRUTH_JSON",
    "GROUND_TRUTH_NPZ",
    "HOUR_MS",
    "GroundTruth",
    "PlantedChange",
    "PlantedTrend",
    "SyntheticConfig",
    "load_ground_truth",
]

GROUND_TRUTH_JSON = "ground_truth.json"
GROUND_TRUTH_NPZ = "ground_truth.npz"
HOUR_MS = 3_600_000
"""Milliseconds in an hour (the generator's session gaps are drawn in hours)."""


@dataclass(frozen=True)
class PlantedTrend:
    """A category whose share grows over the log (ground truth for ``rlrec analyze``).

    Attributes:
        category: True category index (raw id ``c{category}``).
        growth: The category's odds, as a session start and as a switch destination, are
            multiplied by ``exp(growth * tau)``, ``tau`` in [0, 1] the session's position in
            the log (the share of sessions that started before it).
    """

    category: int = 0
    growth: float = 1.0


@dataclass(frozen=True)
class PlantedChange:
    """A change of the switch matrix at one moment (ground truth for ``rlrec analyze``).

    Attributes:
        at: Where the change happens, as a share of the log's sessions (0.5: at the median
            session start); sessions that start later switch by the new matrix.
        strength: The new matrix is ``(1 - strength) * S + strength * S[sigma][:, sigma]``,
            ``sigma`` a random permutation of the categories drawn from the seed.
    """

    at: float = 0.5
    strength: float = 1.0


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
        sessions_per_user: Mean sessions per user (Taobao: 14.9); 1 + Poisson(mean - 1).
        start_spread_days: Users' first sessions start uniformly over this many days.
        event_gap_median_s: Median gap between events in a session (Taobao: 58 s).
        event_gap_sigma: Log-normal sigma of in-session gaps (Taobao p90 333 s: 1.36).
        event_gap_max_s: In-session gaps are clipped to this (well under the 30-minute gap).
        session_gap_median_h: Median gap between a user's sessions (Taobao: 7 h).
        session_gap_sigma: Log-normal sigma of the gaps between sessions.
        session_gap_min_h: Between-session gaps are at least this (well over 30 minutes).
        max_streak: Length S of the stored ``stay_by_streak`` curve (last bin for s >= S).
        max_steps: Length T of the stored ``leave_hazard`` curve (last bin for t >= T).
        response: The world's true response to recommendations (response parameter name ->
            value, see :data:`rlrec.models.prior.RESPONSE_PRIOR`); unnamed ones keep the
            SimModel defaults. An organic log never shows them: they matter only in the truth
            world (:mod:`rlrec.envs.truth`), where the sim-to-real benchmark draws them.
        seed: Seed of every random draw.
        trend: A planted trend (:class:`PlantedTrend`), or None (the default: none).
        change_point: A planted change of the switch matrix (:class:`PlantedChange`), or
            None (the default: none). Planted effects redraw the categories of the steps
            (and their items) from a separate stream of the seed once the log's times are
            drawn; each step keeps its stay-or-switch choice and its funnel outcome, so the
            per-category funnel rates of the ground truth describe a log without them.
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
    trend: PlantedTrend | None = None
    change_point: PlantedChange | None = None

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
                self.trend is None or 0 <= self.trend.category < self.n_categories,
                "trend.category must be a category index in 0..n_categories-1",
            ),
            (
                self.change_point is None
                or (0 < self.change_point.at < 1 and 0 <= self.change_point.strength <= 1),
                "change_point.at must be in (0, 1) and change_point.strength in [0, 1]",
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
        per_user = self.sessions_per_user * self.expected_steps_per_session() * per_step
        return max(1, round(self.n_events / per_user))


@dataclass(frozen=True)
class GroundTruth:
    """The true parameters of a synthetic log.

    Attributes:
        model: The true user model in raw-id space: ``category_ids`` are the raw category ids
            (``c0``..), ``item_ids`` the raw integer item ids, ``category_of_dataset_category``
            the identity over the true categories.
        config: The configuration that generated the log.
        planted: What the planted effects did (empty without them): ``trend`` (raw
            category id, growth) and ``change_point`` (``time_ms`` and ISO ``date`` of the
            change, ``switch_after`` the new (K, K) matrix as nested lists).
    """

    model: SimModel
    config: SyntheticConfig
    planted: dict[str, Any] = field(default_factory=dict)

    def to_files(self) -> dict[str, bytes]:
        """``ground_truth.json`` and ``ground_truth.npz`` as bytes, to write beside a dataset."""
        buffer = io.BytesIO()
        arrays = {name: np.asarray(getattr(self.model, name)) for name in ARRAY_FIELDS}
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        payload = {
            "category_ids": list(self.model.category_ids),
            **{name: float(getattr(self.model, name)) for name in SCALAR_FIELDS},
            "config": to_mapping(self.config),
        }
        if self.planted:
            payload["planted"] = self.planted
        return {
            GROUND_TRUTH_JSON: (json.dumps(payload, indent=2) + "\n").encode(),
            GROUND_TRUTH_NPZ: buffer.getvalue(),
        }


def load_ground_truth(dataset_dir: str | os.PathLike[str]) -> GroundTruth | None:
    """The ground truth written beside a synthetic dataset, or None for a real log.

    Raises:
        UserError: If the ground-truth files exist but are unreadable or inconsistent.
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
    except (json.JSONDecodeError, KeyError, OSError, ValueError) as exc:
        raise UserError(f"{root}: unreadable ground truth ({exc}); generate it again") from None
    model = SimModel(
        category_ids=tuple(payload["category_ids"]),
        **arrays,
        **{name: float(payload[name]) for name in SCALAR_FIELDS},  # type: ignore[arg-type]
        provenance={name: Provenance("user", "synthetic ground truth") for name in ARRAY_FIELDS},
        info={"ground_truth": True},
    )
    config = from_mapping(SyntheticConfig, payload["config"], where=f"{json_file}:config")
    planted = payload.get("planted") or {}
    if not isinstance(planted, dict):
        raise UserError(f"{json_file}: planted must be a JSON object; generate it again")
    return GroundTruth(model=model, config=config, planted=planted)
