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
  categories only), and the neighbourhood family of :mod:`rlrec.evaluation.neighbors`:
  ``item_knn`` (co-occurrence with the current item), ``sknn`` and ``vsknn`` (session-kNN
  and its position-decayed, IDF-weighted variant, Ludewig & Jannach 2018), and ``revisit``
  (the user's own recent items by recency, :mod:`rlrec.evaluation.history`);
* each tuned baseline's neighbourhood size (``k``, ``sample_size``, ``window``) is chosen on
  the ``valid`` split's targets by NDCG@10 (then MRR, then the first in the grid) and
  reported under ``baseline_params``;
* context: every session baseline sees the current session's prefix (its last ``max_len``
  steps); ``revisit`` also sees the user's earlier sessions (any split, all before the
  target) unless ``user_history=False``, and so does an encoder trained on user histories
  (``EncoderConfig.sessions``: its last ``max_len`` steps across sessions, through
  :func:`encoder_ranks`); the protocol names what each saw;
* the current item is ranked last by every baseline (repeats are collapsed, so it is never
  the target); the neighbourhood baselines rank the items they give no vote by popularity,
  below every voted item;
* ``encoder_knn``: the encoder's next-item distribution mixed with the vote shares of the
  better of SKNN and V-SKNN on valid, ``(1 - w) p_encoder + w p_knn``, with ``w`` chosen on
  the same valid targets (``BaselineConfig.knn_mixture_weights``; 0, the encoder alone,
  wins ties); it re-ranks items only;
* the encoder and ``encoder_knn`` are compared with every baseline **pairwise on the same
  targets** (:mod:`rlrec.evaluation.paired`): the mean difference on NDCG@10, HR@10 and
  category acc@1 with a 95% interval from a bootstrap over users (a log without users
  gives every session its own), and against the strongest baseline per metric a verdict:
  above, below, or level (the interval holds zero).

Metric functions are pure functions over score arrays; baselines are arrays fitted once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from rlrec.data.content import require_items
from rlrec.data.dataset import PreparedDataset
from rlrec.evaluation.history import (
    UserTimelines,
    revisit_scores,
    split_session_ids,
    user_timelines,
)
from rlrec.evaluation.neighbors import (
    KnnCandidates,
    SessionIndex,
    fit_item_knn,
    fit_session_index,
    item_knn_scores,
    knn_candidates,
    session_knn_scores,
)
from rlrec.evaluation.paired import paired_comparison, paired_lines
from rlrec.models.encoder import Pointer, SequenceEncoder
from rlrec.models.metrics import (
    category_accuracy,
    category_target_values,
    item_ranking_metrics,
    item_target_values,
    target_ranks,
)
from rlrec.models.sequences import (
    IGNORE,
    Steps,
    Windows,
    collapse_repeats,
    encoder_windows,
    prefix_windows,
)

__all__ = [
    "BASELINES",
    "CATEGORY_METRICS",
    "CATEGORY_PREDICTORS",
    "ITEM_METRICS",
    "TUNED_BASELINES",
    "BaselineConfig",
    "SequenceBaselines",
    "Targets",
    "baseline_scores",
    "encoder_ranks",
    "evaluate_next_step",
    "fit_baselines",
    "format_report",
    "next_step_targets",
    "protocol",
]

ITEM_METRICS: tuple[str, ...] = ("hr@10", "ndcg@10", "mrr")
CATEGORY_METRICS: tuple[str, ...] = ("category_acc@1", "category_acc@5")
BASELINES: tuple[str, ...] = (
    "popularity",
    "item_markov",
    "category_markov",
    "last_category",
    "item_knn",
    "sknn",
    "vsknn",
    "revisit",
)
CATEGORY_PREDICTORS: tuple[str, ...] = (
    "encoder",
    "popularity",
    "item_markov",
    "category_markov",
    "last_category",
)
"""The models that predict the next category (the others rank items only)."""
TUNED_BASELINES: dict[str, tuple[str, ...]] = {
    "item_knn": ("k",),
    "sknn": ("k", "sample_size"),
    "vsknn": ("k", "sample_size"),
    "revisit": ("window",),
}
"""Baselines whose neighbourhood size is chosen on the valid split, and the sizes' names."""


