"""Full-ranking metrics of next-step predictions: pure functions over score arrays.

They live with the models because training uses them for early stopping;
:mod:`rlrec.evaluation.ranking` builds the evaluation protocol and the baselines on them.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "K",
    "category_accuracy",
    "category_target_values",
    "item_ranking_metrics",
    "item_target_values",
    "target_ranks",
]

K = 10
"""Cut-off of HR@K and NDCG@K."""


def target_ranks(
    scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor
) -> np.ndarray:
    """0-based rank of each row's target among all columns (higher score ranks first).

    Ties count half: ``rank = #{score > target} + #{score == target, other column} / 2``.

    Args:
        scores: (N, M) scores.
        targets: (N,) int column of each row's target.

    Returns:
        (N,) float64 ranks in ``[0, M - 1]``.
    """
    s = torch.as_tensor(scores)
    t = torch.as_tensor(targets, device=s.device).long()
    if s.dim() != 2 or t.shape != (s.shape[0],):
        raise ValueError(f"scores {tuple(s.shape)} must be (N, M) and targets (N,)")
    if t.numel() and (t.min() < 0 or t.max() >= s.shape[1]):
        raise ValueError("a target is outside 0..M-1")
    target_score = s.gather(1, t[:, None])  # (N, 1)
    greater = (s > target_score).sum(dim=1)
    ties = (s == target_score).sum(dim=1) - 1
    return (greater.double() + 0.5 * ties.double()).cpu().numpy()


def item_target_values(ranks: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    """Each target's hit@k, NDCG@k and reciprocal rank (one relevant item per target).

    Their means are :func:`item_ranking_metrics`; per target, they are what a paired
    comparison of two models on the same targets resamples.

    Args:
        ranks: (N,) 0-based ranks from :func:`target_ranks`.
        k: Cut-off.

    Returns:
        ``{"hr@k", "ndcg@k", "mrr"}``, each (N,) float64.
    """
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < k
    return {
        f"hr@{k}": hit.astype(np.float64),
        f"ndcg@{k}": np.where(hit, 1.0 / np.log2(r + 2.0), 0.0),
        "mrr": 1.0 / (r + 1.0),
    }


def item_ranking_metrics(ranks: np.ndarray, k: int = K) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of next-item ranks (one relevant item per target).

    Args:
        ranks: (N,) 0-based ranks from :func:`target_ranks`.
        k: Cut-off.

    Returns:
        ``{"hr@k", "ndcg@k", "mrr"}``; NaN when there is no target.
    """
    values = item_target_values(ranks, k)
    if len(ranks) == 0:
        return {name: float("nan") for name in values}
    return {name: float(v.mean()) for name, v in values.items()}


def category_target_values(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Each target's next-category hit at 1 and at 5 (means: :func:`category_accuracy`).

    Args:
        ranks: (N,) 0-based ranks from :func:`target_ranks`.

    Returns:
        ``{"category_acc@1", "category_acc@5"}``, each (N,) float64 0/1.
    """
    r = np.asarray(ranks, dtype=np.float64)
    return {
        "category_acc@1": (r < 1).astype(np.float64),
        "category_acc@5": (r < 5).astype(np.float64),
    }


def category_accuracy(ranks: np.ndarray) -> dict[str, float]:
    """Next-category accuracy@1 and @5 (the target among the top 1 and top 5).

    Args:
        ranks: (N,) 0-based ranks from :func:`target_ranks`.

    Returns:
        ``{"category_acc@1", "category_acc@5"}``; NaN when there is no target.
    """
    values = category_target_values(ranks)
    if len(ranks) == 0:
        return {name: float("nan") for name in values}
    return {name: float(v.mean()) for name, v in values.items()}
