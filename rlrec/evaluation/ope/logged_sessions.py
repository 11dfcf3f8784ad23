r"""Real logged sessions as a sequential decision problem, and replay ranking metrics.

What a "logged real session" means here (``rlrec ope sessions --data``, ``rlrec ope replay``):

* A session of a PreparedDataset split is a sequence of **steps** (consecutive events on one
  item collapsed, as the encoder and the env read them). Every step after the first is a
  **decision**: the state is the session's previous steps (the last ``history_length`` of
  them, the env's observation layout: ``item_history``, ``category_history`` tokens and
  ``step`` = number of previous steps); the logged **action** is the step's item, read as if
  the logging system had put that item in front of the user; the **reward** is the step's
  strongest event by the env's weights (view, click and fav 1, cart 3, buy 10). Sessions
  with one step have no decision and are skipped.
* The logs carry no propensities, so the **behaviour policy is estimated** from the train
  split by counts: :math:`\hat\pi_b(i \mid s) = P(k(i) \mid c) P(i \mid k(i))` with ``c`` the
  previous step's category, ``k(i)`` the item's category, transition and item counts with
  add-0.5 smoothing. Every report says so.
* Caveat, stated in the report too: only engaged items are logged (an ignored
  recommendation leaves no event), so every logged reward is >= 1 and the estimates measure
  the reward of the logged steps a target policy would also have chosen, relative to the
  estimated behaviour; they rank policies by agreement with rewarding behaviour rather than
  predicting online returns.

Replay ranking metrics: every decision's actual item is ranked against the policy's
probabilities over all items (full ranking, ties count half, as
:func:`rlrec.evaluation.ranking.target_ranks`); HR@K and NDCG@K of the top K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlrec.data.content import require_items
from rlrec.data.dataset import PreparedDataset, SessionArrays
from rlrec.data.ragged import Ragged
from rlrec.data.schema import EVENT_TYPES
from rlrec.errors import UserError
from rlrec.evaluation.ope.bootstrap import bootstrap_summary
from rlrec.evaluation.ope.fqe import FQEConfig, fitted_q_evaluation
from rlrec.evaluation.ope.q_features import CatalogFeatures
from rlrec.evaluation.ope.sequential import (
    DEFAULT_ESTIMATOR,
    effective_sample_size,
    estimate_session_value,
    prepare_sessions,
)
from rlrec.evaluation.ope.stochastic_policies import kl_divergence
from rlrec.evaluation.ranking import item_ranking_metrics, target_ranks

__all__ = [
    "BEHAVIOUR_METHOD",
    "EVENT_REWARD",
    "CountBehaviour",
    "Decisions",
    "ItemProbabilities",
    "estimate_count_behaviour",
    "evaluate_real_sessions",
    "item_features",
    "replay_metrics",
    "session_decisions",
]

EVENT_REWARD: dict[str, float] = {"view": 1.0, "click": 1.0, "cart": 3.0, "fav": 1.0, "buy": 10.0}
"""Reward of a logged step by its strongest event (the env's engage / cart / buy weights)."""

BEHAVIOUR_METHOD = (
    "estimated (category-conditional counts on the train split: P(category | previous "
    "category) x P(item | category), add-0.5 smoothing)"
)


@dataclass(frozen=True)
class Decisions(Ragged):
    """The decisions of a split's sessions (see the module docstring), in session order.

    Attributes:
        offsets: (S + 1,) int64 offsets over decisions (sessions with >= 2 steps).
        item_history: (T, L) int64 item tokens of the previous steps, left-padded.
        category_history: (T, L) int64 category tokens.
        step: (T, 1) int64 number of previous steps in the session.
        item: (T,) int64 the logged item (dataset index).
        reward: (T,) float64 reward of the step.
    """

    item_history: np.ndarray
    category_history: np.ndarray
    step: np.ndarray
    item: np.ndarray
    reward: np.ndarray

    @property
    def n_decisions(self) -> int:
        """T."""
        return len(self.item)

    def observations(self, rows: slice | np.ndarray) -> dict[str, np.ndarray]:
        """The env-style observation dict of some decisions."""
        return {
            "item_history": self.item_history[rows],
            "category_history": self.category_history[rows],
            "step": self.step[rows],
        }


def _step_arrays(sessions: SessionArrays) -> tuple[np.ndarray, ...]:
    """(offsets, items, categories, rewards) of steps: runs of one item collapsed."""
    items = sessions.items.astype(np.int64)
    n = len(items)
    start = np.zeros(n, dtype=bool)
    starts = sessions.offsets[:-1]
    start[starts[starts < n]] = True
    keep = start.copy()
    keep[1:] |= items[1:] != items[:-1]
    kept_before = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    table = np.array([EVENT_REWARD[e] for e in EVENT_TYPES])
    event_reward = table[sessions.events.astype(np.int64)]
    run_starts = np.flatnonzero(keep)
    rewards = np.maximum.reduceat(event_reward, run_starts) if n else np.zeros(0)
    return (
        kept_before[sessions.offsets],
        items[keep],
        sessions.categories.astype(np.int64)[keep],
        rewards.astype(np.float64),
    )


def session_decisions(dataset: PreparedDataset, split: str, history_length: int) -> Decisions:
    """The decisions of ``split`` with ``history_length``-step histories.

    Raises:
        UserError: If the split has no session with two or more steps.
    """
    require_items(dataset, "ope sessions")
    offsets, items, cats, rewards = _step_arrays(dataset.sessions(split))
    lengths = np.diff(offsets)
    keep_session = lengths >= 2
    if not keep_session.any():
        raise UserError(
            f"{dataset.path}: the {split} split has no session with 2 or more steps, so no "
            "decision to evaluate; use another split or a longer log"
        )
    session = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(items)) - offsets[session]
    decision = (position >= 1) & keep_session[session]
    rows = np.flatnonzero(decision)  # (T,) step index of each decision
    lo = offsets[session[rows]]
    idx = rows[:, None] - history_length + np.arange(history_length)[None, :]  # (T, L)
    valid = idx >= lo[:, None]
    safe = np.where(valid, idx, 0)
    counts = (lengths - 1)[keep_session]
    return Decisions(
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        item_history=np.where(valid, items[safe] + 1, 0),
        category_history=np.where(valid, cats[safe] + 1, 0),
        step=position[rows][:, None].astype(np.int64),
        item=items[rows],
        reward=rewards[rows],
    )


