"""Users' timelines across sessions, and the re-visit baseline that reads them.

A PreparedDataset numbers its sessions in ``(user, session start)`` order (``schema``), so the
log's sessions, collapsed into steps, laid end to end, are every user's history in time order:
a user's **timeline**. A target at step ``j`` of a session sees the timeline up to the step
before it: the user's earlier sessions (in any split: they happened before) and the current
session's prefix. Logs without user ids (DIGINETICA's anonymous sessions) give every session
its own user, so the timeline is the session.

**Re-visit** ranks the items of the user's last ``window`` steps by recency (most recent
first): users come back to items they looked at, which no transition or neighbourhood
baseline models. Items outside the window get no score; the protocol
(:mod:`rlrec.evaluation.ranking`) falls back to popularity for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrec.data.dataset import PreparedDataset
from rlrec.models.sequences import collapse_repeats

__all__ = ["UserTimelines", "revisit_scores", "split_session_ids", "user_timelines"]


@dataclass(frozen=True)
class UserTimelines:
    """Every session of a log as steps, laid end to end by user and time.

    Attributes:
        items: (T,) item of each step of every timeline: users one after another, each
            user's sessions by start time (then id).
        session_ids: (S,) every session id, ascending.
        session_start: (S,) index into ``items`` of each session's first step.
        user_start: (S,) index into ``items`` of the first step of the session's user.
    """

    items: np.ndarray
    session_ids: np.ndarray
    session_start: np.ndarray
    user_start: np.ndarray

    def offsets_of(self, session_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Timeline offsets of sessions by id: ``(session start, user start)``, each (n,)."""
        at = np.searchsorted(self.session_ids, session_ids)
        if len(at) and (
            at.max() >= len(self.session_ids) or (self.session_ids[at] != session_ids).any()
        ):
            raise ValueError("a session id is not in the dataset's timelines")
        return self.session_start[at], self.user_start[at]


def user_timelines(dataset: PreparedDataset) -> UserTimelines:
    """Collapse every session of the log into steps and lay them out user by user."""
    all_sessions = dataset.sessions(None)  # sorted by session id
    steps = collapse_repeats(all_sessions)
    n = all_sessions.n_sessions
    starts = all_sessions.offsets[:-1]
    session_ids = dataset.events["session"].to_numpy(np.int64)[starts]
    user = all_sessions.user.astype(np.int64)
    first_ts = all_sessions.timestamps[starts]
    # The schema numbers sessions by (user, start) already; sorting makes it a guarantee.
    order = np.lexsort((session_ids, first_ts, user))
    lengths = steps.lengths[order]
    new_offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    gather = np.repeat(steps.offsets[order] - new_offsets[:-1], lengths) + np.arange(
        new_offsets[-1]
    )
    session_start = np.empty(n, dtype=np.int64)
    session_start[order] = new_offsets[:-1]
    sorted_user = user[order]
    new_user = np.r_[True, sorted_user[1:] != sorted_user[:-1]] if n else np.zeros(0, bool)
    # Each session's user's first session (in timeline order): the last user change before it.
    first = np.maximum.accumulate(np.where(new_user, np.arange(n), 0)) if n else new_user
    user_start = np.empty(n, dtype=np.int64)
    user_start[order] = new_offsets[:-1][first] if n else user_start[order]
    return UserTimelines(
        items=steps.items[gather],
        session_ids=session_ids,
        session_start=session_start,
        user_start=user_start,
    )


def split_session_ids(dataset: PreparedDataset, split: str) -> np.ndarray:
    """(S,) session ids of one split's sessions, in the order of ``dataset.sessions(split)``."""
    session = dataset.split_events(split)["session"].to_numpy(np.int64)
    if len(session) == 0:
        return session
    return session[np.r_[True, session[1:] != session[:-1]]]


def revisit_scores(
    timeline_items: np.ndarray,
    end: np.ndarray,
    start: np.ndarray,
    window: int,
    n_items: int,
) -> np.ndarray:
    """Recency scores of the items in each target's last ``window`` steps of history.

    Args:
        timeline_items: (T,) items of the timelines.
        end: (B,) timeline index of each target: its history is ``[start, end)``.
        start: (B,) first timeline index the target may see (its user's, or its session's).
        window: Steps of history to look back.
        n_items: Catalog size.

    Returns:
        (B, n_items) scores: ``1 - (steps back - 1) / window`` for the items in the window (1
        for the most recent step; an item seen twice keeps its most recent), 0 elsewhere.
    """
    b = len(end)
    back = np.arange(1, window + 1)  # (W,) 1 = the step just before the target
    idx = end[:, None] - back[None, :]  # (B, W)
    valid = idx >= start[:, None]
    rows = np.broadcast_to(np.arange(b)[:, None], idx.shape)[valid]
    items = timeline_items[idx[valid]]
    value = (1.0 - (np.broadcast_to(back, idx.shape)[valid] - 1) / window).astype(np.float64)
    scores = np.zeros((b, n_items))
    np.maximum.at(scores, (rows, items), value)
    return scores
