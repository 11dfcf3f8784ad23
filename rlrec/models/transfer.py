"""Transfer: adapt one pretrained encoder to a downstream task with a task head.

The product's step 4 (``rlrec finetune``). The encoder reads each user's history (the windows
of :func:`rlrec.models.sequences.user_steps`); a **query** is the state after one step of a
session of the split, and a task gives some queries a label:

* ``next_item``: the next step's item (a step ``t >= 1`` of the same session), scored by the
  encoder's own next-item head (copy mixture included); metric NDCG@10 (full ranking).
* ``next_category``: the next step's category, by the encoder's category head; accuracy@1.
* ``next_new_category`` (cross-sell): the category of the user's next step in a category they
  have never engaged with before (in their whole history up to the query), wherever it comes
  later in the split; ranked among the categories the user has not seen yet (seen ones are
  masked), by the tied category head plus a new per-category bias; accuracy@1.
* ``return``: whether the user starts another session within ``horizon_days`` of the end of
  the current session (queries: each session's last step; a session whose horizon runs past
  the end of the log and that has no later session is censored, not labelled); a new linear
  head on the state, binary cross-entropy; metric ROC AUC (:func:`roc_auc`). Its scores become
  covariates of the churn model: :func:`encoder_return_scores`.

The encoder and the head are trained together (AdamW, early stopping on the valid split's
metric, best epoch kept); ``init="pretrained"`` starts from the checkpoint's weights,
``init="scratch"`` from a fresh encoder of the same shape and seed. :func:`transfer_comparison`
runs both at several label fractions (a seeded random subset of the train split's labels) and
reports the gain of pretraining on the test split.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rlrec.config import to_mapping
from rlrec.data.dataset import PreparedDataset
from rlrec.data.schema import UNKNOWN_CATEGORY
from rlrec.errors import UserError
from rlrec.fsutil import atomic_directory, write_json_atomic
from rlrec.models.encoder import SequenceEncoder
from rlrec.models.metrics import item_ranking_metrics, target_ranks
from rlrec.models.sequences import (
    IGNORE,
    SESSION_CONTINUES,
    SESSION_STARTS,
    UserSteps,
    encoder_windows,
    user_steps,
)

__all__ = [
    "FINETUNE_FILE",
    "HEAD_FILE",
    "TASKS",
    "FinetuneConfig",
    "FinetuneResult",
    "TaskHead",
    "encoder_return_scores",
    "finetune",
    "finetune_checkpoint",
    "roc_auc",
    "task_labels",
    "transfer_comparison",
    "transfer_figures",
]

TASKS: tuple[str, ...] = ("next_item", "next_category", "next_new_category", "return")
FINETUNE_FILE = "finetune.json"
HEAD_FILE = "head.safetensors"
_METRIC = {
    "next_item": "ndcg@10",
    "next_category": "acc@1",
    "next_new_category": "acc@1",
    "return": "auc",
}
_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune`.

    Attributes:
        task: One of :data:`TASKS`.
        labels_fraction: Share of the train split's labelled queries used, in (0, 1] (a
            seeded random subset; valid and test keep all theirs).
        horizon_days: ``return``: a return is a new session within this many days.
        init: ``pretrained`` (the checkpoint's weights) or ``scratch`` (fresh weights).
        epochs: Most training epochs.
        patience: Epochs without a better valid metric before stopping.
        batch_size: Windows per step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay of the linear layers' matrices.
        seed: Seed of the label subset, fresh weights, dropout and batch order.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    task: str = "next_item"
    labels_fraction: float = 1.0
    horizon_days: float = 7.0
    init: Literal["pretrained", "scratch"] = "pretrained"
    epochs: int = 40
    patience: int = 4
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0.0 < self.labels_fraction <= 1.0:  # NaN fails too
            raise ValueError(f"labels_fraction must be in (0, 1], got {self.labels_fraction}")
        if not (math.isfinite(self.horizon_days) and self.horizon_days > 0):
            raise ValueError(f"horizon_days must be > 0, got {self.horizon_days}")
        if self.init not in ("pretrained", "scratch"):
            raise ValueError(f"init must be pretrained or scratch, got {self.init!r}")
        if min(self.epochs, self.patience, self.batch_size) < 1:
            raise ValueError("epochs, patience and batch_size must be >= 1")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise ValueError("need learning_rate > 0 and weight_decay >= 0")


class TaskHead(nn.Module):
    """The task's new parameters on top of the encoder.

    ``next_new_category``: a per-category bias added to the tied category head (the new
    categories a user reaches are not the ones they stay in); ``return``: a linear layer
    from the state to the logit of a return. ``next_item`` and ``next_category`` use the
    encoder's own heads and add nothing.
    """

    def __init__(self, task: str, d_model: int, n_categories: int) -> None:
        super().__init__()
        self.task = task
        self.category_bias = (
            nn.Parameter(torch.zeros(n_categories)) if task == "next_new_category" else None
        )
        self.linear = nn.Linear(d_model, 1) if task == "return" else None


@dataclass
class _Split:
    """A split's query windows: tokens, (W, L) labels and stream positions of the queries."""

    items: np.ndarray
    categories: np.ndarray
    sessions: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    streams: UserSteps

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def n_labels(self) -> int:
        return int((self.labels != IGNORE).sum())


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: The adapted encoder (eval mode).
        head: Its task head.
        config: The settings used.
        metrics: Test-split metrics of the best valid epoch (``n`` = labelled queries).
        valid: The best epoch's valid metrics.
        history: One record per epoch.
        train_labels: Labelled train queries used.
    """

    model: SequenceEncoder
    head: TaskHead
    config: FinetuneConfig
    metrics: dict[str, float]
    valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_labels: int = 0


def check_task(dataset: PreparedDataset, task: str) -> None:
    """Refuse a task the data cannot support, in one line.

    Raises:
        UserError: ``next_category``/``next_new_category`` on a log without categories (one
            category, or only the unknown one); ``return`` on a log where no user has two
            sessions (no user ids, or single-session users).
    """
    if task not in TASKS:
        raise UserError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    if task in ("next_category", "next_new_category"):
        raw = [str(c) for c in dataset.categories["raw_id"].tolist()]
        known = [c for c in raw if c != UNKNOWN_CATEGORY]
        if len(known) < 2:
            raise UserError(
                f"{dataset.path}: task {task} needs item categories, and this dataset has "
                f"{len(known)} known categor{'y' if len(known) == 1 else 'ies'}; prepare it "
                "with categories (or --derive-categories) or pick next_item/return"
            )
    if task == "return":
        sessions = dataset.sessions()
        per_user = np.bincount(sessions.user, minlength=dataset.n_users)
        if not (per_user >= 2).any():
            raise UserError(
                f"{dataset.path}: task return needs users with two or more sessions, and no "
                "user here has more than one (no user ids in the log?); pick another task"
            )


def task_labels(
    dataset: PreparedDataset, split: str, streams: UserSteps, task: str, horizon_days: float
) -> np.ndarray:
    """(N,) label of the query after each step of ``streams`` (:data:`IGNORE`: none).

    Only steps of ``split``'s sessions are queries (earlier splits are context). See the
    module docstring for each task's label.
    """
    n = len(streams.items)
    labels = np.full(n, IGNORE, dtype=np.int64)
    in_split = streams.session >= 0
    if task in ("next_item", "next_category"):
        nxt = np.flatnonzero(streams.target)  # targets t: query t - 1 (same session)
        values = streams.items if task == "next_item" else streams.categories
        labels[nxt - 1] = values[nxt]
        return labels
    if task == "next_new_category":
        for u in range(streams.n_sessions):
            lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
            cats = streams.categories[lo:hi]
            _, first = np.unique(cats, return_index=True)
            is_first = np.zeros(hi - lo, dtype=bool)
            is_first[first] = True
            upcoming = IGNORE
            for j in range(hi - lo - 1, -1, -1):  # the next first occurrence after j
                if in_split[lo + j]:
                    labels[lo + j] = upcoming
                if is_first[j]:
                    upcoming = int(cats[j])
        return labels
    # return: each session's last step; the label from the user's whole timeline.
    all_sessions = dataset.sessions()
    start = all_sessions.timestamps[all_sessions.offsets[:-1]]
    order = np.lexsort((start, all_sessions.user))
    user_sorted, start_sorted = all_sessions.user[order], start[order]
    log_end = int(all_sessions.timestamps.max()) if len(all_sessions.timestamps) else 0
    horizon = horizon_days * 86_400_000.0
    split_sessions = dataset.sessions(split)
    s_user = split_sessions.user
    s_end = split_sessions.timestamps[split_sessions.offsets[1:] - 1]
    # The user's first session starting after this one ends.
    key = s_user.astype(np.int64) * (1 << 42) + s_end
    keys = user_sorted.astype(np.int64) * (1 << 42) + start_sorted
    idx = np.searchsorted(keys, key, side="right")
    has_next = (idx < len(keys)) & (user_sorted[np.minimum(idx, len(keys) - 1)] == s_user)
    gap = np.where(has_next, start_sorted[np.minimum(idx, len(keys) - 1)] - s_end, np.inf)
    session_label = np.where(gap <= horizon, 1, np.where(s_end + horizon <= log_end, 0, IGNORE))
    last = (
        np.r_[streams.starts[1:], True] | np.r_[streams.session[1:] != streams.session[:-1], True]
    )
    last &= in_split
    labels[last] = session_label[streams.session[last]]
    return labels


def _query_windows(streams: UserSteps, labels: np.ndarray, max_len: int, training: bool) -> _Split:
    """Windows whose labelled positions are the queries (see :func:`history_windows`)."""
    rows: list[tuple[int, int, int]] = []  # (start, inputs, first labelled input)
    for u in range(streams.n_sessions):
        lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
        queries = np.flatnonzero(labels[lo:hi] != IGNORE) + lo
        if len(queries) == 0:
            continue
        if training:
            for j in range(lo, hi, max_len):
                m = min(max_len, hi - j)
                if (labels[j : j + m] != IGNORE).any():
                    rows.append((j, m, 0))
            continue
        head_end = min(hi, lo + max_len)
        if queries[0] < head_end:
            rows.append((lo, head_end - lo, 0))
        for q in queries[queries >= head_end]:
            rows.append((int(q) - max_len + 1, max_len, max_len - 1))
    w = len(rows)
    items = np.zeros((w, max_len), dtype=np.int64)
    cats = np.zeros((w, max_len), dtype=np.int64)
    sess = np.zeros((w, max_len), dtype=np.int64)
    lab = np.full((w, max_len), IGNORE, dtype=np.int64)
    pos = np.full((w, max_len), -1, dtype=np.int64)
    for r, (start, m, skip) in enumerate(rows):
        pad = max_len - m
        items[r, pad:] = streams.items[start : start + m] + 1
        cats[r, pad:] = streams.categories[start : start + m] + 1
        starts = streams.starts[start : start + m].copy()
        starts[0] = True
        sess[r, pad:] = np.where(starts, SESSION_STARTS, SESSION_CONTINUES)
        lab[r, pad + skip :] = labels[start + skip : start + m]
        pos[r, pad:] = np.arange(start, start + m)
    return _Split(items, cats, sess, lab, pos, streams)


def _task_split(
    dataset: PreparedDataset,
    split: str,
    task: str,
    max_len: int,
    horizon_days: float,
    training: bool,
) -> _Split:
    streams = user_steps(dataset, split)
    labels = task_labels(dataset, split, streams, task, horizon_days)
    return _query_windows(streams, labels, max_len, training)


def _subsample(split: _Split, fraction: float, seed: int) -> _Split:
    """Keep a seeded random ``fraction`` of the labelled queries (at least one)."""
    if fraction >= 1.0:
        return split
    where = np.flatnonzero(split.labels.ravel() != IGNORE)
    keep = max(1, round(fraction * len(where)))
    chosen = np.random.default_rng(seed).choice(where, size=keep, replace=False)
    flat = np.full(split.labels.size, IGNORE, dtype=np.int64)
    flat[chosen] = split.labels.ravel()[chosen]
    labels = flat.reshape(split.labels.shape)  # (W, L)
    rows = (labels != IGNORE).any(axis=1)
    return _Split(
        split.items[rows],
        split.categories[rows],
        split.sessions[rows],
        labels[rows],
        split.positions[rows],
        split.streams,
    )


class _SeenCategories:
    """Which categories a user has engaged with up to each stream step (for masking).

    A category is seen at step ``p`` iff its first occurrence in the user's stream is at or
    before ``p``; the seen set is a prefix of the user's categories in order of first use.
    """

    def __init__(self, streams: UserSteps, n_categories: int) -> None:
        self.n_categories = n_categories
        self.user = np.repeat(np.arange(streams.n_sessions), streams.lengths)
        self.order: list[np.ndarray] = []
        self.count = np.zeros(len(streams.items), dtype=np.int64)
        for u in range(streams.n_sessions):
            lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
            cats = streams.categories[lo:hi]
            _, first = np.unique(cats, return_index=True)
            first.sort()
            self.order.append(cats[first])
            is_first = np.zeros(hi - lo, dtype=np.int64)
            is_first[first] = 1
            self.count[lo:hi] = np.cumsum(is_first)

    def mask(self, positions: np.ndarray) -> np.ndarray:
        """(N, C) bool, True where the category was seen by the query at each position."""
        out = np.zeros((len(positions), self.n_categories), dtype=bool)
        for row, p in enumerate(positions):
            out[row, self.order[self.user[p]][: self.count[p]]] = True
        return out


class _Runner:
    """Forward passes, loss and metrics of one task (shared by training and evaluation)."""

    def __init__(
        self, model: SequenceEncoder, head: TaskHead, task: str, device: torch.device
    ) -> None:
        self.model, self.head, self.task, self.device = model, head, task, device

    def _to(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def outputs(
        self, split: _Split, rows: np.ndarray, seen: _SeenCategories | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of the labelled queries of ``rows`` and their labels.

        Returns:
            ``(scores, labels)``: (N, n_items) or (N, C) log-probabilities / logits (masked
            where seen), or (N,) return logits; (N,) labels.
        """
        items = split.items[rows]
        width = max(1, int((items != 0).sum(axis=1).max()))
        cols = slice(items.shape[1] - width, None)
        it = self._to(items[:, cols])
        ct = self._to(split.categories[rows][:, cols])
        st = self._to(split.sessions[rows][:, cols])
        labels_np = split.labels[rows][:, cols]
        where_np = labels_np != IGNORE
        where = self._to(where_np)
        hidden = self.model(it, ct, sessions=st)  # (B, L, d)
        h = hidden[where]  # (N, d)
        labels = self._to(labels_np[where_np])
        if self.task == "return":
            assert self.head.linear is not None
            return self.head.linear(h).squeeze(-1), labels.float()
        if self.task == "next_new_category":
            assert self.head.category_bias is not None and seen is not None
            logits = self.model.category_logits(h) + self.head.category_bias  # (N, C)
            mask = self._to(seen.mask(split.positions[rows][:, cols][where_np]))
            return torch.log_softmax(logits.masked_fill(mask, -1e9), dim=-1), labels
        pointer = self.model.pointer(hidden, it, ct, st)
        pointer = pointer[where] if pointer is not None else None
        if self.task == "next_item":
            return self.model.next_item_log_probs(h, pointer), labels
        return self.model.next_category_log_probs(h, pointer), labels

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "return":
            return F.binary_cross_entropy_with_logits(scores, labels)
        return F.nll_loss(scores, labels)

    @torch.no_grad()
    def evaluate(self, split: _Split, seen: _SeenCategories | None) -> dict[str, float]:
        self.model.eval()
        parts: list[np.ndarray] = []
        truth: list[np.ndarray] = []
        for lo in range(0, len(split), 256):
            rows = np.arange(lo, min(lo + 256, len(split)))
            scores, labels = self.outputs(split, rows, seen)
            if self.task == "return":
                parts.append(torch.sigmoid(scores).cpu().numpy())
            else:
                parts.append(target_ranks(scores, labels))
            truth.append(labels.cpu().numpy())
        n = int(sum(len(t) for t in truth))
        if n == 0:
            return {"n": 0.0}
        values = np.concatenate(parts)
        if self.task == "return":
            y = np.concatenate(truth).astype(int)
            p = np.clip(values, 1e-7, 1 - 1e-7)
            return {
                "auc": roc_auc(y, values),
                "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
                "positive_rate": float(y.mean()),
                "n": float(n),
            }
        if self.task == "next_item":
            return {**item_ranking_metrics(values), "n": float(n)}
        return {
            "acc@1": float(np.mean(values < 1)),
            "acc@5": float(np.mean(values < 5)),
            "n": float(n),
        }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half); NaN with one class only.

    Written out rather than imported: scikit-learn is not a dependency of rlrec, and
    ``scipy.stats.rankdata`` costs the import of ``scipy.stats`` (seconds on a loaded machine)
    for the three lines of average ranks below. A test checks it against pair counting.
    """
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(
        np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True
    )
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each score
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def finetune(
    model: SequenceEncoder, dataset: PreparedDataset, config: FinetuneConfig
) -> FinetuneResult:
    """Adapt ``model`` (or a fresh encoder of its shape, ``init="scratch"``) to a task.

    Args:
        model: The pretrained encoder (left unchanged: a copy is trained).
        dataset: A dataset with the encoder's vocabulary.
        config: Settings.

    Returns:
        The adapted encoder and head with valid and test metrics.

    Raises:
        UserError: If the data cannot support the task or has no labelled train query.
    """
    from rlrec.models.pretrain import repeat_shares, resolve_device

    check_task(dataset, config.task)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if config.init == "pretrained":
        net = copy.deepcopy(model)
    else:
        net = SequenceEncoder(
            model.config, model.n_items, model.n_categories, model.item_category.cpu().numpy()
        )
        # The start pretraining gives a fresh encoder too (the copy gates at the data's
        # repeat shares): the transfer gain measures the pretrained weights, not that start.
        windows = encoder_windows(
            dataset, "train", model.config.max_len, model.config.sessions, training=True
        )
        net.init_copy_gates(*repeat_shares(windows))
    net = net.to(device)
    head = TaskHead(config.task, model.config.d_model, model.n_categories).to(device)
    max_len = model.config.max_len
    horizon = config.horizon_days
    train = _task_split(dataset, "train", config.task, max_len, horizon, training=True)
    train = _subsample(train, config.labels_fraction, config.seed)
    valid = _task_split(dataset, "valid", config.task, max_len, horizon, training=False)
    test = _task_split(dataset, "test", config.task, max_len, horizon, training=False)
    if train.n_labels == 0:
        raise UserError(
            f"{dataset.path}: task {config.task} has no labelled query in the train split "
            "(too few sessions or categories?); pick another task or a larger log"
        )
    seen = {
        name: _SeenCategories(part.streams, model.n_categories)
        if config.task == "next_new_category"
        else None
        for name, part in (("train", train), ("valid", valid), ("test", test))
    }
    runner = _Runner(net, head, config.task, device)
    params = list(net.parameters()) + list(head.parameters())
    decay = [p for n, p in net.named_parameters() if p.dim() == 2 and "embedding" not in n]
    decay_ids = {id(p) for p in decay}
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    metric = _METRIC[config.task]
    rng = np.random.default_rng(config.seed)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    history: list[dict[str, Any]] = []
    best_value, best_state, best_valid, waited = -math.inf, None, {}, 0
    try:
        for epoch in range(1, config.epochs + 1):
            net.train()
            head.train()
            order = rng.permutation(len(train))
            total, batches = 0.0, 0
            for lo in range(0, len(order), config.batch_size):
                scores, labels = runner.outputs(
                    train, order[lo : lo + config.batch_size], seen["train"]
                )
                if len(labels) == 0:
                    continue
                loss = runner.loss(scores, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                total, batches = total + float(loss.detach()), batches + 1
            head.eval()
            valid_metrics = runner.evaluate(valid, seen["valid"])
            record = {"epoch": epoch, "train_loss": total / max(batches, 1)}
            record.update({f"valid_{k}": v for k, v in valid_metrics.items()})
            history.append(record)
            value = valid_metrics.get(metric, float("nan"))
            if math.isnan(value) or value > best_value + 1e-9:
                best_value = value if not math.isnan(value) else best_value
                best_state = (copy.deepcopy(net.state_dict()), copy.deepcopy(head.state_dict()))
                best_valid, waited = valid_metrics, 0
            else:
                waited += 1
                if waited >= config.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state[0])
            head.load_state_dict(best_state[1])
        net.eval()
        head.eval()
        test_metrics = runner.evaluate(test, seen["test"])
    finally:
        torch.use_deterministic_algorithms(previous)
    return FinetuneResult(
        model=net,
        head=head,
        config=config,
        metrics=test_metrics,
        valid=best_valid,
        history=history,
        train_labels=train.n_labels,
    )


def transfer_comparison(
    model: SequenceEncoder,
    dataset: PreparedDataset,
    task: str,
    fractions: tuple[float, ...] = (0.1, 1.0),
    config: FinetuneConfig | None = None,
) -> dict[str, Any]:
    """Pretrained init against from-scratch at each label fraction, on the test split.

    Returns:
        ``{"task", "metric", "fractions": {f: {"pretrained": m, "scratch": m, "gain": d,
        "train_labels": n}}}`` with ``m`` the test metric and ``d`` pretrained minus scratch.
    """
    base = config or FinetuneConfig(task=task)
    metric = _METRIC[task]
    out: dict[str, Any] = {"task": task, "metric": metric, "fractions": {}}
    for fraction in fractions:
        row: dict[str, Any] = {}
        for init in ("pretrained", "scratch"):
            cfg = FinetuneConfig(
                **{**to_mapping(base), "task": task, "init": init, "labels_fraction": fraction}
            )
            result = finetune(model, dataset, cfg)
            row[init] = result.metrics.get(metric, float("nan"))
            row[f"{init}_epochs"] = len(result.history)
            row["train_labels"] = result.train_labels
        row["gain"] = row["pretrained"] - row["scratch"]
        out["fractions"][f"{fraction:g}"] = row
    return out


def transfer_figures(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Flat, unit-named benchmark keys of one task's :func:`transfer_comparison`.

    Args:
        row: :func:`transfer_comparison`'s result for one task.
        prefix: Key prefix (the log's name).

    Returns:
        ``{prefix}_transfer_{task}_metric`` and, per label fraction (in percent),
        ``{prefix}_transfer_{task}_{pretrained,scratch,gain,train_labels}_at_{pct}pct``.
    """
    task = row["task"]
    out: dict[str, Any] = {f"{prefix}_transfer_{task}_metric": row["metric"]}
    for fraction, cells in row["fractions"].items():
        pct = round(float(fraction) * 100)
        for key in ("pretrained", "scratch", "gain", "train_labels"):
            out[f"{prefix}_transfer_{task}_{key}_at_{pct}pct"] = cells[key]
    return out


