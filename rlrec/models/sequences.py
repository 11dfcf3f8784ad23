"""Interaction sequences as the encoder reads them: steps, tokens and fixed-length windows.

The token contract, shared with the simulator's observations:

* A session is a sequence of **steps**; a step is a maximal run of consecutive events on the
  same item (see ``docs/architecture.md#the-user-model``). :func:`collapse_repeats` turns a
  split's events into steps, so a view followed by a cart of the same item is one token, as in
  the env, where one recommendation or organic move is one step. Training and evaluation both
  read steps.
* The token of dataset item ``i`` is ``i + 1`` and of dataset category ``c`` is ``c + 1``;
  ``0`` is padding. Windows are **left-padded**: the most recent step is the last column.
* A window holds at most ``max_len`` steps; longer histories keep their last ``max_len``.

:func:`training_windows` cuts sessions into non-overlapping chunks for teacher-forced
training; :func:`prefix_windows` builds windows in which every target's visible history is
exactly its own prefix truncated to the last ``max_len`` steps, the state the env would show.

**User histories** (:func:`user_steps`, :func:`history_windows`): where a log has user ids,
the encoder may read the user's earlier sessions too. A user's stream is all of their steps in
time order, sessions concatenated, each step marked with a **session token** (``2`` = it starts
a session, ``1`` = it continues one, ``0`` = padding); a target is still a step ``t >= 1`` of a
session in the evaluated split (the same targets as the session protocol), but its window is
the last ``max_len`` steps of the user's stream before it, across session and split boundaries
(earlier splits are earlier in time, so nothing from the future leaks in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrec.data.dataset import PreparedDataset, SessionArrays
from rlrec.data.ragged import Ragged

__all__ = [
    "IGNORE",
    "PAD",
    "SESSION_CONTINUES",
    "SESSION_STARTS",
    "Steps",
    "UserSteps",
    "Windows",
    "collapse_repeats",
    "encoder_windows",
    "history_windows",
    "mask_tokens",
    "prefix_windows",
    "session_tokens",
    "training_windows",
    "user_steps",
]

PAD = 0
"""Padding token (items and categories)."""

IGNORE = -1
"""Target value of positions that have no target (padding, or a context-only position)."""

SESSION_CONTINUES = 1
"""Session token of a step that continues the session of the step before it."""

SESSION_STARTS = 2
"""Session token of a step that starts a session (the first step of a window counts too)."""


@dataclass(frozen=True)
class Steps(Ragged):
    """Sessions of one split as steps (consecutive repeats of an item collapsed), CSR form.

    Session ``s`` spans ``offsets[s]:offsets[s + 1]``.

    Attributes:
        offsets: (S + 1,) int64 start offsets.
        items: (N,) int64 dataset item index of each step.
        categories: (N,) int64 dataset category index of each step.
    """

    items: np.ndarray
    categories: np.ndarray

    @property
    def n_targets(self) -> int:
        """Number of next-step targets: every step but each session's first."""
        return int(np.maximum(self.lengths - 1, 0).sum())


@dataclass(frozen=True)
class Windows:
    """Left-padded token windows with aligned next-step targets.

    Attributes:
        items: (W, L) int64 item tokens (index + 1, 0 = padding).
        categories: (W, L) int64 category tokens (index + 1, 0 = padding).
        target_items: (W, L) int64 dataset index of the next step's item, ``IGNORE`` where
            the position has no target.
        target_categories: (W, L) int64 the same for the next step's category.
        sessions: (W, L) int64 session tokens (:data:`SESSION_STARTS`, :data:`SESSION_CONTINUES`,
            0 = padding); None means every window is one session (:func:`session_tokens`).
    """

    items: np.ndarray
    categories: np.ndarray
    target_items: np.ndarray
    target_categories: np.ndarray
    sessions: np.ndarray | None = None

    def session_tokens(self) -> np.ndarray:
        """(W, L) session tokens, derived from the padding when :attr:`sessions` is None."""
        return self.sessions if self.sessions is not None else session_tokens(self.items)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def n_targets(self) -> int:
        """Number of positions with a target."""
        return int((self.target_items != IGNORE).sum())


def collapse_repeats(sessions: SessionArrays) -> Steps:
    """Collapse each maximal run of consecutive events on one item into one step.

    Runs never cross a session boundary.

    Args:
        sessions: Events of one split in CSR form.

    Returns:
        The sessions' steps.
    """
    items = sessions.items.astype(np.int64)
    n = len(items)
    if n == 0:
        return Steps(
            offsets=np.zeros(sessions.n_sessions + 1, dtype=np.int64),
            items=np.zeros(0, dtype=np.int64),
            categories=np.zeros(0, dtype=np.int64),
        )
    session_start = np.zeros(n, dtype=bool)
    starts = sessions.offsets[:-1]
    session_start[starts[starts < n]] = True
    keep = session_start.copy()
    keep[1:] |= items[1:] != items[:-1]
    kept_before = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    return Steps(
        offsets=kept_before[sessions.offsets],
        items=items[keep],
        categories=sessions.categories.astype(np.int64)[keep],
    )