@dataclass(frozen=True)
class BaselineConfig:
    """Grids of the tuned baselines and their fixed settings.

    Attributes:
        knn_k: Neighbour sessions tried for SKNN and V-SKNN (Ludewig & Jannach 2018 tune
            50..1500).
        knn_sample_sizes: Most recent candidate sessions tried for SKNN and V-SKNN; pairs
            with ``sample_size < k`` are skipped.
        item_knn_k: Neighbour items tried for item-kNN.
        revisit_windows: History lengths (steps) tried for re-visit.
        item_knn_shrinkage: Item-kNN's ``lambda`` (session-rec's default, 20).
        vsknn_idf_weight: V-SKNN's IDF weight (10, as in session-rec's tuned V-SKNN).
        user_history: Let ``revisit`` see the user's earlier sessions, not only the
            current one.
        max_tune_targets: The neighbourhood sizes are chosen on a seeded sample of at most
            this many valid targets. The grid has 32 settings, each ranking every target
            against the whole catalog: on the quickstart's synthetic log (14,370 valid
            targets, 17,384 items) tuning on all of them was about three quarters of
            ``rlrec encoder eval``'s 231 s. 5,000 targets put a standard error of about
            0.004 on a setting's NDCG@10, finer than the steps between the grid's sizes.
        tune_seed: Seed of that sample.
        knn_mixture_weights: Weights ``w`` tried for ``encoder_knn``, the encoder's
            next-item distribution mixed with the session-kNN's vote shares, ``(1 - w)
            p_encoder + w p_knn``; chosen on the same valid targets, 0 (the encoder alone)
            first so that it wins ties.
    """

    knn_k: tuple[int, ...] = (50, 100, 200, 500)
    knn_sample_sizes: tuple[int, ...] = (500, 1000, 5000)
    item_knn_k: tuple[int, ...] = (20, 50, 100, 200)
    revisit_windows: tuple[int, ...] = (10, 50, 200, 1000)
    item_knn_shrinkage: float = 20.0
    vsknn_idf_weight: float = 10.0
    user_history: bool = True
    max_tune_targets: int = 5_000
    tune_seed: int = 0
    knn_mixture_weights: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)

    def __post_init__(self) -> None:
        for name in ("knn_k", "knn_sample_sizes", "item_knn_k", "revisit_windows"):
            values = getattr(self, name)
            if not values or any(int(v) != v or v <= 0 for v in values):
                raise ValueError(f"{name} must be positive integers, got {list(values)}")
        if self.item_knn_shrinkage < 0 or self.vsknn_idf_weight < 0:
            raise ValueError("item_knn_shrinkage and vsknn_idf_weight must be >= 0")
        if self.max_tune_targets < 1:
            raise ValueError(f"max_tune_targets must be >= 1, got {self.max_tune_targets}")
        weights = self.knn_mixture_weights
        if not weights or any(not 0.0 <= w < 1.0 for w in weights):
            raise ValueError(f"knn_mixture_weights must lie in [0, 1), got {list(weights)}")

    def grid(self, name: str) -> list[dict[str, int]]:
        """The parameter settings tried for one tuned baseline, in order."""
        if name in ("sknn", "vsknn"):
            return [
                {"k": k, "sample_size": n}
                for n in self.knn_sample_sizes
                for k in self.knn_k
                if n >= k
            ] or [{"k": k, "sample_size": k} for k in self.knn_k]
        if name == "item_knn":
            return [{"k": k} for k in self.item_knn_k]
        if name == "revisit":
            return [{"window": w} for w in self.revisit_windows]
        raise ValueError(f"{name!r} is not a tuned baseline")


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
            ),
        )


@dataclass(frozen=True)
class Targets:
    """Every next-step target of one split, as the baselines read it.

    Attributes:
        steps: The split's sessions as steps.
        position: (N,) index into ``steps`` of each target step (never a session's first).
        session: (N,) session of each target.
        max_len: Prefix length the session baselines see.
        timeline_end: (N,) index of the target in the user timelines (its history ends
            just before).
        history_start: (N,) first timeline index the target's history may use: its user's
            first step, or its session's without user history.
    """

    steps: Steps
    position: np.ndarray
    session: np.ndarray
    max_len: int
    timeline_end: np.ndarray = field(repr=False)
    history_start: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.position)

    @property
    def items(self) -> np.ndarray:
        """(N,) target items."""
        return self.steps.items[self.position]

    @property
    def categories(self) -> np.ndarray:
        """(N,) target categories."""
        return self.steps.categories[self.position]

    @property
    def last_items(self) -> np.ndarray:
        """(N,) the current item: the step before each target."""
        return self.steps.items[self.position - 1]

    @property
    def last_categories(self) -> np.ndarray:
        """(N,) the current category."""
        return self.steps.categories[self.position - 1]

    def subset(self, index: np.ndarray) -> Targets:
        """The targets at ``index`` (a sorted (n,) int array), in that order."""
        return replace(
            self,
            position=self.position[index],
            session=self.session[index],
            timeline_end=self.timeline_end[index],
            history_start=self.history_start[index],
        )

    def prefixes(self, rows: slice) -> np.ndarray:
        """(n, max_len) items of the targets' prefixes, left-padded with -1 (last = current)."""
        pos = self.position[rows]
        first = self.steps.offsets[self.session[rows]]
        idx = pos[:, None] - self.max_len + np.arange(self.max_len)[None, :]  # (n, L)
        return np.where(idx >= first[:, None], self.steps.items[np.maximum(idx, 0)], -1)


