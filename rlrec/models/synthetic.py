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
  ``stay_by_streak`` (computed exactly, see
  :func:`rlrec.models.calibration.marginal_stay_curve`), the streak-indexed curve the fit
  recovers. A model that reads the session's earlier switches can tell a browser
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

The true parameters are kept as a :class:`rlrec.models.ground_truth.GroundTruth` (a
:class:`SimModel` in raw-id space:
category ids ``c0..c{K-1}``, item ids are the raw integer item ids; its ``stay_by_streak`` is
the session-averaged curve) and written beside the dataset as ``ground_truth.json`` and
``ground_truth.npz``, so that the fit can be checked against them after preparation has
remapped the vocabularies; the focus and revisit parameters are in its ``config``.

The default parameters are calibrated on the Taobao UserBehavior sample in
``../shared/data/taobao_sample`` (see :func:`rlrec.models.calibration.log_statistics` and the
comments on the fields).
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rlrec.models.calibration import run_positions
from rlrec.models.ground_truth import HOUR_MS, GroundTruth, SyntheticConfig
from rlrec.models.planted import plant
from rlrec.models.sim_model import ARRAY_FIELDS, Provenance, SimModel

if TYPE_CHECKING:
    from rlrec.data.prepare import PrepareConfig

__all__ = [
    "USERS_PER_CHUNK",
    "SyntheticConfig",
    "generate_dataset",
    "generate_events",
    "simulate_organic_categories",
    "true_model",
]

# 2017-11-25 00:00 UTC in ms: the Taobao sample's period, so synthetic timestamps look alike.
_ORIGIN_MS = 1_511_568_000_000
USERS_PER_CHUNK = 20_000
"""Users generated together; bounds the generator's memory (about 1.3M events a chunk)."""


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
    planted = plant(columns, model, config)  # planted trend / change point; none by default
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
    return frame, GroundTruth(model=model, config=config, planted=planted)


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
    between_ms = np.round(between * HOUR_MS).astype(np.int64)
    user_first = np.r_[True, session_user[1:] != session_user[:-1]]
    user_start = _ORIGIN_MS + np.round(
        rng.random(n_users) * config.start_spread_days * 24 * HOUR_MS
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