@dataclass(frozen=True)
class CountBehaviour:
    """Behaviour policy estimated by counts: P(category | previous category) P(item | category).

    Attributes:
        transition: (C, C) smoothed P(next category | previous category), over categories
            that hold at least one item.
        item_given_category: (n_items,) smoothed P(item | its category).
        item_category: (n_items,) category of each item.
    """

    transition: np.ndarray
    item_given_category: np.ndarray
    item_category: np.ndarray

    def probability(self, last_category: np.ndarray, item: np.ndarray) -> np.ndarray:
        r"""(T,) :math:`\hat\pi_b(item \mid last category)`."""
        k = self.item_category[item]
        return self.transition[last_category, k] * self.item_given_category[item]

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, n_items) the estimated behaviour distributions over all items."""
        last = np.asarray(obs["category_history"])[:, -1] - 1
        return self.transition[last][:, self.item_category] * self.item_given_category[None, :]


def estimate_count_behaviour(dataset: PreparedDataset, smoothing: float = 0.5) -> CountBehaviour:
    """Fit :class:`CountBehaviour` on the train split's consecutive steps."""
    offsets, items, cats, _ = _step_arrays(dataset.sessions("train"))
    n_items, n_cat = dataset.n_items, dataset.n_categories
    item_category = dataset.item_category.astype(np.int64)
    lengths = np.diff(offsets)
    session = np.repeat(np.arange(len(lengths)), lengths)
    nxt = np.flatnonzero(np.arange(len(items)) - offsets[session] >= 1)
    counts = np.zeros((n_cat, n_cat))
    np.add.at(counts, (cats[nxt - 1], item_category[items[nxt]]), 1.0)
    has_items = np.bincount(item_category, minlength=n_cat) > 0
    counts = (counts + smoothing) * has_items[None, :]
    transition = counts / counts.sum(axis=1, keepdims=True)
    item_counts = np.bincount(items, minlength=n_items).astype(np.float64) + smoothing
    per_cat = np.bincount(item_category, weights=item_counts, minlength=n_cat)
    return CountBehaviour(
        transition=transition,
        item_given_category=item_counts / per_cat[item_category],
        item_category=item_category,
    )


def item_features(dataset: PreparedDataset) -> CatalogFeatures:
    """:class:`CatalogFeatures` over all dataset items (popularity = logged counts)."""
    counts = dataset.items["count"].to_numpy(np.float64)
    return CatalogFeatures(
        action_item_token=np.arange(dataset.n_items) + 1,
        action_category_token=dataset.item_category.astype(np.int64) + 1,
        action_log_popularity=np.log(np.maximum(counts, 1.0)),
        n_item_tokens=dataset.n_items + 1,
        n_category_tokens=dataset.n_categories + 1,
    )


ItemProbabilities = Callable[[dict[str, np.ndarray]], np.ndarray]
"""obs -> (B, n_items) a policy's probabilities over all dataset items."""


