"""Baseline recommenders under the policy protocol of ``DESIGN.md``.

Every baseline has ``predict(obs, state=None, episode_start=None, deterministic=False) ->
(actions, state)`` and ``action_probabilities(obs) -> (B, A)`` on the simulator's batched
observations (``item_history``, ``category_history`` (B, L) tokens, most recent last), so the
rollout evaluation and OPE treat them like the trained agent:

* :class:`RandomPolicy`: uniform over the catalog;
* :class:`PopularPolicy`: the most popular catalog item (catalog action 0: the SimModel's
  catalog is ordered by train popularity);
* :class:`CategoryMarkovPolicy`: the most popular item of the most likely next category under
  the fitted first-order category chain (the streak-averaged migration matrix);
* :class:`GreedySupervisedPolicy`: the top catalog item of the encoder's next-item scores, the
  myopic "predict the next click" recommender that the agent has to beat;
* :class:`OracleMyopicPolicy`: maximises the immediate expected reward knowing the user's hidden
  interest, a reference rather than a competitor. Hidden state reaches it the documented
  way: the rollout adds the (B, K) interest rows to the observation dict under
  :data:`~rlrec.evaluation.rollout.HIDDEN_INTEREST_KEY` for every policy whose
  ``uses_hidden_state`` is True.

Deterministic baselines return one-hot ``action_probabilities``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlrec.envs.config import RewardWeights
from rlrec.evaluation.rollout import HIDDEN_INTEREST_KEY
from rlrec.models.encoder import SequenceEncoder
from rlrec.models.sim_model import SimModel, saturate

__all__ = [
    "CategoryMarkovPolicy",
    "GreedySupervisedPolicy",
    "OracleMyopicPolicy",
    "PopularPolicy",
    "RandomPolicy",
    "engage_probability_matrix",
    "expected_reward_if_engaged",
    "make_baselines",
]


def _one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    out = np.zeros((len(actions), n_actions))
    out[np.arange(len(actions)), actions] = 1.0
    return out


def _batch_size(obs: dict[str, Any]) -> int:
    return len(np.asarray(obs["item_history"]).reshape(-1, np.shape(obs["item_history"])[-1]))


class RandomPolicy:
    """Uniformly random catalog items.

    Args:
        n_actions: A, the catalog size.
        seed: Seed of the policy's own generator.
    """

    name = "random"
    uses_hidden_state = False

    def __init__(self, n_actions: int, seed: int | None = 0) -> None:
        self.n_actions = n_actions
        self.rng = np.random.default_rng(seed)

    def predict(
        self,
        obs: dict[str, Any],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """(B,) uniform draws (``deterministic`` has no mode to take: still uniform)."""
        return self.rng.integers(self.n_actions, size=_batch_size(obs)), state

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) uniform rows."""
        return np.full((_batch_size(obs), self.n_actions), 1.0 / self.n_actions)


