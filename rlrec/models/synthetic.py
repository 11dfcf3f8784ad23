"""The embedded default: a synthetic e-commerce log drawn from the user model, with its truth.

The generator draws sessions from the user model of ``docs/architecture.md`` (the one the fit
recovers and the env simulates) with two refinements that real logs show and that make a
user's history worth reading beyond its last step:

* **focus varies by session.** Each session draws its own stay probability ``p`` from
  ``Beta(focus_alpha, focus_beta)`` (U-shaped by default: browsing sessions hop between
  categories, focused ones stay). After each step the user leaves with ``leave_hazard[t]``;
  otherwise stays in the current category with ``p`` or switches to another category by
  ``switch_matrix``. Averaged over sessions, the stay probability *rises* with the category
  streak ``s`` (long streaks select focused sessions): that average is the ground truth's
  ``stay_by_streak`` (computed exactly, see :func:`marginal_stay_curve`), the streak-indexed
  curve the fit recovers. A model that reads the session's earlier switches can tell a browser
  from a focused shopper; a first-order (category-to-category) model cannot.
* **revisits.** Inside a category streak of 3 or more steps the user goes back, with
  ``revisit_rate``, to an item seen earlier in the streak (not the previous one): comparing
  products. Otherwise the item is drawn by its within-category popularity (long tail).

Every step goes through a view -> cart -> buy funnel (plus a fav event that only shapes the
event mix).

Categories have Zipf-like sizes; users have several sessions separated by gaps of hours, while
events inside a session are seconds to minutes apart, so a 30-minute inactivity gap recovers
the generator's sessions exactly. Everything is drawn from one ``numpy.random.Generator``
seeded by :attr:`SyntheticConfig.seed`, so a seed fixes the log.

The true parameters are kept as a :class:`GroundTruth` (a :class:`SimModel` in raw-id space:
category ids ``c0..c{K-1}``, item ids are the raw integer item ids; its ``stay_by_streak`` is
the session-averaged curve) and written beside the dataset as ``ground_truth.json`` and
``ground_truth.npz``, so that the fit can be checked against them after preparation has
remapped the vocabularies; the focus and revisit parameters are in its ``config``.

The default parameters are calibrated on the Taobao UserBehavior sample in
``../shared/data/taobao_sample`` (see :func:`log_statistics` and the comments on the fields).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rlrec.config import from_mapping, to_mapping
from rlrec.errors import UserError
from rlrec.models.sim_model import ARRAY_FIELDS, SCALAR_FIELDS, Provenance, SimModel

if TYPE_CHECKING:
    from rlrec.data.prepare import PrepareConfig

GROUND_TRUTH_JSON = "ground_truth.json"
GROUND_TRUTH_NPZ = "ground_truth.npz"
SESSION_GAP_MS = 30 * 60 * 1000
"""The inactivity gap that splits sessions in the calibration statistics (30 minutes)."""

# 2017-11-25 00:00 UTC in ms: the Taobao sample's period, so synthetic timestamps look alike.
_ORIGIN_MS = 1_511_568_000_000
_HOUR_MS = 3_600_000
USERS_PER_CHUNK = 20_000
"""Users generated together; bounds the generator's memory (about 1.3M events a chunk)."""


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
                and self.session_gap_min_h * _HOUR_MS > SESSION_GAP_MS,
                "in-session gaps must stay under 30 min and session gaps over it",
            ),
            (self.max_streak >= 1 and self.max_steps >= 1, "max_streak, max_steps >= 1"),
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
    """

    model: SimModel
    config: SyntheticConfig

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
    return GroundTruth(model=model, config=config)


def marginal_stay_curve(
    alpha: float, beta: float, hazard: np.ndarray, max_streak: int, n_nodes: int = 256
) -> np.ndarray:
    """The stay rate by streak that a log of Beta-focus sessions shows, computed exactly.

    A session with stay probability ``p`` reaches streak ``s`` at step ``t`` with a probability
    that is a polynomial in ``p``; the hazard does not depend on ``p``, so the expected number of
    step pairs at streak ``s`` (and how many of them stay) is an integral over ``p`` of those
    polynomials times the Beta density. Gauss-Jacobi quadrature with ``n_nodes`` nodes is exact
    for polynomials of degree below ``2 * n_nodes``; longer sessions than that carry a weight
    under ``(1 - min(hazard)) ** (2 * n_nodes)``, negligible for the defaults.

    Args:
        alpha: Beta shape of ``p`` (the ``p ** (alpha - 1)`` side).
        beta: Beta shape of ``1 - p``.
        hazard: (T,) P(leave right after step t), t = 1..T; the last applies beyond T.
        max_streak: Bins S; the last pools streaks >= S (as the fit does).
        n_nodes: Quadrature nodes.

    Returns:
        (S,) P(stay | streak s) averaged over the steps of all sessions.
    """
    from scipy.special import roots_jacobi

    # Jacobi weight (1 - x)^(beta - 1) (1 + x)^(alpha - 1) on [-1, 1] is the Beta(alpha, beta)
    # density of p = (1 + x) / 2, up to a constant that cancels in the ratio below.
    x, w = roots_jacobi(n_nodes, beta - 1.0, alpha - 1.0)
    p = (1.0 + x) / 2.0  # (M,)
    dist = np.zeros((n_nodes, max_streak))  # P(streak bin at step t | p), (M, S)
    dist[:, 0] = 1.0
    stays = np.zeros(max_streak)
    pairs = np.zeros(max_streak)
    alive = 1.0  # P(the session reaches step t + 1)
    min_hazard = float(np.min(hazard))
    t = 1
    while True:
        alive *= 1.0 - float(hazard[min(t, len(hazard)) - 1])
        if alive < 1e-15 or (t > len(hazard) and alive * (1 - min_hazard) ** 64 < 1e-15):
            break
        weighted = w[:, None] * dist * alive  # (M, S)
        pairs += weighted.sum(axis=0)
        stays += (weighted * p[:, None]).sum(axis=0)
        moved = dist * p[:, None]
        dist = np.concatenate([(1.0 - p)[:, None] * dist.sum(axis=1, keepdims=True), moved], 1)
        dist[:, -2] += dist[:, -1]  # the last bin pools streaks >= S
        dist = dist[:, :max_streak]
        t += 1
    # Bins too rare to be reached keep the last reachable rate (the fit extends it alike).
    curve = np.divide(stays, pairs, out=np.full(max_streak, np.nan), where=pairs > 1e-300)
    last = np.flatnonzero(np.isfinite(curve))
    curve[last[-1] + 1 :] = curve[last[-1]]
    return np.clip(curve, 0.0, 1.0)


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


def _categorical_rows(cdf: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draw one column per requested row of a row-wise CDF matrix.

    Args:
        cdf: (R, M) cumulative row distributions (last column 1).
        rows: (B,) row of each draw.
        u: (B,) uniforms in [0, 1).

    Returns:
        (B,) column indices.
    """
    m = cdf.shape[1]
    # Offsetting row r by r turns all rows into one sorted array: one searchsorted for all.
    flat = (cdf + np.arange(cdf.shape[0])[:, None]).ravel()
    col = np.searchsorted(flat, rows + u, side="right") - rows * m
    return np.clip(col, 0, m - 1)


