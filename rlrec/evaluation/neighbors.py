"""Neighbourhood baselines of next-item prediction: session-kNN, V-SKNN and item-kNN.

The nearest-neighbour family that Ludewig & Jannach (2018, "Evaluation of session-based
recommendation algorithms", UMUAI 28) and Ludewig et al. (2021, "Empirical analysis of
session-based recommendation algorithms", UMUAI 31) found to be the strongest simple
competitor of neural session models. Each is written from the papers' definitions, batched
over many prefixes with ``scipy.sparse`` products (the reference implementation, session-rec,
loops over sessions in Python: far too slow for a 1M-event log):

* **SKNN** (session-based kNN): the current session is the set of its items. Candidate
  neighbours are the training sessions that share an item with it, of which the
  ``sample_size`` most recent (by their last event) are kept; their similarity is the cosine
  of the binary item vectors, ``|a & b| / sqrt(|a| |b|)``; the ``k`` most similar are the
  neighbours, and an item's score is the sum of the similarities of the neighbours that hold
  it.
* **V-SKNN** (vector multiplication SKNN): the current session is a real-valued vector whose
  entry for an item is ``position / length`` (linear decay: the most recent step weighs 1;
  an item seen twice keeps its latest position). Similarity is the dot product with the
  neighbour's binary vector divided by the number of distinct current items; the same
  candidate sampling and top ``k``. A neighbour's vote for item ``i`` is ``sim * (1 +
  idf_weight * idf(i)) / step``, where ``step`` is how many steps back the most recent
  current item that the neighbour holds lies (1 = the current item), and ``idf(i) =
  log(n_sessions / n_steps(i))`` over the training steps.
* **item-kNN** (item-to-item co-occurrence, the baseline of GRU4Rec's paper): items are
  similar when they occur in the same training sessions, ``sim(i, j) = n(i, j) / (sqrt(n(i)
  n(j)) + lambda)`` (cosine of binary session vectors, shrunk by ``lambda`` for rare items);
  the next item is scored by its similarity to the current item among the current item's
  ``k`` most similar.

Ties in neighbour selection go to the more recent session (session-rec leaves them to the
sort's order). Every scorer returns dense ``(B, n_items)`` scores, zero where an item got no
vote; :mod:`rlrec.evaluation.ranking` adds the popularity fallback and the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rlrec.models.sequences import Steps

__all__ = [
    "KnnCandidates",
    "SessionIndex",
    "fit_item_knn",
    "fit_session_index",
    "item_knn_scores",
    "knn_candidates",
    "session_knn_scores",
    "top_per_row",
]


@dataclass(frozen=True)
class SessionIndex:
    """Training sessions as the neighbourhood methods read them.

    Attributes:
        sessions: (S, n_items) binary CSR matrix: the distinct items of each session.
        sizes: (S,) number of distinct items of each session.
        recency: (S,) int64 rank of each session by its last event's time (0 = oldest; ties
            broken by session order), the key of recent-session sampling.
        idf: (n_items,) ``log(S / steps on the item)``; 0 for items without a training step.
    """

    sessions: sp.csr_matrix
    sizes: np.ndarray
    recency: np.ndarray
    idf: np.ndarray

    @property
    def n_sessions(self) -> int:
        """Number of training sessions."""
        return int(self.sessions.shape[0])


def fit_session_index(steps: Steps, session_end: np.ndarray, n_items: int) -> SessionIndex:
    """Index the training sessions for SKNN and V-SKNN.

    Args:
        steps: Training sessions as steps.
        session_end: (S,) time of each session's last event (any monotone unit).
        n_items: Catalog size.
    """
    n_sessions = steps.n_sessions
    rows = np.repeat(np.arange(n_sessions), steps.lengths)
    binary = sp.csr_matrix(
        (np.ones(len(rows)), (rows, steps.items)), shape=(n_sessions, n_items), dtype=np.float64
    )
    binary.sum_duplicates()
    binary.data[:] = 1.0  # an item seen twice in a session is one member of its set
    order = np.lexsort((np.arange(n_sessions), np.asarray(session_end)))
    recency = np.empty(n_sessions, dtype=np.int64)
    recency[order] = np.arange(n_sessions)
    steps_per_item = np.bincount(steps.items, minlength=n_items).astype(np.float64)
    with np.errstate(divide="ignore"):
        idf = np.where(steps_per_item > 0, np.log(max(n_sessions, 1) / steps_per_item), 0.0)
    return SessionIndex(
        sessions=binary,
        sizes=np.asarray(binary.sum(axis=1)).ravel(),
        recency=recency,
        idf=idf,
    )


@dataclass(frozen=True)
class KnnCandidates:
    """Every (prefix, candidate session) pair of a batch, with both methods' similarities.

    Pairs are the non-zeros of the prefixes' overlap with the training sessions, sorted by
    row: ``row[p]`` is the prefix and ``col[p]`` the training session of pair ``p``.

    Attributes:
        row: (P,) prefix of each pair.
        col: (P,) training session of each pair.
        cosine: (P,) SKNN similarity.
        vector: (P,) V-SKNN similarity.
        step: (P,) steps back to the most recent current item the session holds (1 = last).
        n_rows: Number of prefixes in the batch.
    """

    row: np.ndarray
    col: np.ndarray
    cosine: np.ndarray
    vector: np.ndarray
    step: np.ndarray
    n_rows: int


def _query(prefixes: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct items of each prefix with their latest position and the prefix length.

    Args:
        prefixes: (B, L) item indices, left-padded with -1 (most recent last).
        n_items: Catalog size.

    Returns:
        ``(rows, items, latest)`` of each distinct (prefix, item) pair, with ``latest`` the
        1-based position of its last occurrence among the prefix's steps.
    """
    width = prefixes.shape[1]
    lengths = (prefixes >= 0).sum(axis=1)
    rows, cols = np.nonzero(prefixes >= 0)
    items = prefixes[rows, cols]
    # 1-based position among the real steps: columns are left-padded.
    position = cols - (width - lengths[rows]) + 1
    key = rows.astype(np.int64) * n_items + items
    order = np.lexsort((position, key))
    last = np.r_[key[order][1:] != key[order][:-1], True] if len(order) else np.zeros(0, bool)
    keep = order[last]  # the latest occurrence of each (row, item)
    return rows[keep], items[keep], position[keep]