def next_step_targets(
    steps: Steps,
    max_len: int,
    timelines: UserTimelines | None = None,
    session_ids: np.ndarray | None = None,
    user_history: bool = True,
) -> Targets:
    """Every step ``t >= 1`` of every session as a target, with where its history lies.

    Args:
        steps: One split's sessions as steps.
        max_len: Prefix length the session baselines see.
        timelines: The log's user timelines (for ``revisit``); without them a target's
            history is its own session.
        session_ids: (S,) session id of each of ``steps``' sessions (with ``timelines``).
        user_history: Whether a target's history starts at its user's first step (else at
            its session's).
    """
    per_session = np.maximum(steps.lengths - 1, 0)
    session = np.repeat(np.arange(steps.n_sessions), per_session)
    first_target = np.cumsum(per_session) - per_session
    within = np.arange(len(session)) - first_target[session] + 1  # 1 .. length - 1
    position = steps.offsets[session] + within
    if timelines is not None and session_ids is not None:
        session_start, user_start = timelines.offsets_of(session_ids)
        end = session_start[session] + within
        start = user_start[session] if user_history else session_start[session]
    else:
        end, start = position, steps.offsets[session]
    return Targets(
        steps=steps,
        position=position.astype(np.int64),
        session=session,
        max_len=max_len,
        timeline_end=end.astype(np.int64),
        history_start=start.astype(np.int64),
    )


@dataclass(frozen=True)
class _Fitted:
    """Everything the baselines fit on the train split."""

    counts: SequenceBaselines
    sessions: SessionIndex
    item_similarity: sp.csr_matrix
    timeline_items: np.ndarray
    config: BaselineConfig


def _fit_all(dataset: PreparedDataset, config: BaselineConfig, timelines: UserTimelines) -> _Fitted:
    train_sessions = dataset.sessions("train")
    train = collapse_repeats(train_sessions)
    ends = train_sessions.offsets[1:] - 1
    session_end = train_sessions.timestamps[ends] if len(ends) else np.zeros(0, dtype=np.int64)
    return _Fitted(
        counts=fit_baselines(train, dataset.n_items, dataset.n_categories, dataset.item_category),
        sessions=fit_session_index(train, session_end, dataset.n_items),
        item_similarity=fit_item_knn(train, dataset.n_items, config.item_knn_shrinkage),
        timeline_items=timelines.items,
        config=config,
    )


