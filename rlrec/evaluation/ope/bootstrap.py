"""The one bootstrap of all estimators: resampled column sums, shared by every estimator.

Every estimator (:class:`rlrec.evaluation.ope.base.Estimator`) is a function of column sums
of its per-unit terms, so one resampling of the units (rounds for bandits, sessions for
sequential estimators) serves every estimator: their intervals come from the same
resamples and the bootstrap is paid once. Resamples on which an estimate is undefined
(NaN or infinite) are left out of its percentile interval and *counted*
(:attr:`Estimate.n_nonfinite`), so that a report can say how many there were.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from rlrec.errors import UserError
from rlrec.evaluation.ope.base import DataT, Estimate, Estimator, column_sums

__all__ = [
    "bootstrap_column_sums",
    "bootstrap_estimates",
    "bootstrap_note",
    "bootstrap_summary",
    "estimate_values",
]


def bootstrap_column_sums(
    columns: np.ndarray,
    n_bootstrap: int,
    rng: np.random.Generator,
    max_chunk_elements: int = 1 << 24,
) -> np.ndarray:
    """Column sums of ``n_bootstrap`` resamples (with replacement) of the rows of ``columns``.

    Each resample draws ``n_rounds`` row indices uniformly; they are turned into per-row
    counts (a multinomial count vector) by one ``bincount`` per chunk of resamples, and the
    sums are ``counts @ columns``. Chunks hold at most ``max_chunk_elements`` indices, which
    bounds memory at a few hundred MB whatever the log size.

    Args:
        columns: (n_rounds, n_columns) float64 per-round terms.
        n_bootstrap: Number of resamples B.
        rng: Source of the resampling.
        max_chunk_elements: Upper bound on resamples x rounds held at once.

    Returns:
        (B, n_columns) float64 resampled sums.
    """
    n, k = columns.shape
    out = np.empty((n_bootstrap, k), dtype=np.float64)
    per_chunk = max(1, max_chunk_elements // n)
    # 32-bit indices draw faster and halve the memory traffic whenever a chunk's offsets fit.
    dtype = np.int32 if per_chunk * n < 2**31 else np.int64
    for start in range(0, n_bootstrap, per_chunk):
        b = min(per_chunk, n_bootstrap - start)
        idx = rng.integers(0, n, size=(b, n), dtype=dtype)  # (b, n) resampled row indices
        idx += (np.arange(b, dtype=dtype) * n)[:, None]  # one bincount for the chunk
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)  # (b, n)
        del idx
        out[start : start + b] = counts.astype(np.float64) @ columns  # (b, k)
    return out


def bootstrap_estimates(
    names: Sequence[str],
    blocks: Sequence[np.ndarray],
    combines: Sequence[Callable[[np.ndarray], np.ndarray]],
    n_bootstrap: int,
    confidence: float,
    seed: int,
    method: str = "",
) -> dict[str, Estimate]:
    """Point estimates and percentile bootstrap intervals from per-unit terms.

    Args:
        names: Estimator names, unique.
        blocks: Per estimator, its (n_units, k_e) terms.
        combines: Per estimator, a function of (B, k_e) column sums to (B,) estimates.
        n_bootstrap: Resamples; 0 gives point estimates with NaN intervals.
        confidence: Interval level in (0, 1).
        seed: Seed of the resampling; the same seed gives the same intervals.
        method: The interval method in words, recorded on every estimate.

    Returns:
        Estimates keyed by name, in the given order, each with the number of its resamples
        that were non-finite (left out of its interval; all of them: NaN interval).

    Raises:
        UserError: For a bad ``n_bootstrap`` or ``confidence``, or duplicate names.
    """
    if n_bootstrap < 0:
        raise UserError(f"n_bootstrap: expected >= 0 resamples, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise UserError(f"confidence: expected a level in (0, 1), got {confidence}")
    if len(set(names)) != len(names):
        raise UserError(f"estimators: names must be unique, got {', '.join(names)}")
    values = [float(c(column_sums(b))[0]) for c, b in zip(combines, blocks, strict=True)]
    if n_bootstrap > 0:
        sums = bootstrap_column_sums(np.hstack(blocks), n_bootstrap, np.random.default_rng(seed))
    tail = 100.0 * (1.0 - confidence) / 2.0
    out: dict[str, Estimate] = {}
    start = 0
    for name, combine, block, value in zip(names, combines, blocks, values, strict=True):
        k = block.shape[1]
        ci = (float("nan"), float("nan"))
        n_nonfinite = 0
        if n_bootstrap > 0:
            stats = combine(sums[:, start : start + k])  # (B,)
            finite = stats[np.isfinite(stats)]
            n_nonfinite = int(stats.size - finite.size)
            if finite.size:
                low, high = np.percentile(finite, [tail, 100.0 - tail])
                ci = (float(low), float(high))
        start += k
        out[name] = Estimate(
            name=name,
            value=value,
            ci95=ci,
            n_resamples=n_bootstrap,
            n_nonfinite=n_nonfinite,
            method=method if n_bootstrap > 0 else "",
        )
    return out


def estimate_values(
    data: DataT,
    estimators: Sequence[Estimator[DataT]],
    n_bootstrap: int,
    confidence: float,
    seed: int,
    method: str = "",
) -> dict[str, Estimate]:
    """Every estimator's value on ``data`` with intervals from one shared resampling of units.

    Any fitted model (reward model, Q-function) is held fixed across resamples.

    Args:
        data: Validated logged units (bandit rounds or sessions).
        estimators: Estimators with unique names.
        n_bootstrap: Resamples; 0 gives point estimates with NaN intervals.
        confidence: Interval level in (0, 1).
        seed: Seed of the resampling.
        method: The interval method in words, recorded on every estimate.

    Returns:
        Estimates keyed by name, in the given order.

    Raises:
        UserError: See :func:`bootstrap_estimates`.
    """
    return bootstrap_estimates(
        [e.name for e in estimators],
        [e.terms(data) for e in estimators],  # each (n_units, k_e)
        [partial(e.combine, n_units=data.n_units, data=data) for e in estimators],
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        method=method,
    )


def bootstrap_summary(estimates: Mapping[str, Estimate]) -> dict[str, Any]:
    """The JSON record of the bootstrap behind ``estimates``.

    Returns:
        ``{"n_resamples": B, "nonfinite_resamples": {name: count}}``: per estimator, how
        many of the B resamples gave an undefined estimate and were left out of its interval.
    """
    n = max((e.n_resamples for e in estimates.values()), default=0)
    return {
        "n_resamples": n,
        "nonfinite_resamples": {name: e.n_nonfinite for name, e in estimates.items()},
    }


def bootstrap_note(summary: Mapping[str, Any]) -> str:
    """One line for text reports from a :func:`bootstrap_summary` record.

    It says how many resamples the intervals come from and which estimators had undefined
    (non-finite) ones, which were left out of their intervals.
    """
    n = int(summary["n_resamples"])
    if n == 0:
        return "bootstrap: no resamples (no intervals)"
    counts = summary["nonfinite_resamples"]
    bad = [f"{name} {count}" for name, count in counts.items() if count]
    left_out = ", ".join(bad) if bad else "none"
    return f"bootstrap: {n} resamples; non-finite ones left out of the intervals: {left_out}"
