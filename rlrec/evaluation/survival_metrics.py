"""Metrics of return predictions against what happened: discrimination, error, calibration.

A churn window ``[cutoff, cutoff + H)`` is observed for every user to its end, so every user
is right-censored at the same time ``H`` (administrative censoring): the time-dependent AUC
and the Brier score at ``t <= H`` need no inverse-probability-of-censoring weights (the IPCW
weights of Uno et al. and Graf et al. are all 1 under a common censoring time). The
concordance index is Harrell's, computed in O(n log n) with a Fenwick tree; the tests check all
three against scikit-survival's implementations.

ROC AUC is scikit-learn's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "brier_score",
    "calibration_bins",
    "concordance_index",
    "cumulative_dynamic_auc",
    "integrated_brier_score",
    "roc_auc",
]


def roc_auc(label: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of ``score`` (n,) for the binary ``label`` (n,); None when one class is absent."""
    from sklearn.metrics import roc_auc_score

    label = np.asarray(label, dtype=bool)
    if label.all() or not label.any():
        return None
    return float(roc_auc_score(label, np.asarray(score, dtype=np.float64)))


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float | None:
    """Harrell's C: P(risk_i > risk_j | T_i < T_j, i had the event); ties in risk count 1/2.

    A pair is comparable when the shorter time is an event (ties in time are not comparable,
    as in scikit-survival's ``concordance_index_censored``).

    Args:
        time: (n,) event or censoring times.
        event: (n,) bool, True where the event happened at ``time``.
        risk: (n,) predicted risk (higher = earlier event).

    Returns:
        The C-index, or None with no comparable pair.
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=np.float64)
    n = len(time)
    if n == 0:
        return None
    # Dense ranks of risk (1-based) for the Fenwick tree.
    _, rank = np.unique(risk, return_inverse=True)
    rank = rank.astype(np.int64) + 1
    size = int(rank.max())
    tree = np.zeros(size + 1, dtype=np.int64)
    order = np.argsort(-time, kind="stable")
    concordant = 0.0
    comparable = 0
    inserted = 0
    i = 0
    # Walk times from the largest down; a block of tied times is queried before it is added,
    # so each event is compared with the strictly longer times only.
    while i < n:
        j = i
        t = time[order[i]]
        while j < n and time[order[j]] == t:
            j += 1
        for k in order[i:j]:
            if not event[k]:
                continue
            r = rank[k]
            below = _prefix(tree, r - 1)
            at_most = _prefix(tree, r)
            concordant += below + 0.5 * (at_most - below)
            comparable += inserted
        for k in order[i:j]:
            _add(tree, rank[k])
            inserted += 1
        i = j
    return None if comparable == 0 else float(concordant / comparable)


def _prefix(tree: np.ndarray, index: int) -> int:
    total = 0
    while index > 0:
        total += int(tree[index])
        index -= index & -index
    return total


def _add(tree: np.ndarray, index: int) -> None:
    size = len(tree) - 1
    while index <= size:
        tree[index] += 1
        index += index & -index


def cumulative_dynamic_auc(
    time: np.ndarray, event: np.ndarray, risk_at: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, float | None]:
    """Cumulative/dynamic AUC at each of ``times``, under a common censoring time.

    Cases at ``t`` are users with the event by ``t``; controls, those without. With every
    user followed to at least ``max(times)``, this is the ROC AUC of ``risk_at[:, j]`` for the
    label ``T <= t_j`` (no censoring weights).

    Args:
        time: (n,) first-return times (censored at the window's end).
        event: (n,) bool, True where the return was seen.
        risk_at: (n, m) risk score at each time (e.g. ``1 - S(t)``).
        times: (m,) evaluation times.

    Returns:
        (m,) AUC per time (NaN where a class is empty) and their mean (None if all NaN).
    """
    values = []
    for j, t in enumerate(np.asarray(times, dtype=np.float64)):
        label = np.asarray(event, bool) & (np.asarray(time) <= t)
        auc = roc_auc(label, risk_at[:, j])
        values.append(np.nan if auc is None else auc)
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return arr, (float(finite.mean()) if len(finite) else None)


def brier_score(
    time: np.ndarray, event: np.ndarray, survival_at: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """(m,) Brier score of S(t) at each time, under a common censoring time >= max(times).

    Args:
        time: (n,) first-return times.
        event: (n,) bool, True where the return was seen.
        survival_at: (n, m) predicted P(no return by t_j).
        times: (m,) evaluation times.
    """
    times = np.asarray(times, dtype=np.float64)
    still_out = ~(np.asarray(event, bool)[:, None] & (np.asarray(time)[:, None] <= times[None]))
    return np.asarray(np.mean((still_out.astype(np.float64) - survival_at) ** 2, axis=0))


def integrated_brier_score(
    time: np.ndarray, event: np.ndarray, survival_at: np.ndarray, times: np.ndarray
) -> float:
    """Integrated Brier score over ``times`` (trapezoid rule, divided by the span)."""
    times = np.asarray(times, dtype=np.float64)
    scores = brier_score(time, event, survival_at, times)
    if len(times) < 2:
        return float(scores[0])
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


def calibration_bins(label: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability table of ``prob`` (n,) against ``label`` (n,) in equal-count bins.

    Returns:
        ``bins``: list of ``{"p_mean", "observed", "n"}``; ``ece``: expected calibration
        error (count-weighted mean |p_mean - observed|).
    """
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    if len(prob) == 0:
        return {"bins": [], "ece": None}
    order = np.argsort(prob, kind="stable")
    bins = []
    ece = 0.0
    for chunk in np.array_split(order, min(n_bins, len(prob))):
        if len(chunk) == 0:
            continue
        p_mean = float(prob[chunk].mean())
        observed = float(label[chunk].mean())
        bins.append({"p_mean": p_mean, "observed": observed, "n": len(chunk)})
        ece += len(chunk) * abs(p_mean - observed)
    return {"bins": bins, "ece": ece / len(prob)}
