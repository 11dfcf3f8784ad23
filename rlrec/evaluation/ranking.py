"""Next-step ranking evaluation: full-ranking metrics, sequence baselines and the protocol.

Protocol (:func:`evaluate_next_step`, printed with every result):

* sequences are sessions of **steps** (consecutive events on one item collapsed, see
  :mod:`rlrec.models.sequences`), in the evaluated split (``test`` by default);
* every step ``t >= 1`` of every session is a target: predict its item and its category from
  the steps before it in the same session, truncated to the encoder's last ``max_len`` steps;
* **full ranking**: the target is ranked against every item of the catalog (every category),
  with no sampled negatives; ties count half (the expected rank under random tie-breaking);
* HR@10 and NDCG@10 (one relevant item: ``1 / log2(rank + 2)`` when ``rank < 10``) and MRR for
  the next item, accuracy@1 and @5 for the next category, averaged over targets;
* the encoder ranks items by its next-item log-probabilities: the copy/generate mixture
  when it has a copy term (``EncoderConfig.copy``), else the generative head's softmax;
* baselines are fitted on the ``train`` split's steps: ``popularity`` (most frequent items and
  categories), ``item_markov`` (first-order item-to-item transition counts, popularity as
  tie-break; categories by summing the transitions into each category),
  ``category_markov`` (the category-migration matrix; items by P(category) x P(item |
  category)), ``last_category`` (the current category first, then by popularity;
  categories only).

Metric functions are pure functions over score arrays; baselines are arrays fitted once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from rlrec.data.content import require_items
from rlrec.data.dataset import PreparedDataset
from rlrec.models.encoder import SequenceEncoder
from rlrec.models.metrics import category_accuracy, item_ranking_metrics, target_ranks
from rlrec.models.sequences import IGNORE, Steps, Windows, collapse_repeats, prefix_windows

__all__ = [
    "BASELINES",
    "CATEGORY_METRICS",
    "ITEM_METRICS",
    "SequenceBaselines",
    "baseline_scores",
    "evaluate_next_step",
    "fit_baselines",
    "format_report",
    "protocol",
]

ITEM_METRICS: tuple[str, ...] = ("hr@10", "ndcg@10", "mrr")
CATEGORY_METRICS: tuple[str, ...] = ("category_acc@1", "category_acc@5")
BASELINES: tuple[str, ...] = ("popularity", "item_markov", "category_markov", "last_category")


@dataclass(frozen=True)
class SequenceBaselines:
    """Count statistics of a training split, from which every baseline scores.

    Attributes:
        item_counts: (n_items,) steps on each item.
        category_counts: (n_categories,) steps in each category.
        item_transitions: (n_items, n_items) sparse counts of item ``i`` followed by ``j``.
        item_to_category: (n_items, n_categories) sparse counts of item ``i`` followed by a
            step in category ``c``.
        category_transitions: (n_categories, n_categories) counts of category ``c`` followed
            by ``c'``.
        item_category: (n_items,) category of each item.
    """

    item_counts: np.ndarray
    category_counts: np.ndarray
    item_transitions: sp.csr_matrix
    item_to_category: sp.csr_matrix
    category_transitions: np.ndarray
    item_category: np.ndarray

    @property
    def n_items(self) -> int:
        """Catalog size."""
        return len(self.item_counts)

    @property
    def n_categories(self) -> int:
        """Number of categories."""
        return len(self.category_counts)


def fit_baselines(
    steps: Steps, n_items: int, n_categories: int, item_category: np.ndarray
) -> SequenceBaselines:
    """Count items, categories and first-order transitions within sessions.

    Args:
        steps: Training sessions as steps.
        n_items: Catalog size.
        n_categories: Number of categories.
        item_category: (n_items,) category of each item.
    """
    items, cats = steps.items, steps.categories
    # A transition is a pair of consecutive steps in one session: drop pairs across sessions.
    not_last = np.ones(len(items), dtype=bool)
    ends = steps.offsets[1:] - 1
    not_last[ends[ends >= 0]] = False
    src = np.flatnonzero(not_last[:-1] if len(items) else not_last)
    dst = src + 1
    ones = np.ones(len(src))
    item_transitions = sp.csr_matrix(
        (ones, (items[src], items[dst])), shape=(n_items, n_items), dtype=np.float64
    )
    item_to_category = sp.csr_matrix(
        (ones, (items[src], cats[dst])), shape=(n_items, n_categories), dtype=np.float64
    )
    category_transitions = np.zeros((n_categories, n_categories))
    np.add.at(category_transitions, (cats[src], cats[dst]), 1.0)
    return SequenceBaselines(
        item_counts=np.bincount(items, minlength=n_items).astype(np.float64),
        category_counts=np.bincount(cats, minlength=n_categories).astype(np.float64),
        item_transitions=item_transitions,
        item_to_category=item_to_category,
        category_transitions=category_transitions,
        item_category=np.asarray(item_category, dtype=np.int64),
    )


def baseline_scores(
    baselines: SequenceBaselines, name: str, last_items: np.ndarray, last_categories: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Next-item and next-category scores of one baseline.

    Args:
        baselines: Fitted counts.
        name: One of :data:`BASELINES`.
        last_items: (B,) item of the most recent step.
        last_categories: (B,) category of the most recent step.

    Returns:
        ``(item_scores (B, n_items) or None, category_scores (B, n_categories) or None)``;
        None where the baseline does not predict that target.
    """
    b = len(last_items)
    # Popularity in [0, 0.5): added to integer counts it breaks ties without reordering them.
    item_pop = 0.5 * baselines.item_counts / max(baselines.item_counts.max(), 1.0)
    cat_pop = 0.5 * baselines.category_counts / max(baselines.category_counts.max(), 1.0)
    if name == "popularity":
        return np.tile(item_pop, (b, 1)), np.tile(cat_pop, (b, 1))
    if name == "item_markov":
        items = baselines.item_transitions[last_items].toarray() + item_pop  # (B, n_items)
        cats = baselines.item_to_category[last_items].toarray() + cat_pop  # (B, C)
        return items, cats
    if name == "category_markov":
        counts = baselines.category_transitions[last_categories] + cat_pop  # (B, C)
        p_cat = counts / counts.sum(axis=1, keepdims=True)  # (B, C)
        per_cat = np.bincount(
            baselines.item_category,
            weights=baselines.item_counts,
            minlength=baselines.n_categories,
        )
        # P(item | category) by popularity, smoothed so unseen items still get a score.
        p_item = (baselines.item_counts + 1e-3) / (
            per_cat[baselines.item_category]
            + 1e-3
            * np.bincount(baselines.item_category, minlength=baselines.n_categories)[
                baselines.item_category
            ]
        )  # (n_items,)
        return p_cat[:, baselines.item_category] * p_item, counts
    if name == "last_category":
        cats = np.tile(cat_pop, (b, 1))
        cats[np.arange(b), last_categories] += 1.0
        return None, cats
    raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")