def _scores(
    fitted: _Fitted,
    name: str,
    params: dict[str, int],
    targets: Targets,
    rows: slice,
    candidates: KnnCandidates | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One baseline's item and category scores for a slice of targets (protocol applied)."""
    last_items = targets.last_items[rows]
    counts = fitted.counts
    if name in TUNED_BASELINES:
        if name in ("sknn", "vsknn"):
            assert candidates is not None
            votes = session_knn_scores(
                fitted.sessions,
                candidates,
                name,
                params["k"],
                params["sample_size"],
                fitted.config.vsknn_idf_weight,
            )
        elif name == "item_knn":
            votes = item_knn_scores(
                fitted.item_similarity, last_items, params["k"], counts.item_counts
            )
        else:
            votes = revisit_scores(
                fitted.timeline_items,
                targets.timeline_end[rows],
                targets.history_start[rows],
                params["window"],
                counts.n_items,
            )
        # Voted items above all others, in vote order; the rest by popularity, in [0, 0.5).
        top = np.maximum(votes.max(axis=1, keepdims=True), 1e-300)
        item_pop = 0.5 * counts.item_counts / max(counts.item_counts.max(), 1.0)
        items: np.ndarray | None = np.where(votes > 0, 1.0 + votes / top, item_pop)
        cats = None
    else:
        items, cats = baseline_scores(counts, name, last_items, targets.last_categories[rows])
    if items is not None:
        # The current item is never the target (repeats are collapsed): rank it last.
        items[np.arange(len(last_items)), last_items] = -np.inf
    return items, cats


def _rank(
    fitted: _Fitted,
    runs: Sequence[tuple[str, dict[str, int]]],
    targets: Targets,
    chunk: int,
) -> list[dict[str, np.ndarray]]:
    """Item and category ranks of every ``(baseline, params)`` run over all targets."""
    out: list[dict[str, list[np.ndarray]]] = [{"item": [], "category": []} for _ in runs]
    needs_knn = any(name in ("sknn", "vsknn") for name, _ in runs)
    for lo in range(0, len(targets), chunk):
        rows = slice(lo, min(lo + chunk, len(targets)))
        candidates = knn_candidates(fitted.sessions, targets.prefixes(rows)) if needs_knn else None
        for run, (name, params) in zip(out, runs, strict=True):
            items, cats = _scores(fitted, name, params, targets, rows, candidates)
            if items is not None:
                run["item"].append(target_ranks(items, targets.items[rows]))
            if cats is not None:
                run["category"].append(target_ranks(cats, targets.categories[rows]))
        _return_freed_memory()
    return [{kind: _concat(parts) for kind, parts in run.items()} for run in out]


def _tune(fitted: _Fitted, targets: Targets, chunk: int) -> dict[str, dict[str, Any]]:
    """Choose each tuned baseline's neighbourhood size on ``targets`` (the valid split)."""
    config = fitted.config
    runs = [(name, params) for name in TUNED_BASELINES for params in config.grid(name)]
    if len(targets) == 0:
        return {
            name: {**config.grid(name)[0], "chosen_by": "default: no valid targets"}
            for name in TUNED_BASELINES
        }
    ranks = _rank(fitted, runs, targets, chunk)
    chosen: dict[str, dict[str, Any]] = {}
    for name in TUNED_BASELINES:
        tried, best = _choose_on_valid(
            (params, r["item"])
            for (run_name, params), r in zip(runs, ranks, strict=True)
            if run_name == name
        )
        chosen[name] = {
            **{k: best[k] for k in TUNED_BASELINES[name]},
            "valid_ndcg@10": best["valid_ndcg@10"],
            "valid_targets": len(targets),
            "chosen_by": "valid ndcg@10",
            "grid": tried,
        }
    return chosen


def protocol(
    split: str,
    max_len: int,
    n_targets: int,
    n_sessions: int,
    user_history: bool = True,
    encoder_context: str = "session",
) -> dict[str, Any]:
    """The evaluation protocol as a JSON-friendly mapping, with a one-paragraph description.

    Args:
        split: The evaluated split.
        max_len: Prefix length (steps) of the encoder and the session baselines.
        n_targets: Number of targets.
        n_sessions: Number of sessions of the split.
        user_history: Whether ``revisit`` saw the user's earlier sessions.
        encoder_context: What the encoder saw: ``session`` (the current session's prefix)
            or ``user`` (the user's history up to the target).
    """
    revisit_context = "user" if user_history else "session"
    context = {name: "session" for name in BASELINES}
    context["revisit"] = revisit_context
    context["encoder"] = encoder_context
    seers = " and ".join(n for n in ("revisit", "the encoder") if context[n.split()[-1]] == "user")
    history = (
        f"{seers} also see{'s' if ' and ' not in seers else ''} the user's earlier sessions "
        "(any split, all before the target)"
        if seers
        else "no method sees the user's earlier sessions"
    )
    return {
        "split": split,
        "targets": n_targets,
        "sessions": n_sessions,
        "max_len": max_len,
        "collapse_repeats": True,
        "ranking": "full",
        "baselines_fitted_on": "train",
        "baselines_tuned_on": "valid",
        "current_item": "ranked last by every baseline",
        "user_history": user_history,
        "context": context,
        "description": (
            f"{split} split; consecutive events on one item collapsed into one step; every "
            f"step t>=1 of every session ({n_targets} targets, {n_sessions} sessions) predicted "
            f"from its prefix (last {max_len} steps); full ranking over all items and all "
            "categories, no sampled negatives, ties count half; HR@10, NDCG@10, MRR for the "
            "next item, accuracy@1/@5 for the next category; baselines fitted on train, "
            f"neighbourhood sizes chosen on valid; {history}."
        ),
    }


@functools.cache
def _libc_malloc_trim() -> Any:
    """The C library's ``malloc_trim`` on glibc, else None (looked up on first use)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols include its C library: no library search needed.
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None


def _return_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc ``malloc_trim(0)``; else nothing).

    The baselines allocate and free a (B, n_items) score block per batch and run, tens of MB
    each, thousands of times. glibc raises its mmap threshold after such frees (up to 32 MB),
    so later blocks come from the heap, which fragments and does not shrink: ``rlrec encoder
    eval`` on the 17,384-item synthetic log grew to 11.6 GB resident for baselines that need
    about 0.6 GB (24 GB with the full valid split), and a full-size benchmark run was
    OOM-killed. Trimming after every batch keeps the freed pages out of the resident set and,
    unlike a fixed mmap threshold (``mallopt``), changes nothing for the rest of the process:
    that one made every later large allocation an mmap, and the quickstart's PPO training
    after it took 41 s of system time instead of 3.
    """
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


def evaluate_next_step(
    model: SequenceEncoder | None,
    dataset: PreparedDataset,
    split: str = "test",
    max_len: int | None = None,
    batch_size: int = 256,
    config: BaselineConfig | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate an encoder and the baselines on next-step prediction (see module docstring).

    Args:
        model: The encoder, or None to evaluate the baselines only.
        dataset: The dataset the encoder was trained on.
        split: Split to evaluate (``test``, or ``valid``).
        max_len: History length; defaults to the model's (50 without a model).
        batch_size: Windows per forward pass.
        config: The tuned baselines' grids and settings (defaults: :class:`BaselineConfig`).
        n_resamples: Bootstrap resamples of the paired comparison.
        seed: Seed of that bootstrap.

    Returns:
        ``{"protocol": {...}, "encoder": {metric: value}, "encoder_knn": {metric: value},
        "encoder_knn_params": {"knn", "k", "sample_size", "weight", "valid_ndcg@10",
        "grid": [...]}, "baselines": {name: {metric: value}}, "baseline_params": {name:
        {size: value, "valid_ndcg@10": ..., "grid": [...]}}, "paired": {"encoder" |
        "encoder_knn": {...}}}``. ``encoder_knn`` is the encoder mixed with the better
        session-kNN on valid (weight chosen on valid); ``paired`` holds each model minus
        every baseline (:func:`~rlrec.evaluation.paired.paired_comparison`). The encoder's
        entries are absent without a model; each baseline holds the metrics it predicts.
    """
    require_items(dataset, "encoder eval")
    config = config or BaselineConfig()
    if max_len is None:
        max_len = model.config.max_len if model is not None else 50
    timelines = user_timelines(dataset)
    fitted = _fit_all(dataset, config, timelines)
    sessions = dataset.sessions(split)
    steps = collapse_repeats(sessions)
    windows = prefix_windows(steps, max_len)
    # Baselines materialise (B, n_items) score rows: keep a batch of targets to ~4M floats.
    target_rows = max(16, 4_000_000 // max(dataset.n_items, 1))
    # Re-visit also materialises (B, window) and the kNN candidates grow with B: cap B.
    baseline_rows = min(target_rows, 2048)

    def targets_of(name: str, part_steps: Steps) -> Targets:
        return next_step_targets(
            part_steps,
            max_len,
            timelines,
            split_session_ids(dataset, name),
            config.user_history,
        )

    all_valid = targets_of("valid", collapse_repeats(dataset.sessions("valid")))
    tune_index = np.arange(len(all_valid))
    if len(all_valid) > config.max_tune_targets:
        rng = np.random.default_rng(config.tune_seed)
        tune_index = np.sort(rng.choice(len(all_valid), config.max_tune_targets, replace=False))
    valid = all_valid.subset(tune_index)
    params = _tune(fitted, valid, baseline_rows)
    targets = targets_of(split, steps)
    runs = [
        (name, {k: params[name][k] for k in TUNED_BASELINES.get(name, ())}) for name in BASELINES
    ]
    ranks: dict[str, dict[str, np.ndarray]] = dict(
        zip(BASELINES, _rank(fitted, runs, targets, baseline_rows), strict=True)
    )
    encoder_context = "session"
    if model is not None:
        # The encoder reads the user's history where it was trained to and the protocol
        # allows (not with --session-only), the session's prefix otherwise; same targets.
        user_context = config.user_history and model.config.sessions
        encoder_context = "user" if user_context else "session"

    def metrics(name: str, r: dict[str, np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        if name != "last_category":  # every other model ranks items
            out.update(item_ranking_metrics(r["item"]))
        if name in CATEGORY_PREDICTORS:
            out.update(category_accuracy(r["category"]))
        return out

    report: dict[str, Any] = {
        "protocol": protocol(
            split,
            max_len,
            windows.n_targets,
            steps.n_sessions,
            config.user_history,
            encoder_context=encoder_context,
        ),
    }
    report["baselines"] = {name: metrics(name, ranks[name]) for name in BASELINES}
    report["baseline_params"] = params
    if model is not None:
        context = (max_len, user_context, batch_size, target_rows)
        knn = max(  # the session-kNN variant that did best on valid (SKNN without targets)
            ("sknn", "vsknn"), key=lambda n: _finite_or(params[n].get("valid_ndcg@10"))
        )
        knn_run = (knn, {k: params[knn][k] for k in TUNED_BASELINES[knn]})
        weights = config.knn_mixture_weights
        tune = _encoder_split_ranks(
            model, dataset, "valid", all_valid, fitted, knn_run, weights, context, tune_index
        )
        # 0 (the encoder alone) comes first: it wins ties, and every weight ties (NaN)
        # without valid targets.
        tried, best = _choose_on_valid(
            ({"weight": w}, r) for w, r in zip(weights, tune.mixed.T, strict=True)
        )
        # One pass over the evaluated split: the encoder's own ranks and the mixture's.
        test = _encoder_split_ranks(
            model, dataset, split, targets, fitted, knn_run, [best["weight"]], context
        )
        encoder = {"item": test.item, "category": test.category}
        mixed = {"item": test.mixed[:, 0], "category": test.category}  # re-ranks items only
        report["encoder"] = metrics("encoder", encoder)
        report["encoder_knn"] = metrics("encoder", mixed)
        report["encoder_knn_params"] = {
            "knn": knn,
            **knn_run[1],
            "weight": best["weight"],
            "valid_ndcg@10": best["valid_ndcg@10"],
            "valid_targets": len(tune_index),
            "chosen_by": "valid ndcg@10",
            "grid": tried,
        }
        # Both sides rank the same targets in the same order (session order), so the
        # comparison pairs them; one user's targets share a history: resample users (a log
        # without users gives every session its own).
        values = {
            name: _target_values(name, ranks[name], dataset.has_categories) for name in BASELINES
        }
        report["paired"] = {
            model_name: paired_comparison(
                _target_values("encoder", model_ranks, dataset.has_categories),
                values,
                sessions.user[targets.session],
                n_resamples=n_resamples,
                seed=seed,
            )
            for model_name, model_ranks in (("encoder", encoder), ("encoder_knn", mixed))
        }
    return report


def _choose_on_valid(
    candidates: Iterable[tuple[dict[str, Any], np.ndarray]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each setting with its valid NDCG@10 and MRR, and the best of them.

    Args:
        candidates: ``(setting, ranks)`` in order of preference; ``ranks`` are the
            setting's (N,) valid next-item ranks.

    Returns:
        ``(tried, best)``: ``tried`` is every setting with ``valid_ndcg@10`` and
        ``valid_mrr``; ``best`` has the highest NDCG@10, then MRR; ``max()`` keeps the first
        of equals, so the first setting is also the choice when no metric is finite (no
        valid targets).
    """
    tried = []
    for params, r in candidates:
        m = item_ranking_metrics(r)
        tried.append({**params, "valid_ndcg@10": m["ndcg@10"], "valid_mrr": m["mrr"]})
    best = max(tried, key=lambda t: (_finite_or(t["valid_ndcg@10"]), _finite_or(t["valid_mrr"])))
    return tried, best


def _finite_or(value: float | None, default: float = -math.inf) -> float:
    """``value`` where it is a finite number, else ``default`` (for choosing by a metric)."""
    return float(value) if value is not None and math.isfinite(value) else default


def _target_values(
    name: str, ranks: dict[str, np.ndarray], categories: bool
) -> dict[str, np.ndarray]:
    """Per-target metric values of what one model predicts (categories: the log has them)."""
    out: dict[str, np.ndarray] = {}
    if name != "last_category":
        out.update(item_target_values(ranks["item"]))
    if categories and name in CATEGORY_PREDICTORS:
        out.update(category_target_values(ranks["category"]))
    return out


@torch.no_grad()
def encoder_ranks(
    model: SequenceEncoder,
    dataset: PreparedDataset,
    split: str,
    max_len: int,
    user_history: bool,
    batch_size: int = 256,
    target_rows: int = 4096,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Full-catalog ranks of the encoder's next-item and next-category targets on ``split``.

    The hook between the protocol and what the encoder reads: the targets are the session
    protocol's, and with ``user_history`` each target's window is its user's history up to
    it, earlier sessions and splits included
    (:func:`~rlrec.models.sequences.encoder_windows`); else the session's prefix.

    Args:
        model: The encoder.
        dataset: Its dataset.
        split: Split to rank.
        max_len: History length in steps.
        user_history: Read user histories (needs ``EncoderConfig.sessions`` to mean much).
        batch_size: Windows per forward pass.
        target_rows: Targets scored at once (bounds the (rows, n_items) score matrix).

    Returns:
        ``(item_ranks, category_ranks)``: lists of (N_i,) rank arrays, one per slice.
    """
    item_ranks: list[np.ndarray] = []
    cat_ranks: list[np.ndarray] = []
    for part in _encoder_log_probs(
        model, dataset, split, max_len, user_history, batch_size, target_rows
    ):
        item_ranks.append(target_ranks(part.items(), part.target_items))
        cat_ranks.append(target_ranks(part.categories(), part.target_categories))
    return item_ranks, cat_ranks


@dataclass(frozen=True)
class _EncoderPart:
    """The encoder's outputs for a run of consecutive targets (protocol order)."""

    start: int  # index of the first target among the split's
    hidden: torch.Tensor  # (n, d) query states
    pointer: Pointer | None  # their copy terms
    model: SequenceEncoder
    target_items: torch.Tensor  # (n,) dataset item index
    target_categories: torch.Tensor  # (n,) dataset category index

    def items(self) -> torch.Tensor:
        """(n, n_items) next-item log-probabilities (the copy/generate mixture)."""
        return self.model.next_item_log_probs(self.hidden, self.pointer)

    def categories(self) -> torch.Tensor:
        """(n, n_categories) next-category log-probabilities."""
        return self.model.next_category_log_probs(self.hidden, self.pointer)


def _encoder_log_probs(
    model: SequenceEncoder,
    dataset: PreparedDataset,
    split: str,
    max_len: int,
    user_history: bool,
    batch_size: int,
    target_rows: int,
) -> Iterator[_EncoderPart]:
    """The encoder's states for every target of ``split``, in the protocol's order.

    A generator: its consumer (:func:`encoder_ranks`, :func:`_encoder_split_ranks`) holds
    ``torch.no_grad`` over the forward passes and the heads alike.
    """
    model.eval()
    device = next(model.parameters()).device
    windows = encoder_windows(dataset, split, max_len, user_history)
    tokens = windows.session_tokens()
    done = 0
    for sl, tg in _batches(windows, batch_size):
        if len(tg.items) == 0:
            continue
        items = torch.as_tensor(windows.items[sl], device=device)
        cats = torch.as_tensor(windows.categories[sl], device=device)
        sessions = torch.as_tensor(tokens[sl], device=device)
        full = model(items, cats, causal=True, sessions=sessions)  # (B, L, d)
        at = tuple(torch.as_tensor(a, device=device) for a in (tg.rows, tg.cols))
        hidden = full[at]  # (N, d)
        pointer = model.pointer(full, items, cats, sessions)
        pointer = pointer[at] if pointer is not None else None  # (N,)
        for lo in range(0, len(tg.items), target_rows):
            part = slice(lo, lo + target_rows)
            n = len(tg.items[part])
            yield _EncoderPart(
                start=done,
                hidden=hidden[part],
                pointer=pointer[part] if pointer is not None else None,
                model=model,
                target_items=torch.as_tensor(tg.items[part], device=device),
                target_categories=torch.as_tensor(tg.categories[part], device=device),
            )
            done += n


@dataclass(frozen=True)
class _SplitRanks:
    """The encoder's ranks on (some of) a split's targets, from one pass over its windows.

    Attributes:
        item: (N,) next-item ranks of the encoder alone.
        category: (N,) next-category ranks.
        mixed: (N, W) next-item ranks of the kNN mixture at each weight.
    """

    item: np.ndarray
    category: np.ndarray
    mixed: np.ndarray


@torch.no_grad()
def _encoder_split_ranks(
    model: SequenceEncoder,
    dataset: PreparedDataset,
    split: str,
    targets: Targets,
    fitted: _Fitted,
    knn: tuple[str, dict[str, int]],
    weights: Sequence[float],
    context: tuple[int, bool, int, int],
    only: np.ndarray | None = None,
) -> _SplitRanks:
    """The encoder's item and category ranks, and those of its mixture with a session-kNN.

    The kNN's votes for a target (its current item's set to 0: repeats are collapsed, so
    the current item is never the target) become a distribution by their share; a target
    no neighbour votes for keeps the encoder's order at every weight. The encoder's own
    ranks come from the same forward pass (:func:`encoder_ranks` computes the same).

    Args:
        model: The encoder.
        dataset: Its dataset.
        split: Split to rank; ``targets`` are its protocol targets, in order.
        targets: The split's targets (the kNN's prefixes).
        fitted: The fitted baselines (the training sessions' index).
        knn: ``("sknn" | "vsknn", {"k", "sample_size"})``.
        weights: (W,) mixture weights ``w`` of ``(1 - w) p_encoder + w p_knn``.
        context: ``(max_len, user_history, batch_size, target_rows)`` of the encoder.
        only: Sorted indices of the targets to rank (the valid targets the weight is tuned
            on); None: all. The encoder still reads every window, the kNN only these.

    Returns:
        The ranks of those targets (``len(only)`` or N rows).
    """
    max_len, user_history, batch_size, target_rows = context
    name, params = knn
    wanted = np.arange(len(targets)) if only is None else np.asarray(only, dtype=np.int64)
    item = np.empty(len(wanted))
    category = np.empty(len(wanted))
    mixed = np.empty((len(wanted), len(weights)))
    # The kNN candidates grow with the rows scored at once: the baselines' own cap.
    for part in _encoder_log_probs(
        model, dataset, split, max_len, user_history, batch_size, min(target_rows, 2048)
    ):
        lo, hi = np.searchsorted(wanted, [part.start, part.start + len(part.target_items)])
        if lo == hi:
            continue
        subset = targets.subset(wanted[lo:hi])
        local = torch.as_tensor(wanted[lo:hi] - part.start, device=part.target_items.device)
        log_probs = part.items()[local]  # (n, n_items)
        target_items = part.target_items[local]
        item[lo:hi] = target_ranks(log_probs, target_items)
        category[lo:hi] = target_ranks(part.categories()[local], part.target_categories[local])
        votes = session_knn_scores(
            fitted.sessions,
            knn_candidates(fitted.sessions, subset.prefixes(slice(None))),
            name,
            params["k"],
            params["sample_size"],
            fitted.config.vsknn_idf_weight,
        )  # (n, n_items)
        votes[np.arange(votes.shape[0]), subset.last_items] = 0.0
        total = votes.sum(axis=1, keepdims=True)
        p_knn = torch.as_tensor(votes / np.where(total > 0, total, 1.0))  # (n, n_items)
        p_enc = log_probs.double().exp().cpu()  # (n, n_items)
        for j, weight in enumerate(weights):
            mix = torch.log((1.0 - weight) * p_enc + weight * p_knn)  # (n, n_items)
            mixed[lo:hi, j] = target_ranks(mix, target_items.cpu())
        _return_freed_memory()
    return _SplitRanks(item=item, category=category, mixed=mixed)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_next_step`'s report, protocol first."""
    columns = (*ITEM_METRICS, *CATEGORY_METRICS)
    rows: list[tuple[str, dict[str, float]]] = [
        (name, report[name]) for name in ("encoder", "encoder_knn") if name in report
    ]
    rows += [(f"{name} (baseline)", m) for name, m in report["baselines"].items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"protocol: {report['protocol']['description']}", ""]
    lines.append(f"{'model':<{width}}  " + "  ".join(f"{c:>14}" for c in columns))
    for name, m in rows:
        cells = [f"{m[c]:>14.4f}" if c in m else f"{'-':>14}" for c in columns]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    chosen = [
        f"{name} " + " ".join(f"{k}={p[k]}" for k in TUNED_BASELINES.get(name, ()) if k in p)
        for name, p in report.get("baseline_params", {}).items()
    ]
    mix = report.get("encoder_knn_params")
    if mix:
        chosen.append(f"encoder_knn {mix['knn']} weight={mix['weight']:g}")
    if chosen:
        lines += ["", "chosen on valid: " + "; ".join(chosen)]
    for name, paired in report.get("paired", {}).items():
        if paired.get("best"):
            lines += ["", *paired_lines(paired, name)]
    return "\n".join(lines)
