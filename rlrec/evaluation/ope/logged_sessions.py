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
from rlrec.evaluation.ope.q_features import CatalogFeatures, category_switch_matrix
from rlrec.evaluation.ope.sequential import (
    DEFAULT_ESTIMATOR,
    effective_sample_size,
    prepare_sessions,
)
from rlrec.evaluation.ope.session_verdict import session_estimates
from rlrec.evaluation.ope.stochastic_policies import kl_divergence
from rlrec.evaluation.ranking import item_ranking_metrics, target_ranks

__all__ = [
    "BEHAVIOUR_METHOD",
    "CATEGORY_REWARD_PRIOR_STEPS",
    "EVENT_REWARD",
    "Q_FEATURES_UNAVAILABLE",
    "Q_FEATURES_USED",
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
        dwell_seconds: (T,) float64 time between the history's last two steps (the dwell on
            the previous item), NaN at a session's first decision (one previous step).
    """

    item_history: np.ndarray
    category_history: np.ndarray
    step: np.ndarray
    item: np.ndarray
    reward: np.ndarray
    dwell_seconds: np.ndarray

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

    def feature_observations(self, rows: slice | np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`observations` plus ``dwell_seconds``, for the Q features (not policies)."""
        return {**self.observations(rows), "dwell_seconds": self.dwell_seconds[rows]}


def _step_arrays(sessions: SessionArrays) -> tuple[np.ndarray, ...]:
    """(offsets, items, categories, rewards, timestamps) of steps: runs of one item collapsed.

    A step's timestamp (ms) is that of its first event.
    """
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
        sessions.timestamps.astype(np.int64)[keep],
    )


