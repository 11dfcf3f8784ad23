"""Drawing synthetic sessions' content: categories, items, funnel events and in-session times.

The generator (:mod:`rlrec.models.synthetic`) draws every session's content here and then
places the sessions in time; the ground truth's return oracle
(:func:`rlrec.models.ground_truth.oracle_return`) draws fresh sessions of the same law. Kept
apart from both so that neither imports the other.
"""

from __future__ import annotations

import itertools
import math
from typing import Protocol

import numpy as np

from rlrec.models.calibration import run_positions
from rlrec.models.sim_model import SimModel

__all__ = [
    "SessionParams",
    "draw_sessions",
    "simulate_organic_categories",
]


class SessionParams(Protocol):
    """The settings a session's content needs (:class:`SyntheticConfig` has them all)."""

    @property
    def focus_alpha(self) -> float:
        """Beta alpha of each session's stay probability."""

    @property
    def focus_beta(self) -> float:
        """Beta beta of each session's stay probability."""

    @property
    def revisit_rate(self) -> float:
        """P(revisiting an item seen earlier in the streak)."""

    @property
    def p_fav(self) -> float:
        """P(fav | viewed)."""

    @property
    def event_gap_median_s(self) -> float:
        """Median in-session gap (s)."""

    @property
    def event_gap_sigma(self) -> float:
        """Log-normal sigma of in-session gaps."""

    @property
    def event_gap_max_s(self) -> float:
        """Largest in-session gap (s)."""


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
    run_start, streak = run_positions(~(same_session & np.r_[False, cat[1:] == cat[:-1]]))
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


def draw_sessions(
    model: SimModel, config: SessionParams, n_sessions: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The content of ``n_sessions`` independent sessions: steps, items, events, in-session times.

    A session's content depends on nothing but the world (not on its user or on the user's
    earlier sessions), so the generator draws sessions in batches and places them in time
    afterwards.

    Returns:
        Per event (E,): ``session`` (0-based), ``item`` (index), ``category`` (codes),
        ``event`` (codes into view, fav, cart, buy), ``within`` (ms since the session's first
        event). Per session (S,): ``duration`` (ms, its last event's offset), ``n_events``,
        ``n_engaged`` (steps with a fav or cart), ``n_carts``, ``n_buys``.
    """
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

    # In-session gaps of seconds to minutes.
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
    return {
        "session": ev_session,
        "item": item[ev_step],
        "category": cat[ev_step].astype(np.int32),
        "event": ev_kind.astype(np.int8),
        "within": within,
        "duration": within[np.r_[session_first[1:], n_events] - 1],
        "n_events": np.bincount(ev_session, minlength=n_sessions),
        "n_engaged": np.bincount(step_session, weights=fav | cart, minlength=n_sessions),
        "n_carts": np.bincount(step_session, weights=cart, minlength=n_sessions),
        "n_buys": np.bincount(step_session, weights=buy, minlength=n_sessions),
    }
