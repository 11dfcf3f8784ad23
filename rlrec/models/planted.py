"""Planted drift for the synthetic log: a rising category and a change of the switch matrix.

Ground truth for ``rlrec analyze`` (:mod:`rlrec.analytics`): with
:attr:`SyntheticConfig.trend <rlrec.models.ground_truth.SyntheticConfig>` or
``change_point`` set, :func:`plant` redraws the category of every step of the generated log
from time-dependent probabilities, once the events' times are known:

* a session's position ``tau`` in [0, 1] is the share of sessions that started before it (so
  "half-way" means half of the activity, whatever the log's long tail);
* the first step's category is drawn from the session-start distribution and each switch's
  destination from the switch matrix row of the current category, with the trend category's
  odds multiplied by ``exp(growth * tau)`` (rows renormalised, the diagonal stays 0); sessions
  with ``tau >= at`` switch by the changed matrix
  ``(1 - strength) * S + strength * S[sigma][:, sigma]`` (``sigma`` a seeded permutation);
* each step keeps whether it stayed or switched, its number of events and their times and
  kinds (so the funnel outcome was drawn with the step's first category); a step whose
  category changed gets a new item drawn by popularity within its new category.

Nothing is drawn without planted effects, so the default log does not change. Draws use their
own stream of the seed (``[seed, 2]``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from rlrec.models.ground_truth import SyntheticConfig
from rlrec.models.sim_model import SimModel

__all__ = [
    "changed_switch_matrix",
    "plant",
]


def changed_switch_matrix(switch: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """(K, K) the switch matrix after a planted change (row-stochastic, zero diagonal).

    Args:
        switch: (K, K) the matrix before.
        strength: Weight of the permuted matrix, in [0, 1].
        seed: The synthetic seed (the permutation uses stream ``[seed, 3]``).
    """
    sigma = np.random.default_rng([seed, 3]).permutation(len(switch))
    after = (1.0 - strength) * switch + strength * switch[sigma][:, sigma]
    np.fill_diagonal(after, 0.0)
    return after / after.sum(axis=1, keepdims=True)


def _draw(
    probs: np.ndarray, target: int, weight: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One category per row of ``probs`` with column ``target`` reweighted by ``weight``.

    Args:
        probs: (n, K) base distributions.
        target: The reweighted column, or -1 for none.
        weight: (n,) odds multipliers of ``target``.
        rng: The random generator.
    """
    p = probs.copy()
    if target >= 0:
        p[:, target] *= weight
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    out = (cdf < rng.random(len(p))[:, None]).sum(axis=1)
    return np.minimum(out, p.shape[1] - 1)


def plant(
    columns: dict[str, np.ndarray], model: SimModel, config: SyntheticConfig
) -> dict[str, Any]:
    """Redraw the steps' categories (and items) of a generated log in place.

    Args:
        columns: The generator's event columns (``user``, ``item``, ``time``, ``category``
            codes, ``event`` codes into view, fav, cart, buy, ``session``), sorted by session
            and time; ``category`` and ``item`` are modified in place.
        model: The true model (categories, items, switch matrix, session starts).
        config: The synthetic config; nothing happens without ``trend`` or ``change_point``.

    Returns:
        What was planted, for the ground truth (see
        :attr:`rlrec.models.ground_truth.GroundTruth.planted`); empty without effects.
    """
    trend, change = config.trend, config.change_point
    if trend is None and change is None:
        return {}
    rng = np.random.default_rng([config.seed, 2])
    step = np.flatnonzero(columns["event"] == 0)  # every step starts with its one view
    session = columns["session"][step]
    old = columns["category"][step].astype(np.int64)
    first = np.r_[True, session[1:] != session[:-1]]
    # Session position tau: the rank of its start among all session starts.
    starts = columns["time"][step[first]]
    rank = np.argsort(np.argsort(starts, kind="stable"), kind="stable")
    tau_session = rank / max(len(starts) - 1, 1)
    session_index = np.cumsum(first) - 1
    tau = tau_session[session_index]
    switch = np.asarray(model.switch_matrix)
    after = (
        switch if change is None else changed_switch_matrix(switch, change.strength, config.seed)
    )
    late = np.zeros(len(step), dtype=bool) if change is None else tau >= change.at
    target = -1 if trend is None else trend.category
    weight = np.ones(len(step)) if trend is None else np.exp(trend.growth * tau)
    stayed = ~first & np.r_[False, old[1:] == old[:-1]]
    position = np.arange(len(step)) - np.flatnonzero(first)[session_index]
    new = old.copy()
    initial = np.asarray(model.initial_category)
    for j in range(int(position.max()) + 1):
        at = np.flatnonzero(position == j)
        if j == 0:
            new[at] = _draw(
                np.broadcast_to(initial, (len(at), len(initial))), target, weight[at], rng
            )
            continue
        new[at] = new[at - 1]  # a stay keeps the (new) previous category
        moved = at[~stayed[at]]
        if len(moved):
            rows = np.where(late[moved, None], after[new[moved - 1]], switch[new[moved - 1]])
            new[moved] = _draw(rows, target, weight[moved], rng)
    changed = np.flatnonzero(new != old)
    # Items of changed steps: by popularity within the new category, never the previous
    # step's item (two consecutive events on one item would be one step).
    item_category = np.asarray(model.item_category)
    popularity = np.asarray(model.item_popularity)
    order = np.argsort(item_category, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(item_category, minlength=len(initial)))]
    cum = np.cumsum(popularity[order])
    base = np.r_[0.0, cum][bounds[:-1]]
    item = columns["item"][step].copy()
    todo = changed
    for _ in range(100):
        if not len(todo):
            break
        c = new[todo]
        u = base[c] + rng.random(len(todo)) * (np.r_[0.0, cum][bounds[1:]][c] - base[c])
        pick = np.clip(np.searchsorted(cum, u, side="right"), bounds[c], bounds[c + 1] - 1)
        item[todo] = np.asarray(model.item_ids)[order[pick]]
        prev_same = ~first[todo] & (item[todo] == item[np.maximum(todo - 1, 0)])
        next_same = np.zeros(len(todo), dtype=bool)
        inside = todo + 1 < len(step)
        nxt = todo[inside] + 1
        next_same[inside] = ~first[nxt] & (item[nxt] == item[todo[inside]])
        todo = todo[prev_same | next_same]
    # Spread the steps' new category and item over their events.
    step_of_event = np.cumsum(columns["event"] == 0) - 1
    columns["category"][:] = new[step_of_event].astype(columns["category"].dtype)
    columns["item"][:] = item[step_of_event].astype(columns["item"].dtype)
    planted: dict[str, Any] = {}
    if trend is not None:
        planted["trend"] = {"category": model.category_ids[trend.category], "growth": trend.growth}
    if change is not None:
        when = int(np.quantile(starts, change.at, method="inverted_cdf"))
        planted["change_point"] = {
            "at": change.at,
            "time_ms": when,
            "date": datetime.fromtimestamp(when / 1000, UTC).isoformat(),
            "switch_after": after.tolist(),
        }
    return planted
