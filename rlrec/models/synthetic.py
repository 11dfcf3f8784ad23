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

Categories have Zipf-like sizes. Users come back by a true return process
(:class:`rlrec.models.ground_truth.ReturnTruthConfig`): after each session a user churns with a
probability that falls with the session's satisfaction, else returns after a Weibull gap whose
rate is the user's latent activity times a satisfaction effect; the log ends after
``returns.observation_days``. Sessions' content is drawn by :mod:`rlrec.models.session_draw`.
Gaps between sessions exceed 30 minutes while events inside a session are seconds to minutes
apart, so a 30-minute inactivity gap recovers the generator's sessions exactly. Everything is
drawn from ``numpy.random.Generator`` streams of :attr:`SyntheticConfig.seed`, so a seed fixes
the log.

The true parameters are kept as a :class:`rlrec.models.ground_truth.GroundTruth` (a
:class:`SimModel` in raw-id space: category ids ``c0..c{K-1}``, item ids are the raw integer
item ids; its ``stay_by_streak`` is the session-averaged curve; plus the users' activity
rates) and written beside the dataset as ``ground_truth.json`` and ``ground_truth.npz``, so
that the fit can be checked against them after preparation has remapped the vocabularies; the
focus, revisit and return parameters are in its ``config``.

The default parameters are calibrated on the Taobao UserBehavior sample in
``../shared/data/taobao_sample`` (see :func:`rlrec.models.calibration.log_statistics` and the
comments on the fields).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rlrec.models.ground_truth import (
    DAY_MS,
    HOUR_MS,
    ORIGIN_MS,
    RETURN_OFFSET_MS,
    GroundTruth,
    SyntheticConfig,
    expected_sessions_per_user,
    sample_session_outcomes,
    satisfaction_of,
    true_model,
)
from rlrec.models.planted import plant
from rlrec.models.session_draw import draw_sessions, simulate_organic_categories
from rlrec.models.sim_model import SimModel

if TYPE_CHECKING:
    from rlrec.data.prepare import PrepareConfig

__all__ = [
    "USERS_PER_CHUNK",
    "SyntheticConfig",
    "expected_sessions_per_user",
    "generate_dataset",
    "generate_events",
    "sample_session_outcomes",
    "simulate_organic_categories",
    "true_model",
]

USERS_PER_CHUNK = 20_000
"""Users generated together; bounds the generator's memory (about 1.3M events a chunk)."""


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
    activity = []
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
        if "activity" in part:
            activity.append(part.pop("activity"))
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
    truth = GroundTruth(
        model=model,
        config=config,
        planted=planted,
        activity=np.concatenate(activity) if activity else None,
    )
    return frame, truth


def _generate_chunk(
    model: SimModel, config: SyntheticConfig, users: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Events of the users ``users`` (consecutive ids): the canonical columns as arrays.

    Returns:
        ``user``, ``item``, ``time``, ``category`` (codes), ``event`` (codes into view, fav,
        cart, buy), ``session`` (0-based within the chunk), ``n_sessions`` (1,) and, with the
        return process, ``activity`` (len(users),) the users' true activity rates.
    """
    if config.returns.enabled:
        return _chunk_with_returns(model, config, users, rng)
    n_users = len(users)
    sessions_per_user = 1 + rng.poisson(config.sessions_per_user - 1.0, size=n_users)
    n_sessions = int(sessions_per_user.sum())
    session_user = np.repeat(users, sessions_per_user)
    content = draw_sessions(model, config, n_sessions, rng)

    # Hours between a user's sessions, independent of how the sessions went.
    between = np.maximum(
        rng.lognormal(math.log(config.session_gap_median_h), config.session_gap_sigma, n_sessions),
        config.session_gap_min_h,
    )
    between_ms = np.round(between * HOUR_MS).astype(np.int64)
    user_first = np.r_[True, session_user[1:] != session_user[:-1]]
    user_start = ORIGIN_MS + np.round(
        rng.random(n_users) * config.start_spread_days * DAY_MS
    ).astype(np.int64)
    # Session start = user start + sum over the user's earlier sessions of (duration + gap).
    duration = content["duration"]
    advance = np.where(user_first, 0, np.r_[0, duration[:-1]] + between_ms)
    advance = np.cumsum(advance)
    first_of_user = np.flatnonzero(user_first)
    advance -= np.repeat(advance[first_of_user], np.diff(np.r_[first_of_user, n_sessions]))
    session_start = user_start[session_user - users[0]] + advance
    ev_session = content["session"]
    return {
        "user": session_user[ev_session],
        "item": np.asarray(model.item_ids)[content["item"]].astype(np.int64),
        "time": (session_start[ev_session] + content["within"]).astype(np.int64),
        "category": content["category"],
        "event": content["event"],
        "session": ev_session,
        "n_sessions": np.array([n_sessions]),
    }


def _chunk_with_returns(
    model: SimModel, config: SyntheticConfig, users: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """:func:`_generate_chunk` under the return process (:class:`ReturnTruthConfig`).

    Sessions are drawn in rounds: round r holds the r-th session of every user still active,
    so each session's satisfaction decides, before the next round, whether and when its user
    comes back. The rounds are then reordered user by user.
    """
    returns = config.returns
    n_users = len(users)
    activity = rng.gamma(returns.activity_shape, 1.0 / returns.activity_rate, size=n_users)
    start = ORIGIN_MS + np.round(rng.random(n_users) * config.start_spread_days * DAY_MS).astype(
        np.int64
    )
    end_ms = ORIGIN_MS + returns.observation_days * DAY_MS
    active = np.arange(n_users)
    rounds: list[dict[str, np.ndarray]] = []
    n_sessions = 0
    while len(active):
        content = draw_sessions(model, config, len(active), rng)
        z = satisfaction_of(content)
        churn = rng.random(len(active)) < returns.churn_probability(z)
        gap_days = returns.draw_gaps(returns.gap_rate(activity[active], z), rng)
        # At least 1 ms beyond the offset: a gap of exactly 30 minutes would not cut a session.
        gap_ms = RETURN_OFFSET_MS + np.maximum(np.ceil(gap_days * DAY_MS), 1.0)
        ev_session = content["session"]
        rounds.append(
            {
                "user": active[ev_session],
                "round": np.full(len(ev_session), len(rounds), dtype=np.int64),
                "item": content["item"],
                "time": start[active][ev_session] + content["within"],
                "category": content["category"],
                "event": content["event"],
            }
        )
        n_sessions += len(active)
        nxt = start[active] + content["duration"] + gap_ms
        go_on = ~churn & (nxt < end_ms)
        start[active[go_on]] = nxt[go_on].astype(np.int64)
        active = active[go_on]
    columns = {name: np.concatenate([r[name] for r in rounds]) for name in rounds[0]}
    # User by user, each user's sessions in round (= time) order; events keep their order.
    order = np.lexsort((columns["time"], columns["user"]))
    columns = {name: value[order] for name, value in columns.items()}
    user, rnd = columns["user"], columns["round"]
    new_session = np.r_[True, (user[1:] != user[:-1]) | (rnd[1:] != rnd[:-1])]
    return {
        "user": users[user],
        "item": np.asarray(model.item_ids)[columns["item"]].astype(np.int64),
        "time": columns["time"].astype(np.int64),
        "category": columns["category"],
        "event": columns["event"],
        "session": np.cumsum(new_session) - 1,
        "n_sessions": np.array([n_sessions]),
        "activity": activity,
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
