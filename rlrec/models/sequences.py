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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrec.data.dataset import SessionArrays
from rlrec.data.ragged import Ragged

__all__ = [
    "IGNORE",
    "PAD",
    "Steps",
    "Windows",
    "collapse_repeats",
    "mask_tokens",
    "prefix_windows",
    "training_windows",
]

PAD = 0
"""Padding token (items and categories)."""

IGNORE = -1
"""Target value of positions that have no target (padding, or a context-only position)."""


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
    """

    items: np.ndarray
    categories: np.ndarray
    target_items: np.ndarray
    target_categories: np.ndarray

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