@dataclass(frozen=True)
class _Targets:
    """Targets of a batch of windows, flattened: the rows and columns where a target sits."""

    rows: np.ndarray
    cols: np.ndarray
    items: np.ndarray
    categories: np.ndarray
    last_items: np.ndarray
    last_categories: np.ndarray


def _batches(windows: Windows, batch_size: int) -> Iterator[tuple[slice, _Targets]]:
    for lo in range(0, len(windows), batch_size):
        sl = slice(lo, min(lo + batch_size, len(windows)))
        rows, cols = np.nonzero(windows.target_items[sl] != IGNORE)
        yield (
            sl,
            _Targets(
                rows=rows,
                cols=cols,
                items=windows.target_items[sl][rows, cols],
                categories=windows.target_categories[sl][rows, cols],
                last_items=windows.items[sl][rows, cols] - 1,
                last_categories=windows.categories[sl][rows, cols] - 1,
            ),
        )


def protocol(split: str, max_len: int, n_targets: int, n_sessions: int) -> dict[str, Any]:
    """The evaluation protocol as a JSON-friendly mapping, with a one-paragraph description."""
    return {
        "split": split,
        "targets": n_targets,
        "sessions": n_sessions,
        "max_len": max_len,
        "collapse_repeats": True,
        "ranking": "full",
        "baselines_fitted_on": "train",
        "description": (
            f"{split} split; consecutive events on one item collapsed into one step; every "
            f"step t>=1 of every session ({n_targets} targets, {n_sessions} sessions) predicted "
            f"from its prefix (last {max_len} steps); full ranking over all items and all "
            "categories, no sampled negatives, ties count half; HR@10, NDCG@10, MRR for the "
            "next item, accuracy@1/@5 for the next category; baselines fitted on train."
        ),
    }