@dataclass(frozen=True)
class UserSteps(Ragged):
    """Each user's steps in time order, sessions concatenated (CSR form, one row per user).

    User row ``u`` spans ``offsets[u]:offsets[u + 1]``.

    Attributes:
        offsets: (U + 1,) int64 start offsets.
        items: (N,) int64 dataset item index of each step.
        categories: (N,) int64 dataset category index of each step.
        starts: (N,) bool, True where a step starts a session.
        target: (N,) bool, True where a step is a target: a step ``t >= 1`` of a session of
            the split the streams were built for.
        session: (N,) int64 index of the step's session in that split's session order
            (``dataset.sessions(split)``), -1 for context from an earlier split.
        timestamps: (N,) int64 milliseconds of each step's first event.
    """

    items: np.ndarray
    categories: np.ndarray
    starts: np.ndarray
    target: np.ndarray
    session: np.ndarray
    timestamps: np.ndarray

    @property
    def n_targets(self) -> int:
        """Number of target steps."""
        return int(self.target.sum())


def user_steps(dataset: PreparedDataset, split: str, history: bool = True) -> UserSteps:
    """The users' streams for predicting ``split``: its sessions after the user's earlier steps.

    Args:
        dataset: The prepared dataset.
        split: ``train``, ``valid`` or ``test``; its sessions hold the targets.
        history: Prepend the user's steps of the earlier splits (``train`` before ``valid``
            before ``test``) as context. Without it a stream holds only ``split``'s sessions.

    Returns:
        One stream per user with a session in ``split`` (users in index order; a user's
        sessions by split, then start time).
    """
    order = ("train", "valid", "test")
    if split not in order:
        raise ValueError(f"split must be one of {', '.join(order)}, got {split!r}")
    splits = order[: order.index(split) + 1] if history else (split,)
    items, cats, times, block_rows = [], [], [], []
    n_steps = 0
    for rank, name in enumerate(splits):
        sessions = dataset.sessions(name)
        steps = collapse_repeats(sessions)
        items.append(steps.items)
        cats.append(steps.categories)
        times.append(sessions.timestamps[_run_starts(sessions)].astype(np.int64))
        for s in range(steps.n_sessions):
            lo, hi = int(steps.offsets[s]), int(steps.offsets[s + 1])
            if hi > lo:
                index = s if name == split else -1
                start = int(times[-1][lo])
                block_rows.append(
                    (int(sessions.user[s]), rank, start, lo + n_steps, hi + n_steps, index)
                )
        n_steps += len(steps.items)
    all_items = np.concatenate(items)
    all_cats = np.concatenate(cats)
    all_times = np.concatenate(times)
    blocks = np.array(block_rows, dtype=np.int64).reshape(-1, 6)
    # A user's sessions in time order: by split (splits are cut by time), then start time.
    blocks = blocks[np.lexsort((blocks[:, 2], blocks[:, 1], blocks[:, 0]))]
    has_target = np.zeros(dataset.n_users + 1, dtype=bool)
    has_target[blocks[blocks[:, 5] >= 0, 0]] = True
    blocks = blocks[has_target[blocks[:, 0]]]
    lengths = blocks[:, 4] - blocks[:, 3]
    take = (
        np.concatenate([np.arange(lo, hi) for lo, hi in blocks[:, 3:5]])
        if len(blocks)
        else (np.zeros(0, dtype=np.int64))
    )
    starts = np.zeros(len(take), dtype=bool)
    first = np.cumsum(lengths) - lengths
    starts[first] = True
    session = np.repeat(blocks[:, 5], lengths)
    user = blocks[:, 0]
    new_user = np.r_[True, user[1:] != user[:-1]] if len(user) else np.zeros(0, dtype=bool)
    offsets = np.append(first[new_user], len(take)).astype(np.int64)
    return UserSteps(
        offsets=offsets,
        items=all_items[take],
        categories=all_cats[take],
        starts=starts,
        target=~starts & (session >= 0),
        session=session,
        timestamps=all_times[take],
    )


def _run_starts(sessions: SessionArrays) -> np.ndarray:
    """(E,) bool: the events :func:`collapse_repeats` keeps (the first of each run)."""
    n = len(sessions.items)
    keep = np.zeros(n, dtype=bool)
    starts = sessions.offsets[:-1]
    keep[starts[starts < n]] = True
    keep[1:] |= sessions.items[1:] != sessions.items[:-1]
    return keep


