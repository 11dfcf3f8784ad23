"""Calibration statistics: what a log shows about sessions, streaks and revisits.

The synthetic generator's defaults (:mod:`rlrec.models.synthetic`) are calibrated on these
statistics of the Taobao sample, and the fit (:mod:`rlrec.models.transition`) and the fidelity
report read the same step and streak structure: events collapse into steps (same-item runs in a
session), steps into category streaks. Nothing here draws random numbers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "SESSION_GAP_MS",
    "collapse_steps",
    "log_statistics",
    "marginal_stay_curve",
    "read_taobao_frame",
    "run_positions",
    "streak_lengths",
]

SESSION_GAP_MS = 30 * 60 * 1000
"""The inactivity gap that splits sessions in the calibration statistics (30 minutes)."""


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


def run_positions(new_run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index of each element's run and its 1-based position in it.

    Args:
        new_run: (n,) bool, True where a run (e.g. a category streak) starts.

    Returns:
        ``run_start`` and ``streak``, both (n,) int.
    """
    index = np.arange(len(new_run))
    run_start = np.maximum.accumulate(np.where(new_run, index, 0))
    return run_start, index - run_start + 1


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
    _, streak = run_positions(np.r_[True, ~(same_session & stayed)])
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