def _grouped_draw(
    cum: np.ndarray, start: np.ndarray, groups: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Draw one element inside each requested group of a flat, group-contiguous distribution.

    Args:
        cum: (N,) group index + cumulative probability within the group (so it increases).
        start: (G + 1,) first element of each group, and N.
        groups: (B,) group of each draw.
        u: (B,) uniforms in [0, 1).

    Returns:
        (B,) element indices, each inside its group.
    """
    idx = np.searchsorted(cum, groups + u, side="right")
    return np.clip(idx, start[groups], start[groups + 1] - 1)


def simulate_organic_categories(
    model: SimModel,
    n_sessions: int,
    rng: np.random.Generator,
    session_stay: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Categories of every step of ``n_sessions`` organic sessions of the user model.

    Vectorized over sessions: one loop iteration per step index, over the sessions still
    alive. Shared by the generator and by :func:`rlrec.models.transition.simulate_organic`.

    Args:
        model: The user model (only categories, stay, switch and hazard are used).
        n_sessions: Number of sessions.
        rng: The random generator.
        session_stay: (n_sessions,) each session's own stay probability, replacing the
            model's streak curve (the generator's focus); None uses ``stay_by_streak``.

    Returns:
        ``lengths`` (n_sessions,) steps per session and ``categories`` (sum(lengths),) in
        session order.
    """
    init_cdf = np.cumsum(model.initial_category)
    switch_cdf = np.cumsum(model.switch_matrix, axis=1)
    alive = np.arange(n_sessions)
    cat = np.minimum(
        np.searchsorted(init_cdf, rng.random(n_sessions), side="right"), len(init_cdf) - 1
    )
    streak = np.ones(n_sessions, dtype=np.int64)
    rec_session, rec_cat = [alive], [cat]
    t = 1
    while len(alive):
        stays = rng.random(len(alive)) >= model.hazard(np.full(len(alive), t))
        alive, cat, streak = alive[stays], cat[stays], streak[stays]
        if not len(alive):
            break
        p_stay = model.stay_probability(streak) if session_stay is None else session_stay[alive]
        stay = rng.random(len(alive)) < p_stay
        moved = _categorical_rows(switch_cdf, cat[~stay], rng.random(int((~stay).sum())))
        cat = cat.copy()
        cat[~stay] = moved
        streak = np.where(stay, streak + 1, 1)
        rec_session.append(alive)
        rec_cat.append(cat)
        t += 1
    session = np.concatenate(rec_session)
    order = np.argsort(session, kind="stable")  # records are by step; stable keeps step order
    lengths = np.bincount(session, minlength=n_sessions)
    return lengths, np.concatenate(rec_cat)[order]


def _runs(new_run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index of each element's run and its 1-based position in it.

    Args:
        new_run: (n,) bool, True where a run (e.g. a category streak) starts.

    Returns:
        ``run_start`` and ``streak``, both (n,) int.
    """
    index = np.arange(len(new_run))
    run_start = np.maximum.accumulate(np.where(new_run, index, 0))
    return run_start, index - run_start + 1


def _revisit(
    item: np.ndarray,
    cat: np.ndarray,
    same_session: np.ndarray,
    rate: float,
    rng: np.random.Generator,
) -> None:
    """Replace, in place, some items by one seen earlier in the same category streak.

    At a step whose category streak is ``s >= 3``, with probability ``rate`` the item becomes
    that of a uniformly chosen earlier step of the streak other than the previous one (so a
    step never repeats its predecessor's item by this rule). Steps are processed by their
    position in the streak, so a revisited item is itself final when it is copied.

    Args:
        item: (n,) item of each step, modified in place.
        cat: (n,) category of each step.
        same_session: (n,) whether step i continues step i - 1's session.
        rate: The revisit probability.
        rng: The random generator.
    """
    if len(item) == 0 or rate <= 0:
        return
    run_start, streak = _runs(~(same_session & np.r_[False, cat[1:] == cat[:-1]]))
    candidates = np.flatnonzero(streak >= 3)
    chosen = candidates[rng.random(len(candidates)) < rate]
    # Uniform over the streak's steps run_start .. i - 2.
    source = run_start[chosen] + np.floor(rng.random(len(chosen)) * (streak[chosen] - 2)).astype(
        np.int64
    )
    order = np.argsort(streak[chosen], kind="stable")
    chosen, source, by_streak = chosen[order], source[order], streak[chosen][order]
    bounds = np.flatnonzero(np.r_[True, by_streak[1:] != by_streak[:-1], True])
    for lo, hi in itertools.pairwise(bounds):
        item[chosen[lo:hi]] = item[source[lo:hi]]


def generate_events(config: SyntheticConfig) -> tuple[pd.DataFrame, GroundTruth]:
    """Generate a synthetic log in the canonical schema, and its ground truth.

    Returns:
        A frame with columns ``user`` (int64), ``item`` (int64 raw item id), ``time`` (int64 ms),
        ``category`` (str ``c0``..), ``event`` (str: view, fav, cart, buy) and ``session``
        (int64), sorted by user and time; and the :class:`GroundTruth`.
    """
    model = true_model(config)
    n_users = config.resolved_n_users()
    parts = []
    n_sessions = 0
    # Users are generated in fixed-size chunks, each with its own stream of the seed: memory
    # stays bounded by a chunk's intermediates (10M events fit in well under 2 GB) and the
    # log does not depend on anything but the config.
    for index, first_user in enumerate(range(0, n_users, USERS_PER_CHUNK)):
        rng = np.random.default_rng([config.seed, 1, index])
        users = np.arange(first_user, min(first_user + USERS_PER_CHUNK, n_users), dtype=np.int64)
        part = _generate_chunk(model, config, users, rng)
        part["session"] += n_sessions
        n_sessions += part.pop("n_sessions")[0]
        parts.append(part)
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    del parts
    kinds = ["view", "fav", "cart", "buy"]
    frame = pd.DataFrame(
        {
            "user": columns["user"],
            "item": columns["item"],
            "time": columns["time"],
            "category": pd.Categorical.from_codes(
                columns["category"], categories=list(model.category_ids)
            ),
            "event": pd.Categorical.from_codes(columns["event"], categories=kinds),
            "session": columns["session"],
        }
    )
    return frame, GroundTruth(model=model, config=config)


def _generate_chunk(
    model: SimModel, config: SyntheticConfig, users: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Events of the users ``users`` (consecutive ids): the canonical columns as arrays.

    Returns:
        ``user``, ``item``, ``time``, ``category`` (codes), ``event`` (codes into view, fav,
        cart, buy), ``session`` (0-based within the chunk) and ``n_sessions`` (1,).
    """
    n_users = len(users)
    sessions_per_user = 1 + rng.poisson(config.sessions_per_user - 1.0, size=n_users)
    n_sessions = int(sessions_per_user.sum())
    session_user = np.repeat(users, sessions_per_user)

    focus = rng.beta(config.focus_alpha, config.focus_beta, size=n_sessions)
    lengths, cat = simulate_organic_categories(model, n_sessions, rng, session_stay=focus)
    step_session = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)
    n_steps = len(cat)

    # Items: popularity draw inside the category; a step never repeats the previous step's item
    # (two consecutive events on one item are one step by definition), so redraw repeats.
    k = model.n_categories
    item_cat = np.asarray(model.item_category)
    start = np.r_[0, np.cumsum(np.bincount(item_cat, minlength=k))]
    csum = np.cumsum(model.item_popularity)
    before = np.r_[0.0, csum][start[:-1]]  # (K,) mass of the categories before each one
    cum = item_cat + csum - np.repeat(before, np.diff(start))  # (N,) increasing
    item = _grouped_draw(cum, start, cat, rng.random(n_steps))
    same_session = np.r_[False, step_session[1:] == step_session[:-1]]
    _revisit(item, cat, same_session, config.revisit_rate, rng)
    for _ in range(100):
        repeat = np.flatnonzero(same_session & np.r_[False, item[1:] == item[:-1]])
        if not len(repeat):
            break
        item[repeat] = _grouped_draw(cum, start, cat[repeat], rng.random(len(repeat)))
    else:  # pragma: no cover - only with a near-degenerate popularity
        raise RuntimeError("could not avoid repeated items; lower item_zipf")

    # Funnel: cart with p_cart[c]; buy only after a cart; fav independently.
    cart = rng.random(n_steps) < model.p_cart[cat]
    buy = cart & (rng.random(n_steps) * model.p_cart[cat] < model.p_buy[cat])
    fav = rng.random(n_steps) < config.p_fav
    # Event order inside a step: view, fav, cart, buy.
    flags = np.stack([np.ones(n_steps, dtype=bool), fav, cart, buy], axis=1)  # (steps, 4)
    per_step = flags.sum(axis=1)
    ev_step = np.repeat(np.arange(n_steps), per_step)
    ev_kind = np.nonzero(flags)[1]  # row-major: per step, in view/fav/cart/buy order
    n_events = len(ev_step)

    # Times: in-session gaps of seconds to minutes; hours between a user's sessions.
    ev_session = step_session[ev_step]
    gap_ms = np.minimum(
        rng.lognormal(math.log(config.event_gap_median_s), config.event_gap_sigma, n_events),
        config.event_gap_max_s,
    )
    gap_ms = np.maximum(np.round(gap_ms * 1000.0), 1000).astype(np.int64)
    first = np.r_[True, ev_session[1:] != ev_session[:-1]]
    gap_ms[first] = 0
    within = np.cumsum(gap_ms)
    session_first = np.flatnonzero(first)
    within -= np.repeat(within[session_first], np.diff(np.r_[session_first, n_events]))
    duration = within[np.r_[session_first[1:], n_events] - 1]  # (S,) last event's offset
    between = np.maximum(
        rng.lognormal(math.log(config.session_gap_median_h), config.session_gap_sigma, n_sessions),
        config.session_gap_min_h,
    )
    between_ms = np.round(between * _HOUR_MS).astype(np.int64)
    user_first = np.r_[True, session_user[1:] != session_user[:-1]]
    user_start = _ORIGIN_MS + np.round(
        rng.random(n_users) * config.start_spread_days * 24 * _HOUR_MS
    ).astype(np.int64)
    # Session start = user start + sum over the user's earlier sessions of (duration + gap).
    advance = np.where(user_first, 0, np.r_[0, duration[:-1]] + between_ms)
    advance = np.cumsum(advance)
    first_of_user = np.flatnonzero(user_first)
    advance -= np.repeat(advance[first_of_user], np.diff(np.r_[first_of_user, n_sessions]))
    session_start = user_start[session_user - users[0]] + advance
    time = session_start[ev_session] + within

    return {
        "user": session_user[ev_session],
        "item": np.asarray(model.item_ids)[item[ev_step]].astype(np.int64),
        "time": time.astype(np.int64),
        "category": cat[ev_step].astype(np.int32),
        "event": ev_kind.astype(np.int8),
        "session": ev_session,
        "n_sessions": np.array([n_sessions]),
    }


def generate_dataset(
    out: str | os.PathLike[str],
    config: SyntheticConfig,
    prepare_config: PrepareConfig | None = None,
    force: bool = False,
) -> Path:
    """Generate a synthetic log and prepare it into a PreparedDataset at ``out``.

    The log goes through the ordinary preparation (canonical preset, time split) so that it
    is a dataset like any other; the ground truth is written beside it.

    Args:
        out: The dataset directory.
        config: The synthetic world.
        prepare_config: Preparation settings; the defaults when None.
        force: Replace an existing dataset at ``out`` (atomically); refused otherwise.

    Returns:
        The dataset directory.

    Raises:
        UserError: If ``out`` exists (see :func:`rlrec.fsutil.check_output`) or another
            process is writing it.
    """
    from rlrec.data.prepare import PrepareConfig
    from rlrec.fsutil import check_output, output_lock

    out = Path(out)
    # The lock and the check before the (long) generation: a second writer fails at once.
    with output_lock(out):
        check_output(out, "dataset", force)
        return _generate_into(out, config, prepare_config or PrepareConfig(), force)


def _generate_into(
    out: Path, config: SyntheticConfig, prepare_config: PrepareConfig, force: bool
) -> Path:
    from rlrec.data.prepare import prepare

    frame, truth = generate_events(config)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.synth-", dir=out.parent) as tmp:
        raw = Path(tmp) / "events.parquet"
        frame.to_parquet(raw, index=False)
        del frame
        return prepare(
            [raw],
            preset="canonical",
            out=out,
            config=prepare_config,
            extra_files=truth.to_files(),
            force=force,
            # The raw file is a temporary one, deleted on return: record no input path.
            inputs_label=[],
        )


def collapse_steps(
    session: np.ndarray, item: np.ndarray, category: np.ndarray, event: np.ndarray
) -> dict[str, np.ndarray]:
    """Collapse events into steps: maximal runs of consecutive same-item events in a session.

    Args:
        session: (E,) session ids, events grouped by session in time order.
        item: (E,) item ids.
        category: (E,) category ids.
        event: (E,) event codes into ``rlrec.data.schema.EVENT_TYPES``.

    Returns:
        Per-step arrays: ``session``, ``item``, ``category`` (of the step's first event),
        ``cart`` (bool: the step has a cart or a buy), ``buy`` (bool), ``fav`` (bool), and
        ``offsets`` (n_sessions + 1,) CSR offsets of each session's steps.
    """
    from rlrec.data.schema import EVENT_CODE

    n = len(session)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return {
            "session": empty,
            "item": empty,
            "category": empty,
            "cart": empty.astype(bool),
            "buy": empty.astype(bool),
            "fav": empty.astype(bool),
            "offsets": np.zeros(1, dtype=np.int64),
        }
    new_session = np.r_[True, session[1:] != session[:-1]]
    new_step = new_session | np.r_[True, item[1:] != item[:-1]]
    starts = np.flatnonzero(new_step)
    step_id = np.cumsum(new_step) - 1
    n_steps = len(starts)

    def any_of(code: int) -> np.ndarray:
        return np.bincount(step_id, weights=(event == code), minlength=n_steps) > 0

    buy = any_of(EVENT_CODE["buy"])
    return {
        "session": session[starts],
        "item": item[starts],
        "category": category[starts],
        "cart": any_of(EVENT_CODE["cart"]) | buy,
        "buy": buy,
        "fav": any_of(EVENT_CODE["fav"]),
        "offsets": np.r_[np.flatnonzero(new_session[starts]), n_steps].astype(np.int64),
    }


def streak_lengths(offsets: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Lengths of the category streaks (maximal same-category runs of steps in a session).

    Args:
        offsets: (S + 1,) CSR offsets of the sessions' steps.
        category: (n_steps,) category of each step.

    Returns:
        (R,) run lengths in steps, runs in order.
    """
    n = len(category)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    boundary = np.zeros(n, dtype=bool)
    boundary[offsets[:-1][offsets[:-1] < n]] = True
    new_run = boundary | np.r_[True, category[1:] != category[:-1]]
    return np.diff(np.r_[np.flatnonzero(new_run), n]).astype(np.int64)


def log_statistics(frame: pd.DataFrame, session_gap_ms: int = SESSION_GAP_MS) -> dict[str, Any]:
    """The statistics the generator is calibrated on, for any canonical event frame.

    Sessions are cut at inactivity gaps over ``session_gap_ms`` per user; steps are maximal
    same-item runs (see :func:`collapse_steps`).

    Args:
        frame: Columns ``user``, ``item``, ``time`` (ms), ``category``, ``event`` (canonical
            names: view, cart, fav, buy, ...).
        session_gap_ms: The inactivity gap.

    Returns:
        ``session_length`` (array of steps per session), ``streak_length`` (array),
        ``continuation_rate`` (share of consecutive steps in one session that stay in the
        category), ``stay_by_streak`` ((8,) that share among steps at category streak
        1..7 and 8 or more), ``revisit_rate`` (share of steps after a session's first whose
        item was seen earlier in the session), ``event_mix`` (event name -> share of events),
        ``events_per_session``.
    """
    from rlrec.data.schema import EVENT_CODE

    df = frame.sort_values(["user", "time"], kind="stable")
    user = pd.factorize(df["user"])[0]
    time = df["time"].to_numpy(np.int64)
    new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(time) > session_gap_ms)]
    session = np.cumsum(new)
    item = pd.factorize(df["item"])[0]
    category = pd.factorize(df["category"])[0]
    names = df["event"].astype(str).str.lower().to_numpy()
    unknown = sorted(set(np.unique(names)) - set(EVENT_CODE))
    if unknown:
        raise ValueError(f"unknown event names {unknown}")
    codes = np.array([EVENT_CODE[n] for n in names], dtype=np.int8)
    steps = collapse_steps(session, item, category, codes)
    offsets = steps["offsets"]
    cat = steps["category"]
    same_session = steps["session"][1:] == steps["session"][:-1]
    stayed = cat[1:] == cat[:-1]
    n_steps = len(cat)
    _, streak = _runs(np.r_[True, ~(same_session & stayed)])
    streak_bin = np.minimum(streak, 8)[:-1][same_session]
    stay_counts = np.bincount(streak_bin, weights=stayed[same_session], minlength=9)[1:]
    stay_by_streak = stay_counts / np.maximum(np.bincount(streak_bin, minlength=9)[1:], 1)
    seen = pd.DataFrame({"s": steps["session"], "i": steps["item"]}).duplicated().to_numpy()
    mix = pd.Series(names).value_counts(normalize=True)
    return {
        "session_length": np.diff(offsets),
        "streak_length": streak_lengths(offsets, cat),
        "continuation_rate": float(stayed[same_session].mean()),
        "stay_by_streak": stay_by_streak,
        "revisit_rate": float(seen.sum() / max(n_steps - (len(offsets) - 1), 1)),
        "event_mix": {str(k): float(v) for k, v in mix.items()},
        "events_per_session": len(df) / (len(offsets) - 1),
    }


def read_taobao_frame(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a Taobao UserBehavior CSV (no header; unix seconds) into the canonical columns.

    Used to calibrate and test the generator's defaults against the real sample.
    """
    df = pd.read_csv(path, header=None, names=["user", "item", "category", "event", "time"])
    df["time"] = df["time"].astype(np.int64) * 1000
    df["event"] = df["event"].replace({"pv": "view"})
    return df
