r"""Stochastic policies over the catalog for logging and target policies in sequential OPE.

Policies are anything with ``action_probabilities(obs) -> (B, A)`` (and ``predict`` for the
rollout); :class:`SoftenedPolicy` turns any scoring or deterministic policy into a stochastic
one, ``(1 - epsilon) softmax(scores / temperature) + epsilon uniform``, which is how
epsilon-greedy logging policies and softmax targets are written here. This module never
imports ``rlrec.agents``: the CLI builds the base policies.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from scipy import special

from rlrec.errors import UserError

__all__ = [
    "CachedScores",
    "ProbabilisticPolicy",
    "ScorePolicy",
    "SoftenedPolicy",
    "kl_divergence",
    "sample_actions",
]


class ProbabilisticPolicy(Protocol):
    """Anything with batched action probabilities over the catalog."""

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) probabilities, rows summing to 1."""
        ...


class SoftenedPolicy:
    """A stochastic policy: ``(1 - epsilon) softmax(scores / temperature) + epsilon / A``.

    Scores are the base policy's ``catalog_scores(obs)`` when it has them (the encoder's
    logits), else the log of its ``action_probabilities`` (a one-hot deterministic policy then
    stays one-hot for any temperature, and ``epsilon`` makes it epsilon-greedy). With
    temperature 1 the probabilities of a probability-only base are used as they are
    (``softmax(log p) = p``), and a context-free base (:class:`ScorePolicy`) is computed once:
    a (B, A) exponential per step is most of the logging cost.

    Args:
        base: The policy to soften.
        name: Name used in reports (e.g. its spec).
        temperature: Softmax temperature (> 0); lower is greedier.
        epsilon: Weight of the uniform mixture in [0, 1].
        seed: Seed of :meth:`predict`'s sampling.
    """

    uses_hidden_state = False

    def __init__(
        self,
        base: Any,
        name: str,
        temperature: float = 1.0,
        epsilon: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not temperature > 0:
            raise UserError(f"{name}: temperature must be > 0, got {temperature}")
        if not 0.0 <= epsilon <= 1.0:
            raise UserError(f"{name}: epsilon must lie in [0, 1], got {epsilon}")
        if not (hasattr(base, "catalog_scores") or hasattr(base, "action_probabilities")):
            raise UserError(f"{name}: the base policy has neither catalog_scores nor probabilities")
        self.base = base
        self.name = name
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.rng = np.random.default_rng(seed)
        self._fixed: np.ndarray | None = None
        scores = getattr(base, "scores", None)
        if isinstance(base, ScorePolicy) and scores is not None:
            self._fixed = self._soften(np.asarray(scores, dtype=np.float64)[None, :], True)[0]

    def _soften(self, values: np.ndarray, are_logits: bool) -> np.ndarray:
        if are_logits:
            p = special.softmax(values / self.temperature, axis=1)
        elif self.temperature == 1.0:
            p = values / values.sum(axis=1, keepdims=True)
        else:
            with np.errstate(divide="ignore"):
                p = special.softmax(np.log(values) / self.temperature, axis=1)
        if self.epsilon > 0:
            p = (1.0 - self.epsilon) * p + self.epsilon / p.shape[1]
        return p

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) float64 probabilities."""
        if self._fixed is not None:
            b = np.asarray(obs["item_history"]).shape[0]
            return np.broadcast_to(self._fixed, (b, len(self._fixed)))
        if hasattr(self.base, "catalog_scores"):
            return self._soften(np.asarray(self.base.catalog_scores(obs), dtype=np.float64), True)
        probs = np.asarray(self.base.action_probabilities(obs), dtype=np.float64)
        return self._soften(probs, False)

    def predict(
        self,
        obs: dict[str, Any],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """(B,) sampled actions (the mode when ``deterministic``)."""
        p = self.action_probabilities(obs)
        if deterministic:
            return np.argmax(p, axis=1), state
        return sample_actions(p, self.rng), state


class ScorePolicy:
    """A context-free policy given by fixed catalog scores (e.g. log popularity).

    Args:
        scores: (A,) scores; wrap it in :class:`SoftenedPolicy` to get a softmax.
        name: Name used in reports.
    """

    uses_hidden_state = False

    def __init__(self, scores: np.ndarray, name: str) -> None:
        self.scores = np.asarray(scores, dtype=np.float64)
        self.name = name

    def catalog_scores(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) the same scores for every observation."""
        b = np.asarray(obs["item_history"]).shape[0]
        return np.broadcast_to(self.scores, (b, len(self.scores))).copy()


class CachedScores:
    """Wraps a scoring policy so that several softened copies share one forward pass.

    The last observation's scores are kept while the same ``item_history`` array object is
    passed again (:func:`log_sessions` hands every target the same arrays within a step);
    holding a reference to that array makes the identity test safe.

    Args:
        base: A policy with ``catalog_scores(obs) -> (B, A)``.
    """

    uses_hidden_state = False

    def __init__(self, base: Any) -> None:
        self.base = base
        self.name = getattr(base, "name", "cached")
        self._key: np.ndarray | None = None
        self._scores: np.ndarray | None = None

    def catalog_scores(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) the base's scores, computed once per observation batch."""
        key = obs["item_history"]
        if self._key is not key or self._scores is None:
            self._scores = np.asarray(self.base.catalog_scores(obs), dtype=np.float64)
            self._key = key
        return self._scores


def sample_actions(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B,) one draw from each row of (B, A) probabilities (inverse CDF)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    return np.minimum((cdf < u[:, None]).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


def kl_divergence(target: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
    r"""(B,) :math:`KL(\pi_e \| \pi_b)` in nats per row; inf where the behaviour lacks support."""
    return special.rel_entr(target, behaviour).sum(axis=1)
