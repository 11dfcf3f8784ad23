"""Categories derived from item co-occurrence, for logs that have none (e.g. DIGINETICA).

Items that users view one right after the other in a session tend to belong together. The
items form a graph whose edge weights count such adjacent pairs; label propagation finds its
communities, and each large enough community becomes a category. Everything else gets the
unknown category, so a derived category always means "seen together often enough".
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cooccurrence_categories",
]


def cooccurrence_categories(
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    n_items: int,
    seed: int = 0,
    max_iter: int = 30,
    max_categories: int = 200,
    min_size: int = 2,
) -> np.ndarray:
    """Cluster items by co-occurrence with seeded, semi-synchronous label propagation.

    Each round, a random half of the items (drawn from ``seed``) adopt the label with the
    largest total edge weight among their neighbours; updating only half of them avoids the
    two-label oscillation of fully synchronous propagation on bipartite-like graphs. Ties are
    broken by a fixed random priority per label, so the result depends only on the inputs
    and the seed.

    Args:
        src: (E,) int item index of each edge's first end.
        dst: (E,) int item index of each edge's second end (the graph is made symmetric).
        weight: (E,) float edge weights (e.g. number of adjacent occurrences), > 0.
        n_items: Number of items; indices are in ``[0, n_items)``.
        seed: Seed of the update order and tie-breaking.
        max_iter: Maximum number of propagation rounds.
        max_categories: Keep at most this many communities (the largest).
        min_size: Communities with fewer items are not categories.

    Returns:
        (n_items,) int64 category of each item, ``0..K-1`` by decreasing community size, or
        ``-1`` for items in no kept community.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    if not (src.shape == dst.shape == weight.shape):
        raise ValueError("src, dst and weight must have the same shape")
    rng = np.random.default_rng(seed)
    labels = np.arange(n_items, dtype=np.int64)
    keep = src != dst
    a = np.concatenate([src[keep], dst[keep]])
    b = np.concatenate([dst[keep], src[keep]])
    w = np.concatenate([weight[keep], weight[keep]])
    priority = rng.random(n_items)  # tie-break between labels with equal weight
    for _ in range(max_iter):
        if len(a) == 0:
            break
        # Total weight of each (item, neighbour label) pair.
        key = a * n_items + labels[b]
        uniq, inverse = np.unique(key, return_inverse=True)
        score = np.bincount(inverse, weights=w)
        node, label = uniq // n_items, uniq % n_items
        # Best label per node: sort by node, then score descending, then label priority.
        order = np.lexsort((-priority[label], -score, node))
        node, label = node[order], label[order]
        first = np.r_[True, node[1:] != node[:-1]]
        best = labels.copy()
        best[node[first]] = label[first]
        active = rng.random(n_items) < 0.5
        changed = active & (best != labels)
        if not changed.any() and np.array_equal(best, labels):
            break
        labels = np.where(active, best, labels)
    sizes = np.bincount(labels, minlength=n_items)
    communities = np.flatnonzero(sizes >= max(min_size, 1))
    # Largest first; equal sizes by smallest label, so the numbering is deterministic.
    communities = communities[np.lexsort((communities, -sizes[communities]))][:max_categories]
    category = np.full(n_items, -1, dtype=np.int64)
    rank = np.full(n_items, -1, dtype=np.int64)
    rank[communities] = np.arange(len(communities))
    category[:] = rank[labels]
    return category