def evaluate_next_step(
    model: SequenceEncoder | None,
    dataset: PreparedDataset,
    split: str = "test",
    max_len: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Evaluate an encoder and the baselines on next-step prediction (see module docstring).

    Args:
        model: The encoder, or None to evaluate the baselines only.
        dataset: The dataset the encoder was trained on.
        split: Split to evaluate (``test``, or ``valid``).
        max_len: History length; defaults to the model's (50 without a model).
        batch_size: Windows per forward pass.

    Returns:
        ``{"protocol": {...}, "encoder": {metric: value}, "baselines": {name: {metric:
        value}}}``; ``encoder`` is absent without a model; each baseline holds the metrics
        it predicts.
    """
    require_items(dataset, "encoder eval")
    if max_len is None:
        max_len = model.config.max_len if model is not None else 50
    train = collapse_repeats(dataset.sessions("train"))
    baselines = fit_baselines(train, dataset.n_items, dataset.n_categories, dataset.item_category)
    steps = collapse_repeats(dataset.sessions(split))
    windows = prefix_windows(steps, max_len)
    ranks: dict[str, dict[str, list[np.ndarray]]] = {
        name: {"item": [], "category": []} for name in ("encoder", *BASELINES)
    }
    # Baselines materialise (B, n_items) score rows: keep a batch of targets to ~4M floats.
    target_rows = max(16, 4_000_000 // max(dataset.n_items, 1))
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    if model is not None:
        model.eval()
    for sl, tg in _batches(windows, batch_size):
        if len(tg.items) == 0:
            continue
        if model is not None:
            with torch.no_grad():
                items = torch.as_tensor(windows.items[sl], device=device)
                cats = torch.as_tensor(windows.categories[sl], device=device)
                full = model(items, cats, causal=True)  # (B, L, d)
                at = tuple(torch.as_tensor(a, device=device) for a in (tg.rows, tg.cols))
                hidden = full[at]  # (N, d)
                pointer = model.pointer(full, items, cats)
                pointer = pointer[at] if pointer is not None else None  # (N,)
                for lo in range(0, len(tg.items), target_rows):
                    part = slice(lo, lo + target_rows)
                    h = hidden[part]
                    t_items = torch.as_tensor(tg.items[part], device=device)
                    t_cats = torch.as_tensor(tg.categories[part], device=device)
                    # The copy/generate mixture when the encoder has a copy term.
                    scores = model.next_item_log_probs(
                        h, pointer[part] if pointer is not None else None
                    )
                    ranks["encoder"]["item"].append(target_ranks(scores, t_items))
                    ranks["encoder"]["category"].append(
                        target_ranks(model.category_logits(h), t_cats)
                    )
        for lo in range(0, len(tg.items), target_rows):
            part = slice(lo, lo + target_rows)
            for name in BASELINES:
                item_scores, cat_scores = baseline_scores(
                    baselines, name, tg.last_items[part], tg.last_categories[part]
                )
                if item_scores is not None:
                    ranks[name]["item"].append(target_ranks(item_scores, tg.items[part]))
                if cat_scores is not None:
                    ranks[name]["category"].append(target_ranks(cat_scores, tg.categories[part]))

    def metrics(name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if name in ("encoder", "popularity", "item_markov", "category_markov"):
            out.update(item_ranking_metrics(_concat(ranks[name]["item"])))
        out.update(category_accuracy(_concat(ranks[name]["category"])))
        return out

    report: dict[str, Any] = {
        "protocol": protocol(split, max_len, windows.n_targets, steps.n_sessions),
    }
    if model is not None:
        report["encoder"] = metrics("encoder")
    report["baselines"] = {name: metrics(name) for name in BASELINES}
    return report


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_next_step`'s report, protocol first."""
    columns = (*ITEM_METRICS, *CATEGORY_METRICS)
    rows = []
    if "encoder" in report:
        rows.append(("encoder", report["encoder"]))
    rows += [(f"{name} (baseline)", m) for name, m in report["baselines"].items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"protocol: {report['protocol']['description']}", ""]
    lines.append(f"{'model':<{width}}  " + "  ".join(f"{c:>14}" for c in columns))
    for name, m in rows:
        cells = [f"{m[c]:>14.4f}" if c in m else f"{'-':>14}" for c in columns]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