def knn_candidates(index: SessionIndex, prefixes: np.ndarray) -> KnnCandidates:
    """Overlap of each prefix with every training session, and both similarities.

    Args:
        index: The training sessions.
        prefixes: (B, L) item indices, left-padded with -1 (most recent last); each row has
            at least one step.
    """
    b = prefixes.shape[0]
    n_items = index.sessions.shape[1]
    rows, items, latest = _query(prefixes, n_items)
    lengths = (prefixes >= 0).sum(axis=1).astype(np.float64)  # (B,) steps, repeats included
    distinct = np.bincount(rows, minlength=b).astype(np.float64)  # (B,) distinct items
    steps_back = lengths[rows] - latest + 1  # 1 = the current item
    st = index.sessions.T.tocsr()

    def product(values: np.ndarray) -> sp.csr_matrix:
        q = sp.csr_matrix((values, (rows, items)), shape=(b, n_items))
        out = (q @ st).tocsr()
        out.sort_indices()
        return out

    overlap = product(np.ones(len(rows)))  # |a & b|
    weighted = product(latest / lengths[rows])  # V-SKNN dot product with linear decay
    row = np.repeat(np.arange(b), np.diff(overlap.indptr))
    col = overlap.indices
    step = np.zeros(len(col))
    n_sessions = index.n_sessions
    pair_keys = row.astype(np.int64) * n_sessions + col
    # The smallest step among the shared items, exactly, in blocks of 50 steps: within a block
    # the sum of distinct powers 2^-(step - start) is exact in float64 (< 53 binary digits) and
    # lies in [2^-m, 2^-m+1) for the block's smallest shared step m, which frexp reads off.
    for start in range(0, int(steps_back.max(initial=0)), 50):
        block = (steps_back > start) & (steps_back <= start + 50)
        q = sp.csr_matrix(
            (np.exp2(-(steps_back[block] - start)), (rows[block], items[block])),
            shape=(b, n_items),
        )
        found = (q @ st).tocsr()
        found.sort_indices()
        # Look each pair of the block up in the overlap's pattern (sorted by row, then column).
        pair_row = np.repeat(np.arange(b), np.diff(found.indptr))
        at = np.searchsorted(pair_keys, pair_row * n_sessions + found.indices)
        _, exponent = np.frexp(found.data)
        unresolved = step[at] == 0
        step[at[unresolved]] = start + 1 - exponent[unresolved]
        if (step > 0).all():
            break
    cosine = overlap.data / np.sqrt(distinct[row] * index.sizes[col])
    return KnnCandidates(
        row=row,
        col=col.astype(np.int64),
        cosine=cosine,
        vector=weighted.data / distinct[row],
        step=step,
        n_rows=b,
    )