def finetune_checkpoint(
    encoder_dir: str | os.PathLike[str],
    dataset: PreparedDataset,
    out: str | os.PathLike[str],
    config: FinetuneConfig,
    force: bool = False,
    compare: bool = False,
) -> dict[str, Any]:
    """``rlrec finetune``: load, adapt, and write the adapted encoder with its head to ``out``.

    ``out`` is an encoder checkpoint (loadable by :func:`~rlrec.models.checkpoint.load_encoder`)
    plus ``head.safetensors`` (the task head's tensors, none for next_item/next_category) and
    ``finetune.json`` (task, settings, source encoder, metrics, history and, with ``compare``,
    :func:`transfer_comparison`). Written atomically; an existing one replaced only with
    ``force``.

    Returns:
        The summary written to ``finetune.json``.
    """
    from safetensors.torch import save_file

    from rlrec.models.checkpoint import load_encoder, vocabulary_fingerprint, write_encoder_files
    from rlrec.models.pretrain import resolve_device

    check_task(dataset, config.task)
    model, _ = load_encoder(encoder_dir, dataset, device=resolve_device(config.device))
    with atomic_directory(out, "encoder", force) as tmp:
        result = finetune(model, dataset, config)
        summary: dict[str, Any] = {
            "out": str(out),
            "task": config.task,
            "metric": _METRIC[config.task],
            "encoder": str(encoder_dir),
            "dataset": str(dataset.path),
            "config": to_mapping(config),
            "test": result.metrics,
            "valid": result.valid,
            "train_labels": result.train_labels,
            "epochs": len(result.history),
            "history": result.history,
        }
        if compare:
            summary["transfer"] = transfer_comparison(model, dataset, config.task, config=config)
        write_encoder_files(
            tmp, result.model, vocabulary_fingerprint(dataset), {"finetune": summary}
        )
        head_state = {k: v.detach().cpu().contiguous() for k, v in result.head.state_dict().items()}
        if head_state:
            save_file(head_state, str(tmp / HEAD_FILE))
        write_json_atomic(tmp / FINETUNE_FILE, summary)
    return summary