class _DeterministicPolicy:
    """A policy whose action is a function of the observation (one-hot probabilities)."""

    name = "deterministic"
    uses_hidden_state = False
    n_actions: int

    def choose(self, obs: dict[str, Any]) -> np.ndarray:
        """(B,) int64 actions."""
        raise NotImplementedError

    def predict(
        self,
        obs: dict[str, Any],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """(B,) the policy's action for each observation."""
        return self.choose(obs), state

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) one-hot rows at the chosen actions."""
        return _one_hot(self.choose(obs), self.n_actions)


class PopularPolicy(_DeterministicPolicy):
    """Always the most popular catalog item.

    Args:
        n_actions: A; catalog actions are ordered by popularity, so action 0 is the top item.
    """

    name = "popular"

    def __init__(self, n_actions: int) -> None:
        self.n_actions = n_actions

    def choose(self, obs: dict[str, Any]) -> np.ndarray:
        """(B,) zeros: the top catalog item."""
        return np.zeros(_batch_size(obs), dtype=np.int64)


class CategoryMarkovPolicy(_DeterministicPolicy):
    """The most popular item of the most likely next category given the last category.

    Args:
        transition: (K, K) row-stochastic category transition matrix (sim categories).
        item_category: (A,) sim category of each catalog action.
        item_popularity: (A,) popularity of each catalog action within its category.
        category_of_token: (C + 1,) sim category of each dataset category token (token 0,
            padding, maps anywhere: the last history step is never padding).
    """

    name = "category_markov"

    def __init__(
        self,
        transition: np.ndarray,
        item_category: np.ndarray,
        item_popularity: np.ndarray,
        category_of_token: np.ndarray,
    ) -> None:
        k = transition.shape[0]
        item_category = np.asarray(item_category, dtype=np.int64)
        self.n_actions = len(item_category)
        # Top catalog item of each category (-1 when the category has none in the catalog).
        top_item = np.full(k, -1, dtype=np.int64)
        order = np.lexsort((np.arange(self.n_actions), -np.asarray(item_popularity)))
        for action in order[::-1]:  # least popular first, so the most popular writes last
            top_item[item_category[action]] = action
        has_item = top_item >= 0
        # Most likely next category that has a catalog item, for every current category.
        scores = np.where(has_item[None, :], np.asarray(transition, dtype=np.float64), -np.inf)
        self.next_category = np.argmax(scores, axis=1)  # (K,)
        self.choice = top_item[self.next_category]  # (K,) action per current category
        self.category_of_token = np.asarray(category_of_token, dtype=np.int64)

    @classmethod
    def from_sim_model(cls, model: SimModel, n_actions: int) -> CategoryMarkovPolicy:
        """Built from a SimModel's migration matrix (weighted by its fitted streak mix)."""
        weights = model.info.get("streak_weights")
        w = None
        if weights is not None and len(weights) == len(model.stay_by_streak):
            w = np.asarray(weights, dtype=np.float64)
            w = w if w.sum() > 0 else None
        token_map = np.append(0, model.category_of_dataset_category).astype(np.int64)
        return cls(
            model.migration_matrix(w),
            model.item_category[:n_actions],
            model.item_popularity[:n_actions],
            token_map,
        )

    def choose(self, obs: dict[str, Any]) -> np.ndarray:
        """(B,) the top item of the most likely next category."""
        last = np.asarray(obs["category_history"])[..., -1].reshape(-1)
        return self.choice[self.category_of_token[last]]


class GreedySupervisedPolicy(_DeterministicPolicy):
    """The catalog item the supervised encoder ranks first as the next item.

    Args:
        encoder: The trained sequence encoder.
        item_ids: (A,) dataset item index of each catalog action.
        batch_size: Histories per forward pass.
    """

    name = "greedy_supervised"

    def __init__(
        self, encoder: SequenceEncoder, item_ids: np.ndarray, batch_size: int = 4096
    ) -> None:
        self.encoder = encoder.eval()
        self.item_ids = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
        self.n_actions = len(item_ids)
        self.batch_size = batch_size
        # The next-item head restricted to the catalog (the encoder is not trained here):
        # scoring A catalog items instead of the whole vocabulary, then gathering.
        with torch.no_grad():
            device = next(encoder.parameters()).device
            ids = self.item_ids.to(device)
            self._vectors = encoder.item_output_vectors()[ids]  # (A, d)
            self._bias = encoder.item_bias[ids]  # (A,)

    @torch.no_grad()
    def catalog_scores(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) the encoder's next-item logits at the catalog items."""
        device = next(self.encoder.parameters()).device
        items = torch.as_tensor(np.asarray(obs["item_history"]), dtype=torch.long)
        cats = torch.as_tensor(np.asarray(obs["category_history"]), dtype=torch.long)
        out = []
        for lo in range(0, len(items), self.batch_size):
            state = self.encoder.encode(
                items[lo : lo + self.batch_size].to(device),
                cats[lo : lo + self.batch_size].to(device),
            )  # (b, d)
            out.append((state @ self._vectors.T + self._bias).cpu())  # (b, A)
        return torch.cat(out).numpy() if out else np.zeros((0, self.n_actions))

    def choose(self, obs: dict[str, Any]) -> np.ndarray:
        """(B,) argmax of the encoder's next-item scores over the catalog."""
        return np.argmax(self.catalog_scores(obs), axis=1).astype(np.int64)