def top_per_row(row: np.ndarray, keys: tuple[np.ndarray, ...], n: int) -> np.ndarray:
    """Mask of the ``n`` best entries of each row, best first by ``keys`` (all descending).

    Args:
        row: (P,) row of each entry.
        keys: Sort keys, most significant first, each (P,); larger is better.
        n: Entries to keep per row.

    Returns:
        (P,) bool mask.
    """
    if len(row) == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((*(-k for k in reversed(keys)), row))
    sorted_rows = row[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
    keep = np.zeros(len(row), dtype=bool)
    keep[order[rank < n]] = True
    return keep


def session_knn_scores(
    index: SessionIndex,
    cand: KnnCandidates,
    method: str,
    k: int,
    sample_size: int,
    idf_weight: float = 10.0,
) -> np.ndarray:
    """SKNN or V-SKNN item scores of a batch of prefixes.

    Args:
        index: The training sessions.
        cand: The batch's candidates from :func:`knn_candidates`.
        method: ``sknn`` or ``vsknn``.
        k: Neighbours per prefix.
        sample_size: Most recent candidate sessions considered per prefix.
        idf_weight: V-SKNN's weight of an item's IDF in its score.

    Returns:
        (B, n_items) scores, 0 for items no neighbour holds.
    """
    if method not in ("sknn", "vsknn"):
        raise ValueError(f"unknown neighbourhood method {method!r}: expected sknn or vsknn")
    recency = index.recency[cand.col]
    sampled = top_per_row(cand.row, (recency,), sample_size)
    sim = cand.cosine if method == "sknn" else cand.vector
    row, col, sim, recency = cand.row[sampled], cand.col[sampled], sim[sampled], recency[sampled]
    near = top_per_row(row, (sim, recency), k)
    weight = sim[near] if method == "sknn" else sim[near] / cand.step[sampled][near]
    neighbours = sp.csr_matrix(
        (weight, (row[near], col[near])), shape=(cand.n_rows, index.n_sessions)
    )
    scores = np.asarray((neighbours @ index.sessions).todense())  # (B, n_items)
    if method == "vsknn":
        scores *= 1.0 + idf_weight * index.idf
    return scores


def fit_item_knn(steps: Steps, n_items: int, shrinkage: float = 20.0) -> sp.csr_matrix:
    """Item-to-item co-occurrence similarity of the training sessions.

    Args:
        steps: Training sessions as steps.
        n_items: Catalog size.
        shrinkage: ``lambda`` in ``n(i, j) / (sqrt(n(i) n(j)) + lambda)``.

    Returns:
        (n_items, n_items) CSR similarities, zero diagonal.
    """
    rows = np.repeat(np.arange(steps.n_sessions), steps.lengths)
    binary = sp.csr_matrix(
        (np.ones(len(rows)), (rows, steps.items)), shape=(steps.n_sessions, n_items)
    )
    binary.sum_duplicates()
    binary.data[:] = 1.0
    cooc = (binary.T @ binary).tocoo()  # (n_items, n_items) sessions holding both
    support = np.asarray(binary.sum(axis=0)).ravel()  # sessions holding each item
    off = cooc.row != cooc.col
    i, j, n = cooc.row[off], cooc.col[off], cooc.data[off]
    sim = n / (np.sqrt(support[i] * support[j]) + shrinkage)
    return sp.csr_matrix((sim, (i, j)), shape=(n_items, n_items))


def item_knn_scores(
    similarity: sp.csr_matrix, last_items: np.ndarray, k: int, popularity: np.ndarray
) -> np.ndarray:
    """Item-kNN scores: the similarity to the current item among its ``k`` nearest.

    Args:
        similarity: (n_items, n_items) from :func:`fit_item_knn`.
        last_items: (B,) the current item of each prefix.
        k: Neighbours kept per item.
        popularity: (n_items,) tie-break among equally similar neighbours (more popular
            first).

    Returns:
        (B, n_items) scores, 0 outside the neighbourhood.
    """
    rows = similarity[last_items].tocsr()  # (B, n_items)
    row = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    keep = top_per_row(row, (rows.data, popularity[rows.indices]), k)
    scores = np.zeros(rows.shape)
    scores[row[keep], rows.indices[keep]] = rows.data[keep]
    return scores