def session_tokens(items: np.ndarray) -> np.ndarray:
    """(W, L) session tokens of left-padded windows that each hold one session.

    The first real step of a row starts its session, the rest continue it, padding is 0.
    """
    real = items != PAD
    first = real & ~np.concatenate([np.zeros((len(items), 1), bool), real[:, :-1]], axis=1)
    tokens = np.where(first, SESSION_STARTS, np.where(real, SESSION_CONTINUES, PAD))
    return tokens.astype(np.int64)


def history_windows(
    streams: UserSteps, max_len: int, every_target: bool = False, stride: int | None = None
) -> Windows:
    """Windows over user streams: each target sees the last ``max_len`` steps before it.

    Args:
        streams: :func:`user_steps` of the split.
        max_len: Window length.
        every_target: Teacher forcing for training: the first window of a stream holds its
            first ``max_len`` inputs with every target marked; each later window is the
            ``max_len`` steps ending ``stride`` steps further on, with only its last
            ``stride`` targets marked (the earlier ones are context). Every target is marked
            exactly once and sees at least ``max_len - stride`` steps of history once the
            stream is that long. False (evaluation): the first chunk of a stream covers its
            targets among the first ``max_len`` inputs at once, and each later target gets
            its own window of exactly the ``max_len`` steps before it.
        stride: Targets per later training window (None: ``max_len``, non-overlapping
            chunks, where a target early in a chunk sees few steps). Ignored without
            ``every_target``.

    Returns:
        Windows with :attr:`Windows.sessions` filled (the first step of a window always counts
        as a session start: nothing before it is visible).
    """
    rows: list[tuple[int, int, int]] = []  # (start, inputs, first targeted input)
    for u in range(streams.n_sessions):
        lo, hi = int(streams.offsets[u]), int(streams.offsets[u + 1])
        targets = np.flatnonzero(streams.target[lo + 1 : hi]) + lo + 1
        if len(targets) == 0:
            continue
        if every_target:
            step = max_len if stride is None else min(max(int(stride), 1), max_len)
            end = lo + min(max_len, hi - 1 - lo)  # targets lo + 1 .. end are covered
            if streams.target[lo + 1 : end + 1].any():
                rows.append((lo, end - lo, 0))
            while end < hi - 1:
                new_end = min(end + step, hi - 1)
                start = max(new_end - max_len, lo)
                if streams.target[end + 1 : new_end + 1].any():
                    rows.append((start, new_end - start, end - start))
                end = new_end
            continue
        head_end = min(hi - 1, lo + max_len)  # the first window's inputs: lo .. head_end - 1
        if targets[0] <= head_end:
            rows.append((lo, head_end - lo, 0))
        for t in targets[targets > head_end]:
            rows.append((int(t) - max_len, max_len, max_len - 1))
    w = len(rows)
    items = np.zeros((w, max_len), dtype=np.int64)
    cats = np.zeros((w, max_len), dtype=np.int64)
    sess = np.zeros((w, max_len), dtype=np.int64)
    t_items = np.full((w, max_len), IGNORE, dtype=np.int64)
    t_cats = np.full((w, max_len), IGNORE, dtype=np.int64)
    for r, (start, m, skip) in enumerate(rows):
        pad = max_len - m
        items[r, pad:] = streams.items[start : start + m] + 1
        cats[r, pad:] = streams.categories[start : start + m] + 1
        starts = streams.starts[start : start + m].copy()
        starts[0] = True
        sess[r, pad:] = np.where(starts, SESSION_STARTS, SESSION_CONTINUES)
        nxt = slice(start + 1 + skip, start + m + 1)
        is_target = streams.target[nxt]
        t_items[r, pad + skip :] = np.where(is_target, streams.items[nxt], IGNORE)
        t_cats[r, pad + skip :] = np.where(is_target, streams.categories[nxt], IGNORE)
    return Windows(
        items=items, categories=cats, target_items=t_items, target_categories=t_cats, sessions=sess
    )


def training_windows(steps: Steps, max_len: int) -> Windows:
    """Cut sessions into non-overlapping teacher-forcing windows of at most ``max_len`` inputs.

    A session of ``n`` steps gives windows whose inputs are steps ``j .. j + m - 1`` and
    targets steps ``j + 1 .. j + m`` for ``j = 0, max_len, 2 max_len, ...``; every step but the
    first is a target exactly once. Sessions of one step give nothing.
    """
    rows: list[tuple[int, int]] = []  # (start offset in steps arrays, number of inputs)
    for s in range(steps.n_sessions):
        lo, hi = int(steps.offsets[s]), int(steps.offsets[s + 1])
        for j in range(lo, hi - 1, max_len):
            rows.append((j, min(max_len, hi - 1 - j)))
    return _fill(steps, rows, max_len, context=[0] * len(rows))


