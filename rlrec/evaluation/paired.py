"""Paired comparison of two rankers on the same targets: is the difference more than noise?

A table of NDCG@10 per model says which number is larger, not whether the lead would
survive another test split. On the real logs in ``../shared`` (the Taobao sample's 822 test
targets) the encoder's lead over the re-visit rule and its gap to the last-category rule are
a few targets each; a reader needs the interval, not only the point.

Every model is scored on the *same* targets, so the comparison is paired: per target, the
difference of the two models' metric (hit, NDCG contribution, category hit). Targets of one
user are not independent (one user's sessions share a history, one session's steps share a
context), so the resampling unit is the **user** (the session where the log has no users):
a cluster bootstrap of the mean difference, ``sum_u D_u / sum_u n_u`` over resampled users,
where ``D_u`` is user ``u``'s summed difference and ``n_u`` its number of targets. Its
percentile interval is reported, and the verdict reads "above" or "below" when the 95%
interval excludes zero, "level" otherwise.

scipy's ``stats.bootstrap`` resamples observations, not clusters, and would resample each
(baseline, metric) pair apart; here one set of resampled user counts
(:func:`~rlrec.evaluation.ope.bootstrap.bootstrap_column_sums`, the OPE bootstrap's
resampler) serves every pair at the cost of one matrix product.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rlrec.evaluation.ope.bootstrap import bootstrap_column_sums

__all__ = [
    "PAIRED_METRICS",
    "VERDICT_WORDS",
    "paired_comparison",
    "paired_figures",
    "paired_lines",
]

PAIRED_METRICS: tuple[str, ...] = ("ndcg@10", "hr@10", "category_acc@1")
"""The metrics compared pairwise: the issue's targets (MRR and acc@5 stay in the table)."""

VERDICT_WORDS = {
    "above": "above it with 95% confidence",
    "below": "below it with 95% confidence",
    "level": "level (cannot tell apart at 95%)",
}
"""How a paired verdict reads in the text report and the HTML caption."""


def paired_comparison(
    model: Mapping[str, np.ndarray],
    baselines: Mapping[str, Mapping[str, np.ndarray]],
    clusters: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    unit: str = "users",
) -> dict[str, Any]:
    """The model minus each baseline, per metric, with 95% cluster-bootstrap intervals.

    Args:
        model: Metric name -> (N,) per-target values of the model
            (:func:`~rlrec.models.metrics.item_target_values` and
            :func:`~rlrec.models.metrics.category_target_values`).
        baselines: Baseline name -> the same for that baseline, on the same N targets in the
            same order. A baseline is compared on the metrics in :data:`PAIRED_METRICS` that
            both it and the model have.
        clusters: (N,) int id of each target's resampling unit (user, or session).
        n_resamples: Bootstrap resamples of the clusters.
        seed: Seed of the resampling.
        unit: What a cluster is, for the method line (``users`` or ``sessions``).

    Returns:
        ``{"method": str, "n_resamples", "n_clusters", "baselines": {name:
        {metric: {"difference", "ci95"}}}, "best": {metric: {"baseline", "difference",
        "ci95", "verdict"}}}``. ``best`` compares against the baseline with the highest mean
        on that metric (the strongest competitor); ``verdict`` is ``"above"``, ``"below"`` or
        ``"level"`` (the interval holds zero). Empty ``baselines`` and ``best`` without
        targets.

    Raises:
        ValueError: If the arrays' lengths differ or ``n_resamples`` < 1.
    """
    clusters = np.asarray(clusters)
    n = len(clusters)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    pairs: list[tuple[str, str]] = []
    columns: list[np.ndarray] = []
    for name, values in baselines.items():
        for metric in PAIRED_METRICS:
            if metric in model and metric in values:
                a, b = np.asarray(model[metric]), np.asarray(values[metric])
                if a.shape != (n,) or b.shape != (n,):
                    raise ValueError(
                        f"{name} {metric}: values of shape {a.shape} and {b.shape}, clusters ({n},)"
                    )
                pairs.append((name, metric))
                columns.append(a - b)
    out: dict[str, Any] = {
        "method": f"cluster bootstrap of the mean paired difference over {unit} "
        f"({n_resamples} resamples, 95% percentile interval)",
        "n_resamples": n_resamples,
        "n_clusters": 0,
        "baselines": {},
        "best": {},
    }
    if n == 0 or not pairs:
        return out
    _, cluster = np.unique(clusters, return_inverse=True)
    n_clusters = int(cluster.max()) + 1
    out["n_clusters"] = n_clusters
    # Per cluster: its target count, then its summed difference for every (baseline, metric).
    sums = np.stack(
        [np.bincount(cluster, minlength=n_clusters).astype(np.float64)]
        + [np.bincount(cluster, weights=diff, minlength=n_clusters) for diff in columns],
        axis=1,
    )  # (n_clusters, 1 + pairs)
    resampled = bootstrap_column_sums(sums, n_resamples, np.random.default_rng(seed))
    means = resampled[:, 1:] / np.maximum(resampled[:, :1], 1.0)  # (B, pairs)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    for j, (name, metric) in enumerate(pairs):
        out["baselines"].setdefault(name, {})[metric] = {
            "difference": float(columns[j].mean()),
            "ci95": [float(low[j]), float(high[j])],
        }
    for metric in PAIRED_METRICS:
        scored = {
            name: float(np.mean(values[metric]))
            for name, values in baselines.items()
            if metric in values and metric in model
        }
        if not scored:
            continue
        best = max(scored, key=lambda name: scored[name])
        cell = out["baselines"][best][metric]
        lo, hi = cell["ci95"]
        verdict = "above" if lo > 0 else "below" if hi < 0 else "level"
        out["best"][metric] = {"baseline": best, **cell, "verdict": verdict}
    return out


def paired_lines(paired: dict[str, Any], model: str = "encoder") -> list[str]:
    """A model against the strongest baseline per metric, one line each, method first.

    Args:
        paired: One model's comparison (:func:`paired_comparison`'s result).
        model: The model's name, for the header.
    """
    lines = [f"{model} minus the strongest baseline, {paired['method']}:"]
    for metric, cell in paired["best"].items():
        lo, hi = cell["ci95"]
        lines.append(
            f"  {metric:<15} {cell['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] vs "
            f"{cell['baseline']}: {VERDICT_WORDS[cell['verdict']]}"
        )
    return lines


def paired_figures(paired: dict[str, Any], prefix: str, model: str = "encoder") -> dict[str, Any]:
    """Flat, unit-named benchmark keys of one model's comparison with the strongest baselines.

    Args:
        paired: One model's comparison (:func:`paired_comparison`'s result).
        prefix: Key prefix (the log's name).
        model: The model's name in the keys.

    Returns:
        ``{prefix}_{model}_minus_best_{metric}`` (the mean difference, in the metric's units)
        with ``_ci95_low``, ``_ci95_high``, ``_baseline`` and ``_verdict`` beside it, and
        ``{prefix}_{model}_above_baselines_95``: every compared metric's verdict is "above".
    """
    out: dict[str, Any] = {}
    for metric, cell in paired.get("best", {}).items():
        key = f"{prefix}_{model}_minus_best_{metric.replace('@', '_at_')}"
        out[key] = cell["difference"]
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = cell["ci95"]
        out[f"{key}_baseline"] = cell["baseline"]
        out[f"{key}_verdict"] = cell["verdict"]
    verdicts = [cell["verdict"] for cell in paired.get("best", {}).values()]
    out[f"{prefix}_{model}_above_baselines_95"] = bool(verdicts) and all(
        v == "above" for v in verdicts
    )
    return out