def _chunks(n: int, n_items: int) -> list[slice]:
    rows = max(64, 20_000_000 // max(n_items, 1))  # bound (rows, n_items) temporaries
    return [slice(lo, min(n, lo + rows)) for lo in range(0, n, rows)]


def evaluate_real_sessions(
    dataset: PreparedDataset,
    target: ItemProbabilities,
    target_name: str,
    split: str = "test",
    history_length: int = 20,
    n_bootstrap: int = 200,
    seed: int = 0,
    fqe: FQEConfig | None = None,
) -> dict[str, Any]:
    """Sequential OPE of a target on a split's real sessions with an estimated behaviour.

    Returns:
        ``{"target", "split", "sessions", "decisions", "propensities", "meaning",
        "logged_value", "kl_per_step", "ess", "default_estimator", "estimates", "bootstrap"}``.
    """
    decisions = session_decisions(dataset, split, history_length)
    behaviour = estimate_count_behaviour(dataset)
    feat = item_features(dataset)
    n = decisions.n_decisions
    last_cat = decisions.category_history[:, -1] - 1
    pb = behaviour.probability(last_cat, decisions.item)
    pe = np.empty(n)
    kl = np.empty(n)
    expected = np.empty((n, feat.n_features))
    for sl in _chunks(n, dataset.n_items):
        obs = decisions.observations(sl)
        probs = np.asarray(target(obs), dtype=np.float64)  # (b, n_items)
        if probs.shape != (sl.stop - sl.start, dataset.n_items):
            raise UserError(
                f"target {target_name}: probabilities of shape {probs.shape}, expected "
                f"({sl.stop - sl.start}, {dataset.n_items}) over the dataset's items"
            )
        pe[sl] = probs[np.arange(len(probs)), decisions.item[sl]]
        kl[sl] = kl_divergence(probs, behaviour.action_probabilities(obs))
        expected[sl] = feat.expected(obs, probs)
    features = feat.features(decisions.observations(slice(None)), decisions.item)
    config = fqe or FQEConfig(seed=seed)
    result = fitted_q_evaluation(
        decisions.offsets, decisions.reward, features, expected, config=config
    )
    sessions = prepare_sessions(
        session_offsets=decisions.offsets,
        reward=decisions.reward,
        behaviour_prob=pb,
        target_prob=pe,
        q_factual=result.q_factual,
        v_target=result.v_target,
    )
    estimates = estimate_session_value(sessions, n_bootstrap=n_bootstrap, seed=seed)
    return {
        "target": target_name,
        "split": split,
        "sessions": sessions.n_sessions,
        "decisions": n,
        "propensities": BEHAVIOUR_METHOD,
        "meaning": (
            "each step after a session's first is a decision: state = previous steps, action = "
            "the logged item, reward = its strongest event (view/click/fav 1, cart 3, buy 10); "
            "only engaged items are logged, so the value is the reward of logged steps the "
            "target would also choose, not an online return"
        ),
        "logged_value": float(decisions.reward.sum() / sessions.n_sessions),
        "kl_per_step": float(np.mean(kl)),
        "ess": effective_sample_size(sessions),
        "default_estimator": DEFAULT_ESTIMATOR,
        "estimates": {k: e.to_dict() for k, e in estimates.items()},
        "bootstrap": bootstrap_summary(estimates),
    }


def replay_metrics(
    dataset: PreparedDataset,
    scores: ItemProbabilities,
    split: str = "test",
    history_length: int = 20,
    k: int = 10,
) -> dict[str, Any]:
    """HR@K, NDCG@K (and MRR) of a policy's ranking of the actual next item.

    Args:
        dataset: The PreparedDataset.
        scores: obs -> (B, n_items) the policy's scores or probabilities over all items
            (higher first); items it cannot recommend should score lowest.
        split: Held-out split whose sessions are replayed.
        history_length: Steps of history shown to the policy.
        k: Cut-off.

    Returns:
        ``{"split", "decisions", "sessions", "k", "hr@K", "ndcg@K", "mrr"}``.
    """
    if k < 1:
        raise UserError(f"--k: expected >= 1, got {k}")
    decisions = session_decisions(dataset, split, history_length)
    ranks = np.empty(decisions.n_decisions)
    for sl in _chunks(decisions.n_decisions, dataset.n_items):
        s = np.array(scores(decisions.observations(sl)), dtype=np.float64)  # writable copy
        ranks[sl] = target_ranks(s, decisions.item[sl])
    return {
        "split": split,
        "decisions": decisions.n_decisions,
        "sessions": decisions.n_sessions,
        "k": k,
        **item_ranking_metrics(ranks, k),
    }