def session_decisions(dataset: PreparedDataset, split: str, history_length: int) -> Decisions:
    """The decisions of ``split`` with ``history_length``-step histories.

    Raises:
        UserError: If the split has no session with two or more steps.
    """
    require_items(dataset, "ope sessions")
    offsets, items, cats, rewards, stamps = _step_arrays(dataset.sessions(split))
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
    # The dwell on the previous item: its step's time to the next step's (both in the history).
    has_gap = position[rows] >= 2
    dwell = np.full(len(rows), np.nan)
    dwell[has_gap] = (stamps[rows[has_gap] - 1] - stamps[rows[has_gap] - 2]) / 1000.0
    return Decisions(
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        item_history=np.where(valid, items[safe] + 1, 0),
        category_history=np.where(valid, cats[safe] + 1, 0),
        step=position[rows][:, None].astype(np.int64),
        item=items[rows],
        reward=rewards[rows],
        dwell_seconds=dwell,
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
    offsets, items, cats, _, _ = _step_arrays(dataset.sessions("train"))
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


Q_FEATURES_USED: dict[str, str] = {
    "session_step": "used (steps so far)",
    "streak": "used (length of the last category's run in the history)",
    "switch_likelihood": (
        "used (P(category | previous category, changed), counted on the train split's steps)"
    ),
    "dwell_time": "used (time between the history's last two steps, from the timestamps)",
    "popularity": "used (logged counts)",
    "category_reward": (
        "used (mean step reward of the item's category on the train split: its cart and buy "
        "rates per engagement)"
    ),
}
"""What the Q-model of ``rlrec ope sessions --data`` reads from the logs."""

CATEGORY_REWARD_PRIOR_STEPS = 20.0
"""Pseudo-steps at the overall mean reward added to each category's logged steps."""

Q_FEATURES_UNAVAILABLE: dict[str, str] = {
    "consecutive_misses": (
        "unavailable: the log has no impressions or recommendations, only engaged items, so a "
        "missed recommendation leaves no event (the simulator's Q-model counts them)"
    ),
}
"""What the simulator's Q-model reads that real logs cannot show, and why."""


def item_features(dataset: PreparedDataset) -> CatalogFeatures:
    """:class:`CatalogFeatures` over all dataset items for real logs (see :data:`Q_FEATURES_USED`).

    Popularity is the logged counts, the switch likelihood comes from the train split's
    category changes (:func:`~rlrec.evaluation.ope.q_features.category_switch_matrix`), the
    reward per engagement is the item's category's mean step reward on the train split
    (shrunk by :data:`CATEGORY_REWARD_PRIOR_STEPS`) and the state basis adds the dwell levels.
    """
    counts = dataset.items["count"].to_numpy(np.float64)
    offsets, _, cats, rewards, _ = _step_arrays(dataset.sessions("train"))
    n_category_tokens = dataset.n_categories + 1
    # Every logged step is engaged, so a category's mean step reward on the train split is
    # its reward per engagement (its cart and buy rates); a category with few steps is
    # shrunk towards the overall mean by PRIOR_STEPS pseudo-steps.
    item_category = dataset.item_category.astype(np.int64)
    n_cat = max(int(item_category.max()) + 1, int(cats.max()) + 1 if len(cats) else 0)
    steps = np.bincount(cats, minlength=n_cat).astype(np.float64)
    total = np.bincount(cats, weights=rewards, minlength=n_cat)
    overall = float(rewards.mean()) if len(rewards) else 1.0
    category_reward = (total + CATEGORY_REWARD_PRIOR_STEPS * overall) / (
        steps + CATEGORY_REWARD_PRIOR_STEPS
    )
    return CatalogFeatures(
        action_item_token=np.arange(dataset.n_items) + 1,
        action_category_token=dataset.item_category.astype(np.int64) + 1,
        action_log_popularity=np.log(np.maximum(counts, 1.0)),
        n_item_tokens=dataset.n_items + 1,
        n_category_tokens=n_category_tokens,
        category_transition=category_switch_matrix(offsets, cats + 1, n_category_tokens),
        dwell_levels=True,
        action_reward=category_reward[item_category],
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
        "logged_value", "kl_per_step", "ess", "default_estimator", "estimates", "bootstrap",
        "q_features", "fqe_ratio_power", "lower_bound", "difference_ci95", "verdict",
        "extrapolating", "measured_coverage"}``; ``q_features`` says what the Q-model reads
        and what the logs cannot show (see :data:`Q_FEATURES_UNAVAILABLE`),
        ``fqe_ratio_power`` how its regressions weigh the steps
        (:attr:`~rlrec.evaluation.ope.fqe.FQEConfig.ratio_power`), the rest is
        :func:`~rlrec.evaluation.ope.session_verdict.session_estimates`'s.
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
        expected[sl] = feat.expected(decisions.feature_observations(sl), probs)
    features = feat.features(decisions.feature_observations(slice(None)), decisions.item)
    config = fqe or FQEConfig(seed=seed)
    result = fitted_q_evaluation(
        decisions.offsets, decisions.reward, features, expected, config=config, step_ratio=pe / pb
    )
    sessions = prepare_sessions(
        session_offsets=decisions.offsets,
        reward=decisions.reward,
        behaviour_prob=pb,
        target_prob=pe,
        q_factual=result.q_factual,
        v_target=result.v_target,
    )
    kl_per_step = float(np.mean(kl))
    estimates, verdict_entry = session_estimates(
        sessions,
        features,
        expected,
        config,
        result,
        n_bootstrap=n_bootstrap,
        seed=seed,
        kl_per_step=kl_per_step,
    )
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
        "kl_per_step": kl_per_step,
        "ess": effective_sample_size(sessions),
        "default_estimator": DEFAULT_ESTIMATOR,
        "estimates": {k: e.to_dict() for k, e in estimates.items()},
        "bootstrap": bootstrap_summary(estimates),
        "q_features": {"used": dict(Q_FEATURES_USED), "unavailable": dict(Q_FEATURES_UNAVAILABLE)},
        "fqe_ratio_power": config.ratio_power,
        **verdict_entry,
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