def expected_reward_if_engaged(model: SimModel, weights: RewardWeights) -> np.ndarray:
    """(N,) expected reward of each catalog item given that it is engaged with.

    The env's funnel: carted with ``max(p_cart, p_buy)``, bought with ``p_buy`` (a buy only
    after a cart), the outcome being the strongest event.
    """
    k = np.asarray(model.item_category, dtype=np.int64)
    p_buy = np.asarray(model.p_buy, dtype=np.float64)[k]
    p_cart = np.maximum(np.asarray(model.p_cart, dtype=np.float64)[k], p_buy)
    return weights.engage * (1 - p_cart) + weights.cart * (p_cart - p_buy) + weights.buy * p_buy


def engage_probability_matrix(model: SimModel, interest: np.ndarray, n_actions: int) -> np.ndarray:
    """(B, A) P(engage) of every catalog action for every user.

    The same formula as :func:`rlrec.models.sim_model.engage_probability` (a test checks
    it), evaluated for all actions at once without repeating the (B, K) interest rows A times.

    Args:
        model: The SimModel.
        interest: (B, K) interest distributions.
        n_actions: A (the first A catalog items).
    """
    k = np.asarray(model.item_category[:n_actions], dtype=np.int64)
    n_in_cat = np.bincount(model.item_category, minlength=model.n_categories)[k]
    rel_pop = np.maximum(n_in_cat * model.item_popularity[:n_actions], 1e-12)
    item_factor = model.engage_base_rate * np.power(rel_pop, model.engage_popularity_exponent)
    rel_interest = model.n_categories * np.asarray(interest, dtype=np.float64)[:, k]  # (B, A)
    z = item_factor[None, :] * np.power(rel_interest, model.engage_interest_exponent)
    return saturate(z, model.engage_ceiling)


class OracleMyopicPolicy(_DeterministicPolicy):
    """Maximise the immediate expected reward, knowing the users' hidden interest.

    Reads the (B, K) interest rows from ``obs[HIDDEN_INTEREST_KEY]``, which the rollout adds
    because :attr:`uses_hidden_state` is True.

    Args:
        model: The SimModel the env runs.
        n_actions: A.
        weights: The env's reward weights.
    """

    name = "oracle_myopic"
    uses_hidden_state = True

    def __init__(self, model: SimModel, n_actions: int, weights: RewardWeights) -> None:
        self.model = model
        self.n_actions = n_actions
        self.value = expected_reward_if_engaged(model, weights)[:n_actions]  # (A,)

    def choose(self, obs: dict[str, Any]) -> np.ndarray:
        """(B,) argmax over actions of P(engage) * E[reward | engaged].

        Raises:
            KeyError: If the observation lacks the hidden interest (evaluate the oracle with
                :func:`rlrec.evaluation.rollout.rollout`).
        """
        if HIDDEN_INTEREST_KEY not in obs:
            raise KeyError(
                f"{self.name} needs obs[{HIDDEN_INTEREST_KEY!r}], the users' hidden interest; "
                "evaluate it with rlrec.evaluation.rollout, which adds it"
            )
        p = engage_probability_matrix(self.model, obs[HIDDEN_INTEREST_KEY], self.n_actions)
        return np.argmax(p * self.value[None, :], axis=1).astype(np.int64)


def make_baselines(
    model: SimModel,
    n_actions: int,
    weights: RewardWeights,
    encoder: SequenceEncoder | None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every baseline for one env, by name (greedy_supervised only when an encoder is given).

    Args:
        model: The env's SimModel.
        n_actions: A, the env's action count.
        weights: The env's reward weights.
        encoder: The supervised encoder for the greedy baseline.
        seed: Seed of the random baseline.
    """
    policies: dict[str, Any] = {}
    if encoder is not None:
        policies["greedy_supervised"] = GreedySupervisedPolicy(encoder, model.item_ids[:n_actions])
    policies["random"] = RandomPolicy(n_actions, seed)
    policies["popular"] = PopularPolicy(n_actions)
    policies["category_markov"] = CategoryMarkovPolicy.from_sim_model(model, n_actions)
    policies["oracle_myopic"] = OracleMyopicPolicy(model, n_actions, weights)
    return policies