def prefix_windows(steps: Steps, max_len: int) -> Windows:
    """Windows in which each target sees exactly its prefix, truncated to ``max_len`` steps.

    The first window of a session covers its first ``max_len`` targets at once (a causal
    encoder's state at a position depends only on the steps before it). Each later target
    ``t`` gets its own window of steps ``t - max_len .. t - 1`` with only the last position
    targeted, which is what an env observation of length ``max_len`` would show.
    """
    rows: list[tuple[int, int]] = []
    context: list[int] = []
    for s in range(steps.n_sessions):
        lo, hi = int(steps.offsets[s]), int(steps.offsets[s + 1])
        if hi - lo < 2:
            continue
        rows.append((lo, min(max_len, hi - 1 - lo)))
        context.append(0)
        for t in range(lo + max_len + 1, hi):
            rows.append((t - max_len, max_len))
            context.append(max_len - 1)  # only the last position has a target
    return _fill(steps, rows, max_len, context=context)


def _fill(steps: Steps, rows: list[tuple[int, int]], max_len: int, context: list[int]) -> Windows:
    w = len(rows)
    items = np.zeros((w, max_len), dtype=np.int64)
    cats = np.zeros((w, max_len), dtype=np.int64)
    t_items = np.full((w, max_len), IGNORE, dtype=np.int64)
    t_cats = np.full((w, max_len), IGNORE, dtype=np.int64)
    for r, ((start, m), skip) in enumerate(zip(rows, context, strict=True)):
        pad = max_len - m
        items[r, pad:] = steps.items[start : start + m] + 1
        cats[r, pad:] = steps.categories[start : start + m] + 1
        t_items[r, pad + skip :] = steps.items[start + 1 + skip : start + m + 1]
        t_cats[r, pad + skip :] = steps.categories[start + 1 + skip : start + m + 1]
    return Windows(items=items, categories=cats, target_items=t_items, target_categories=t_cats)


def mask_tokens(
    items: np.ndarray,
    categories: np.ndarray,
    mask_prob: float,
    item_mask_token: int,
    category_mask_token: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT4Rec-style masking: hide a random subset of non-padding steps.

    Each non-padding position is masked with probability ``mask_prob``; a row with real
    tokens but no masked position gets its last real position masked, so every row trains.
    A masked step hides both its item and its category (the category alone would give away
    much of the item).

    Args:
        items: (B, L) item tokens, 0 = padding.
        categories: (B, L) category tokens.
        mask_prob: Probability of masking each real position.
        item_mask_token: Token that replaces a masked item.
        category_mask_token: Token that replaces a masked category.
        rng: Source of randomness.

    Returns:
        ``(masked_items, masked_categories, targets)``: the (B, L) inputs with masks applied
        and (B, L) targets holding the hidden dataset item index at masked positions and
        ``IGNORE`` elsewhere.
    """
    real = items != PAD  # (B, L)
    masked = (rng.random(items.shape) < mask_prob) & real
    # Left padding: the last column is always the most recent real step when a row is non-empty.
    empty_rows = ~masked.any(axis=1) & real.any(axis=1)
    masked[empty_rows, -1] = True
    targets = np.where(masked, items - 1, IGNORE)
    return (
        np.where(masked, item_mask_token, items),
        np.where(masked, category_mask_token, categories),
        targets,
    )


def encoder_windows(
    dataset: PreparedDataset, split: str, max_len: int, sessions: bool, training: bool = False
) -> Windows:
    """The windows an encoder reads for ``split``: what training, validation and eval share.

    Args:
        dataset: The prepared dataset.
        split: Split whose targets the windows hold.
        max_len: Window length (the encoder's ``max_len``).
        sessions: The encoder reads user histories (``EncoderConfig.sessions``): windows over
            each user's stream, earlier sessions and splits included (:func:`history_windows`).
            False: one session per window (:func:`training_windows`, :func:`prefix_windows`).
        training: Teacher-forcing chunks (every target of a chunk at once) instead of windows
            that show each target its full ``max_len`` history.

    Returns:
        Windows whose targets are every step ``t >= 1`` of every session of ``split``.
    """
    if sessions:
        # Training windows overlap by half: with non-overlapping chunks a target sees on
        # average half of the ``max_len`` steps that evaluation shows it, so the copy term
        # learns its recency and gate on histories shorter than the ones it is ranked with.
        return history_windows(
            user_steps(dataset, split), max_len, every_target=training, stride=max(1, max_len // 2)
        )
    steps = collapse_repeats(dataset.sessions(split))
    return training_windows(steps, max_len) if training else prefix_windows(steps, max_len)