def encoder_return_scores(
    encoder_dir: str | os.PathLike[str], dataset: PreparedDataset, device: str = "cpu"
) -> pd.DataFrame:
    """Per-session return probabilities of a ``return``-task encoder: churn covariates.

    Args:
        encoder_dir: Written by ``rlrec finetune ENC --task return``.
        dataset: A dataset with the encoder's vocabulary.
        device: Where to run.

    Returns:
        One row per session of every split: ``session`` (the dataset's session id),
        ``user``, ``split`` and ``return_score`` (P(a new session within the horizon), from
        the state at the session's last step with the user's history before it).

    Raises:
        UserError: If the directory is not a fine-tuned ``return`` encoder or the vocabulary
            differs.
    """
    import json

    from safetensors.torch import load_file

    from rlrec.models.checkpoint import load_encoder
    from rlrec.models.pretrain import resolve_device

    root = Path(encoder_dir)
    info_file = root / FINETUNE_FILE
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):
        raise UserError(
            f"{info_file}: missing or unreadable; fine-tune with 'rlrec finetune ENC --task return'"
        ) from None
    if not isinstance(info, dict) or info.get("task") != "return":
        raise UserError(
            f"{root}: fine-tuned for task {info.get('task') if isinstance(info, dict) else None!r},"
            " not return; run 'rlrec finetune ENC --task return'"
        )
    torch_device = resolve_device(device)
    model, _ = load_encoder(root, dataset, device=torch_device)
    head = TaskHead("return", model.config.d_model, model.n_categories)
    try:
        head.load_state_dict(load_file(str(root / HEAD_FILE), device="cpu"), strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"{root / HEAD_FILE}: unreadable return head ({exc}); fine-tune again"
        ) from None
    head = head.to(torch_device).eval()
    assert head.linear is not None
    frames = []
    for split in _SPLITS:
        sessions = dataset.sessions(split)
        if sessions.n_sessions == 0:
            continue
        streams = user_steps(dataset, split)
        last = (
            np.r_[streams.starts[1:], True]
            | np.r_[streams.session[1:] != streams.session[:-1], True]
        )
        last &= streams.session >= 0
        labels = np.where(last, streams.session, IGNORE)  # query = session index
        windows = _query_windows(streams, labels, model.config.max_len, training=False)
        runner = _Runner(model, head, "return", torch_device)
        scores = np.full(sessions.n_sessions, np.nan)
        with torch.no_grad():
            for lo in range(0, len(windows), 256):
                rows = np.arange(lo, min(lo + 256, len(windows)))
                logits, index = runner.outputs(windows, rows, None)
                scores[index.long().cpu().numpy()] = torch.sigmoid(logits).cpu().numpy()
        session_ids = dataset.split_events(split)["session"].to_numpy()[sessions.offsets[:-1]]
        frames.append(
            pd.DataFrame(
                {
                    "session": session_ids,
                    "user": sessions.user,
                    "split": split,
                    "return_score": scores,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
