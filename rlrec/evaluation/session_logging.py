r"""Logged sessions with known propensities from the simulator, and their ground truth.

The built-in check of the sequential estimators (:mod:`rlrec.evaluation.sequential_ope`):

1. :func:`log_sessions` runs ``n_sessions`` simulated users, one session each, under a known
   stochastic **behaviour** policy, recording per step the logged action, its propensity, the
   reward, Q-function features of the logged (state, action) and, for every **target**
   policy, its probability of the logged action, its expected features and the per-step KL
   divergence :math:`KL(\pi_e(\cdot|s) \| \pi_b(\cdot|s))` at the logged states;
2. :func:`true_value` rolls each target out on-policy in the same env configuration: its mean
   session return is the truth the estimates are compared with.

Policies are anything with ``action_probabilities(obs) -> (B, A)`` (and ``predict`` for the
rollout); :class:`SoftenedPolicy` turns any scoring or deterministic policy into a stochastic
one, ``(1 - epsilon) softmax(scores / temperature) + epsilon uniform``, which is how
epsilon-greedy logging policies and softmax targets are written here. This module never
imports ``rlrec.agents``: the CLI builds the base policies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from scipy import special

from rlrec.envs.batched import BatchedInterestDrift
from rlrec.errors import UserError
from rlrec.evaluation.fqe import FQEConfig, fitted_q_evaluation, q_calibration
from rlrec.evaluation.ope import relative_error
from rlrec.evaluation.rollout import mean_ci95
from rlrec.evaluation.sequential_ope import (
    DEFAULT_ESTIMATOR,
    BlendedDR,
    effective_sample_size,
    estimate_session_value,
    prepare_sessions,
)


class ProbabilisticPolicy(Protocol):
    """Anything with batched action probabilities over the catalog."""

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) probabilities, rows summing to 1."""
        ...


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - np.max(logits, axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


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
            p = _softmax(values / self.temperature)
        elif self.temperature == 1.0:
            p = values / values.sum(axis=1, keepdims=True)
        else:
            with np.errstate(divide="ignore"):
                p = _softmax(np.log(values) / self.temperature)
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


class CatalogFeatures:
    r"""Hand features of (state, action) for linear fitted Q evaluation.

    :math:`\phi(s, a) = [\psi(s) \otimes \chi(s, a),\ \beta(a),\ m(s, a)\, \beta(a),\
    (1 - m(s, a))\, \sigma(s, a) \otimes \beta(a)]`: every level of a **state basis**
    :math:`\psi` gets its own response to an **action basis** :math:`\chi`, plus the
    action's popularity bin :math:`\beta(a)` (one-hot), that bin when the action's category
    is the last step's (:math:`m(s, a)`), and otherwise that bin crossed with the level
    :math:`\sigma(s, a)` (one-hot, :data:`SWITCH_EDGES`) of the switch probability to the
    action's category.

    The state basis holds what the user model's engagement and leave hazard depend on, all
    computable from the logged history (``docs/architecture.md#the-user-model``):

    * a constant;
    * the session step in buckets (:data:`STEP_EDGES`): the leave hazard is a curve in the
      step;
    * the streak of the last category in the history (levels 1 .. 5, 6+): the stay
      probability falls with it (interest saturation) and an engaged step that extends it
      past a few steps raises the leave hazard (boredom);
    * the consecutive missed recommendations so far, from the logged engaged / missed
      outcomes (levels 0, 1, 2, 3-4, 5-8, 9+, :data:`MISS_EDGES`): the leave hazard grows
      with every consecutive miss. Without outcomes (``misses=None``) it is 0.

    The action basis: a constant, whether the action's category is the last step's, its
    standardised log popularity (engagement is multiplicative in popularity), their product,
    the share of the last ``recent`` steps in its category, the share times popularity,
    whether its item is already in the history, and the switch probability from the last
    step's category to the action's (``category_transition``, estimated from logged
    sessions; a user who leaves a category engages with the categories that usually follow
    it, so this separates a likely next category from a random one) and its product with
    popularity. Engagement is multiplicative in the interest in the action's category and
    in its popularity, so outside the last category the pair (switch-probability level,
    popularity bin) also gets its own one-hot cell: a step function of both, where sums of
    linear terms would misjudge the many unlikely, unpopular items a broad policy picks.

    A product basis rather than a sum because the value of an action is multiplicative in
    the state: a likely miss costs more after five misses (hazard x factor per miss) than
    after none, and staying in the category is worth less at a long streak.
    :meth:`expected` gives the expectation under a policy's (B, A) probabilities without
    scoring every action: :math:`\psi(s) \otimes E_\pi[\chi(s, a)]`.

    Args:
        action_item_token: (A,) item token (dataset index + 1) of each action.
        action_category_token: (A,) category token of each action.
        action_log_popularity: (A,) log popularity of each action (any scale).
        n_item_tokens: Size of the item token space (for the history lookup).
        n_category_tokens: Size of the category token space.
        recent: How many recent steps the category share looks at.
        n_popularity_bins: Quantile bins of popularity.
        category_transition: (n_category_tokens, n_category_tokens) P(next category token |
            previous one, the category changed), e.g. :func:`category_switch_matrix` of
            logged sessions; None: uniform (the feature is then constant).
    """

    STEP_EDGES = (1, 2, 3, 4, 6, 8, 12, 16)
    """Upper bounds of the session-step buckets (the last bucket is open)."""

    STREAK_LEVELS = 6
    """Streak levels 1 .. 5 and 6+."""

    MISS_EDGES = (0, 1, 2, 4, 8)
    """Upper bounds of the consecutive-miss levels 0, 1, 2, 3-4, 5-8 (9+ is open)."""

    N_ACTION_BASIS = 9
    SWITCH_EDGES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    """Level edges of the scaled switch probability (1 = a category drawn at random)."""
    """Size of the action basis (see the class docstring)."""

    def __init__(
        self,
        action_item_token: np.ndarray,
        action_category_token: np.ndarray,
        action_log_popularity: np.ndarray,
        n_item_tokens: int,
        n_category_tokens: int,
        recent: int = 5,
        n_popularity_bins: int = 6,
        category_transition: np.ndarray | None = None,
    ) -> None:
        self.n_actions = len(action_item_token)
        self.category = np.asarray(action_category_token, dtype=np.int64)
        lp = np.asarray(action_log_popularity, dtype=np.float64)
        self.log_pop = (lp - lp.mean()) / max(float(lp.std()), 1e-12)  # standardised (A,)
        self.recent = recent
        # (A, C) one-hot of each action's category: policy probabilities @ this = mass per
        # category.
        self.category_onehot = sp.csr_matrix(
            (np.ones(self.n_actions), (np.arange(self.n_actions), self.category)),
            shape=(self.n_actions, n_category_tokens),
        )
        self.action_of_item_token = np.full(n_item_tokens + 1, -1, dtype=np.int64)
        self.action_of_item_token[np.asarray(action_item_token, dtype=np.int64)] = np.arange(
            self.n_actions
        )
        edges = np.quantile(self.log_pop, np.linspace(0, 1, n_popularity_bins + 1)[1:-1])
        self.pop_bin = np.searchsorted(edges, self.log_pop, side="right")  # (A,) in [0, nb)
        self.n_bins = n_popularity_bins
        self.bin_onehot = np.eye(n_popularity_bins)[self.pop_bin]  # (A, nb)
        # (A, C * nb) one-hot of (category, bin): mass per category and popularity bin.
        self.n_category_tokens = n_category_tokens
        self.category_bin_onehot = sp.csr_matrix(
            (
                np.ones(self.n_actions),
                (np.arange(self.n_actions), self.category * n_popularity_bins + self.pop_bin),
            ),
            shape=(self.n_actions, n_category_tokens * n_popularity_bins),
        )
        if category_transition is None:
            category_transition = np.full((n_category_tokens, n_category_tokens), 1.0)
        transition = np.asarray(category_transition, dtype=np.float64)
        if transition.shape != (n_category_tokens, n_category_tokens):
            raise UserError(
                f"category_transition: expected shape ({n_category_tokens}, "
                f"{n_category_tokens}), got {transition.shape}"
            )
        # Scaled so that a uniform row is 1: the feature reads as "times more likely than a
        # category drawn at random".
        n_used = max(int(np.unique(self.category).size), 1)
        self.transition = transition / np.maximum(transition.sum(axis=1, keepdims=True), 1e-12)
        self.transition *= n_used
        # State basis: constant + the non-first levels of step, streak and misses.
        self.n_state_basis = (
            1 + len(self.STEP_EDGES) + (self.STREAK_LEVELS - 1) + len(self.MISS_EDGES)
        )
        # Switch-probability level of every (previous category, next category) pair; the
        # same category has its own features (same_last), so its row entry is unused.
        self.switch_level = np.searchsorted(
            np.asarray(self.SWITCH_EDGES), self.transition, side="right"
        )  # (C, C) in [0, n_switch_levels)
        self.n_switch_levels = len(self.SWITCH_EDGES) + 1
        self.n_features = (
            self.n_state_basis * self.N_ACTION_BASIS
            + 2 * n_popularity_bins
            + self.n_switch_levels * n_popularity_bins
        )

    def _history(self, obs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cats = np.asarray(obs["category_history"], dtype=np.int64)  # (B, L)
        items = np.asarray(obs["item_history"], dtype=np.int64)  # (B, L)
        return cats, items, cats[:, -1]

    def state_basis(self, obs: dict[str, Any], misses: np.ndarray | None = None) -> np.ndarray:
        """(B, n_state_basis) the state basis of the observed states (see the class docstring).

        Args:
            obs: Env-style observations (``item_history``, ``category_history``, ``step``).
            misses: (B,) consecutive missed recommendations before each state, or None (0).
        """
        cats = np.asarray(obs["category_history"], dtype=np.int64)  # (B, L)
        b = cats.shape[0]
        step = np.asarray(obs["step"], dtype=np.int64).reshape(-1)  # (B,)
        last = cats[:, -1]
        same = cats == last[:, None]
        # Streak: length of the final run of the last category (padding never matches).
        streak = np.argmin(same[:, ::-1], axis=1)
        streak = np.where(same.all(axis=1), cats.shape[1], streak)
        step_level = np.searchsorted(np.asarray(self.STEP_EDGES), step, side="left")
        streak_level = np.clip(streak, 1, self.STREAK_LEVELS) - 1
        m = np.zeros(b, dtype=np.int64) if misses is None else np.asarray(misses, np.int64)
        if m.shape != (b,):
            raise UserError(f"misses: expected shape ({b},), got {m.shape}")
        miss_level = np.searchsorted(np.asarray(self.MISS_EDGES), m, side="left")
        n_step = len(self.STEP_EDGES) + 1
        onehots = [
            np.eye(n_step)[step_level][:, 1:],
            np.eye(self.STREAK_LEVELS)[streak_level][:, 1:],
            np.eye(len(self.MISS_EDGES) + 1)[miss_level][:, 1:],
        ]
        return np.column_stack([np.ones(b), *onehots])

    def _combine(
        self,
        psi: np.ndarray,
        chi: np.ndarray,
        bins: np.ndarray,
        same_x_bins: np.ndarray,
        switch_x_bins: np.ndarray,
    ) -> np.ndarray:
        b = psi.shape[0]
        product = (psi[:, :, None] * chi[:, None, :]).reshape(b, -1)  # (B, p * q)
        return np.hstack([product, bins, same_x_bins, switch_x_bins])

    def features(
        self, obs: dict[str, Any], actions: np.ndarray, misses: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, d) features of the observed states with the given (B,) actions.

        Args:
            obs: Env-style observations.
            actions: (B,) catalog actions.
            misses: (B,) consecutive missed recommendations before each state, or None.
        """
        cats, items, last = self._history(obs)
        a = np.asarray(actions, dtype=np.int64)
        cat_a = self.category[a]
        same_last = (cat_a == last).astype(np.float64)
        recent_share = (cats[:, -self.recent :] == cat_a[:, None]).mean(axis=1)
        seen = (self.action_of_item_token[items] == a[:, None]).any(axis=1).astype(np.float64)
        lp = self.log_pop[a]
        bins = self.bin_onehot[a]  # (B, nb)
        switch = self.transition[last, cat_a]
        chi = np.column_stack(
            [
                np.ones(len(a)),
                same_last,
                lp,
                same_last * lp,
                recent_share,
                recent_share * lp,
                seen,
                switch,
                switch * lp,
            ]
        )
        # (switch level, popularity bin) one-hot of an action outside the last category.
        cell = self.switch_level[last, cat_a] * self.n_bins + self.pop_bin[a]  # (B,)
        switch_x_bins = (
            np.eye(self.n_switch_levels * self.n_bins)[cell] * (1.0 - same_last)[:, None]
        )
        return self._combine(
            self.state_basis(obs, misses), chi, bins, same_last[:, None] * bins, switch_x_bins
        )

    def expected(
        self, obs: dict[str, Any], probs: np.ndarray, misses: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, d) expected features of the observed states under (B, A) action probabilities.

        Args:
            obs: Env-style observations.
            probs: (B, A) a policy's action probabilities at these states.
            misses: (B,) consecutive missed recommendations before each state, or None.
        """
        cats, items, last = self._history(obs)
        b = len(last)
        rows = np.arange(b)
        p = np.asarray(probs, dtype=np.float64)
        mass = np.asarray((self.category_onehot.T @ p.T).T)  # (B, C) mass per category
        mass_pop = np.asarray((self.category_onehot.T @ (p * self.log_pop).T).T)  # (B, C)
        recent_cats = cats[:, -self.recent :]  # (B, r)
        same_last = mass[rows, last]
        recent_share = mass[rows[:, None], recent_cats].mean(axis=1)
        same_x_pop = mass_pop[rows, last]
        recent_x_pop = mass_pop[rows[:, None], recent_cats].mean(axis=1)
        # Probability of recommending an item already in the history: each distinct one once.
        hist_actions = self.action_of_item_token[items]  # (B, L), -1 = not an action
        ordered = np.sort(hist_actions, axis=1)
        first = np.ones_like(ordered, dtype=bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        valid = first & (ordered >= 0)
        seen = (p[rows[:, None], np.maximum(ordered, 0)] * valid).sum(axis=1)
        lp = p @ self.log_pop
        bins = p @ self.bin_onehot  # (B, nb)
        by_cat_bin = np.asarray((self.category_bin_onehot.T @ p.T).T).reshape(
            b, self.n_category_tokens, self.n_bins
        )  # (B, C, nb)
        switch_rows = self.transition[last]  # (B, C)
        chi = np.column_stack(
            [
                p.sum(axis=1),
                same_last,
                lp,
                same_x_pop,
                recent_share,
                recent_x_pop,
                seen,
                (mass * switch_rows).sum(axis=1),
                (mass_pop * switch_rows).sum(axis=1),
            ]
        )
        # Mass per (switch level, popularity bin) over the categories other than the last.
        level_onehot = np.eye(self.n_switch_levels)[self.switch_level[last]]  # (B, C, ns)
        level_onehot[rows, last] = 0.0
        switch_x_bins = np.einsum("bcs,bcn->bsn", level_onehot, by_cat_bin).reshape(b, -1)
        return self._combine(
            self.state_basis(obs, misses), chi, bins, by_cat_bin[rows, last], switch_x_bins
        )


@dataclass
class TargetLog:
    """What was recorded for one target policy at the logged steps (session order).

    Attributes:
        prob: (n_steps,) target probability of the logged action.
        expected_features: (n_steps, d) expected Q features under the target.
        kl: (n_steps,) per-step KL divergence from the behaviour policy (nats).
    """

    prob: np.ndarray
    expected_features: np.ndarray
    kl: np.ndarray


@dataclass
class SimulatedLog:
    """Sessions logged in the simulator under a known behaviour policy (session order).

    Attributes:
        session_offsets: (S + 1,) int64 offsets.
        action: (n_steps,) logged catalog actions.
        reward: (n_steps,) rewards.
        behaviour_prob: (n_steps,) propensities of the logged actions.
        features: (n_steps, d) Q features of the logged (state, action).
        targets: Per target name, its :class:`TargetLog`.
        engaged: (n_steps,) bool logged outcome of each recommendation (engaged or missed),
            or None.
        behaviour_expected_features: (n_steps, d) expected Q features under the behaviour
            policy (for the Q-model's calibration on the behaviour's own returns), or None.
    """

    session_offsets: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    behaviour_prob: np.ndarray
    features: np.ndarray
    targets: dict[str, TargetLog] = field(default_factory=dict)
    engaged: np.ndarray | None = None
    behaviour_expected_features: np.ndarray | None = None

    @property
    def n_sessions(self) -> int:
        """Number of logged sessions."""
        return len(self.session_offsets) - 1

    @property
    def mean_return(self) -> float:
        """Mean logged session return (the behaviour policy's on-policy estimate)."""
        return float(self.reward.sum() / self.n_sessions)


def category_switch_matrix(
    session_offsets: np.ndarray,
    category_tokens: np.ndarray,
    n_category_tokens: int,
    smoothing: float = 0.5,
) -> np.ndarray:
    """(C, C) P(next category token | previous one, changed) from consecutive logged steps.

    Counts the category changes between consecutive steps inside sessions, adds
    ``smoothing`` to every off-diagonal cell and normalises the rows (the diagonal is 0).

    Args:
        session_offsets: (S + 1,) offsets of the sessions into ``category_tokens``.
        category_tokens: (E,) category token of each step, in session order.
        n_category_tokens: C.
        smoothing: Added to every off-diagonal count.
    """
    tokens = np.asarray(category_tokens, dtype=np.int64)
    offsets = np.asarray(session_offsets, dtype=np.int64)
    follows = np.ones(len(tokens), dtype=bool)  # step i follows step i - 1 in its session
    follows[offsets[:-1][offsets[:-1] < len(tokens)]] = False
    idx = np.flatnonzero(follows[1:]) + 1
    prev, nxt = tokens[idx - 1], tokens[idx]
    changed = prev != nxt
    counts = np.zeros((n_category_tokens, n_category_tokens))
    np.add.at(counts, (prev[changed], nxt[changed]), 1.0)
    counts += smoothing
    np.fill_diagonal(counts, 0.0)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)


def catalog_features(env: BatchedInterestDrift) -> CatalogFeatures:
    """:class:`CatalogFeatures` of an env's catalog (popularity from its SimModel).

    The category switch probabilities come from the logged sessions the env replays for warm
    starts (what a logging system has: past sessions), uniform without them.
    """
    dyn = env.dynamics
    a = dyn.n_actions
    model = env.model
    k = np.asarray(model.item_category, dtype=np.int64)
    n_in_category = np.bincount(k, minlength=model.n_categories)[k]
    log_pop = np.log(np.maximum(n_in_category * model.item_popularity, 1e-12))[:a]
    warm = dyn.warm
    transition = None
    if warm is not None:
        transition = category_switch_matrix(warm.offsets, warm.tokens[1], dyn.n_category_tokens)
    return CatalogFeatures(
        action_item_token=dyn.item_token[:a],
        action_category_token=dyn.item_category_token[:a],
        action_log_popularity=log_pop,
        n_item_tokens=dyn.n_item_tokens,
        n_category_tokens=dyn.n_category_tokens,
        category_transition=transition,
    )


def log_sessions(
    env: BatchedInterestDrift,
    behaviour: ProbabilisticPolicy,
    targets: Mapping[str, ProbabilisticPolicy],
    seed: int,
    featurizer: CatalogFeatures | None = None,
    record_features: bool = True,
) -> SimulatedLog:
    """Log one session per user slot of ``env`` under ``behaviour``.

    Each slot's first session is logged (users that replace finished ones are ignored), so
    ``env.num_envs`` sessions are logged in parallel.

    The Q features of a state include the consecutive missed recommendations so far, counted
    from the logged outcomes (the env's ``engaged`` info): what a logging system records as
    click / no click, and what the user model's leave hazard depends on.

    Args:
        env: The batched simulator (reset here with ``seed``).
        behaviour: The logging policy; its actions are drawn here with a generator seeded
            from ``seed``, so the same seed gives the same log.
        targets: Name -> target policy, whose probabilities are recorded.
        seed: Seed of the users, the dynamics and the behaviour's draws.
        featurizer: Q features (default: :func:`catalog_features` of ``env``).
        record_features: False skips the Q features (``features`` is then (n_steps, 0) and
            targets' expected features too).

    Returns:
        The log, in session order.
    """
    feat = (featurizer or catalog_features(env)) if record_features else None
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    n = env.num_envs
    obs, _ = env.reset(seed=seed)
    active = np.ones(n, dtype=bool)
    misses = np.zeros(n, dtype=np.int64)  # consecutive missed recommendations per slot
    t = 0
    parts: dict[str, list[np.ndarray]] = {
        k: []
        for k in ("session", "t", "action", "reward", "prob", "features", "engaged", "expected")
    }
    target_parts: dict[str, dict[str, list[np.ndarray]]] = {
        name: {"prob": [], "expected": [], "kl": []} for name in targets
    }
    while active.any():
        rows = np.flatnonzero(active)
        sub = {key: np.asarray(value)[rows] for key, value in obs.items()}
        pb = np.asarray(behaviour.action_probabilities(sub), dtype=np.float64)  # (n_active, A)
        chosen = sample_actions(pb, rng)
        picked = np.arange(len(rows))
        parts["session"].append(rows)
        parts["t"].append(np.full(len(rows), t))
        parts["action"].append(chosen)
        parts["prob"].append(pb[picked, chosen])
        m = misses[rows]
        no_features = np.zeros((len(rows), 0))
        parts["features"].append(feat.features(sub, chosen, m) if feat is not None else no_features)
        parts["expected"].append(feat.expected(sub, pb, m) if feat is not None else no_features)
        for name, policy in targets.items():
            pe = np.asarray(policy.action_probabilities(sub), dtype=np.float64)
            target_parts[name]["prob"].append(pe[picked, chosen])
            target_parts[name]["expected"].append(
                feat.expected(sub, pe, m) if feat is not None else no_features
            )
            target_parts[name]["kl"].append(kl_divergence(pe, pb))
        actions = np.zeros(n, dtype=np.int64)
        actions[rows] = chosen
        obs, reward, terminated, truncated, info = env.step(actions)
        reward = np.asarray(reward, dtype=np.float64)
        # The logged outcome; a missed recommendation earns 0 with any reward weights.
        engaged = np.asarray(info["engaged"], dtype=bool) if "engaged" in info else reward > 0
        parts["reward"].append(reward[rows])
        parts["engaged"].append(engaged[rows])
        misses = np.where(engaged, 0, misses + 1)
        active &= ~(terminated | truncated)
        t += 1
    flat = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.lexsort((flat["t"], flat["session"]))
    counts = np.bincount(flat["session"], minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    log = SimulatedLog(
        session_offsets=offsets,
        action=flat["action"][order],
        reward=flat["reward"][order],
        behaviour_prob=flat["prob"][order],
        features=flat["features"][order],
        engaged=flat["engaged"][order],
        behaviour_expected_features=flat["expected"][order] if feat is not None else None,
    )
    for name, tp in target_parts.items():
        log.targets[name] = TargetLog(
            prob=np.concatenate(tp["prob"])[order],
            expected_features=np.concatenate(tp["expected"])[order],
            kl=np.concatenate(tp["kl"])[order],
        )
    return log


@dataclass(frozen=True)
class TrueValue:
    """A policy's on-policy value in the simulator.

    Attributes:
        value: Mean session return over ``episodes`` simulated sessions.
        ci95: 95% Student-t interval of the mean.
        episodes: Number of sessions.
    """

    value: float
    ci95: tuple[float, float]
    episodes: int


def true_value(policy: ProbabilisticPolicy, env: BatchedInterestDrift, seed: int) -> TrueValue:
    """On-policy mean session return of a stochastic policy, one session per user slot.

    The policy's own probabilities drive :func:`log_sessions` (the logging loop, which only
    evaluates users still in their first session), so the truth and the log come from the
    same simulation code.

    Args:
        policy: Anything with ``action_probabilities``; its actions are sampled.
        env: The batched simulator; ``env.num_envs`` sessions are simulated.
        seed: Seed of the users and dynamics (use another than the log's).
    """
    log = log_sessions(env, policy, {}, seed, record_features=False)
    returns = np.add.reduceat(log.reward, log.session_offsets[:-1])
    mean, lo, hi = mean_ci95(returns)
    return TrueValue(value=mean, ci95=(lo, hi), episodes=log.n_sessions)


@dataclass(frozen=True)
class SimulatedCheckSettings:
    """Settings of the simulator ground-truth check.

    Attributes:
        n_sessions: Sessions logged under the behaviour policy.
        truth_sessions: Sessions simulated on-policy per target for its true value.
        seed: Seed of the log (the truth uses ``seed + 1``, the bootstrap ``seed``).
        n_bootstrap: Bootstrap resamples of sessions.
        gamma: Discount of the estimated return (the simulator's truth is undiscounted,
            so only 1.0 is comparable with it).
        fqe: Settings of the fitted Q evaluation.
    """

    n_sessions: int = 10_000
    truth_sessions: int = 10_000
    seed: int = 0
    n_bootstrap: int = 200
    gamma: float = 1.0
    fqe: FQEConfig = field(default_factory=FQEConfig)

    def __post_init__(self) -> None:
        if self.n_sessions < 1 or self.truth_sessions < 1:
            raise UserError("sessions: expected >= 1 logged and >= 1 truth sessions")
        if self.gamma != 1.0:
            raise UserError("gamma: the simulator's true value is undiscounted; use gamma 1.0")


def evaluate_logged_targets(
    log: SimulatedLog,
    settings: SimulatedCheckSettings,
    truths: Mapping[str, TrueValue] | None = None,
) -> dict[str, Any]:
    """Every sequential estimator for every target recorded in ``log``.

    Returns:
        Per target: ``estimates`` ({name: {value, ci95}}), ``kl_per_step`` (mean over logged
        steps, nats), ``ess`` (effective sessions of the trajectory weights), ``fqe_iterations``
        and ``fqe_ridge`` (per fold) and, with ``truths``, ``true_value``, ``true_ci95``,
        ``relative_error`` and ``truth_in_ci95`` (whether each estimator's interval covers
        the truth).
    """
    out: dict[str, Any] = {}
    for name, tl in log.targets.items():
        fqe = fitted_q_evaluation(
            log.session_offsets,
            log.reward,
            log.features,
            tl.expected_features,
            gamma=settings.gamma,
            config=settings.fqe,
        )
        sessions = prepare_sessions(
            session_offsets=log.session_offsets,
            reward=log.reward,
            behaviour_prob=log.behaviour_prob,
            target_prob=tl.prob,
            q_factual=fqe.q_factual,
            v_target=fqe.v_target,
            gamma=settings.gamma,
        )
        estimates = estimate_session_value(
            sessions, n_bootstrap=settings.n_bootstrap, seed=settings.seed
        )
        steps, weights = BlendedDR(seed=settings.seed).blend(sessions)
        entry: dict[str, Any] = {
            "kl_per_step": float(np.mean(tl.kl)),
            "ess": effective_sample_size(sessions),
            "fqe_iterations": list(fqe.iterations),
            "fqe_ridge": list(fqe.ridges),
            "estimates": {k: e.to_dict() for k, e in estimates.items()},
            # MAGIC's blend: weight of each j-step return (j = -1 is DM, the last is WDR).
            "magic_blend": {"steps": steps.tolist(), "weights": weights.tolist()},
        }
        if truths is not None and name in truths:
            truth = truths[name]
            entry["true_value"] = truth.value
            entry["true_ci95"] = list(truth.ci95)
            entry["relative_error"] = {
                k: relative_error(e.value, truth.value) for k, e in estimates.items()
            }
            # Whether each bootstrap interval covers the truth (None: no interval).
            entry["truth_in_ci95"] = {
                k: (bool(e.ci95[0] <= truth.value <= e.ci95[1]) if np.isfinite(e.ci95[0]) else None)
                for k, e in estimates.items()
            }
        out[name] = entry
    return out


def behaviour_q_calibration(
    log: SimulatedLog, settings: SimulatedCheckSettings
) -> dict[str, Any] | None:
    """:func:`~rlrec.evaluation.fqe.q_calibration` of FQE for the behaviour policy itself.

    The Q-model (features and FQE settings) that DM, DR and WDR use for the targets,
    fitted for the behaviour policy and checked, cross-fitted, against the logged returns:
    a check of the model on held-out logged data that needs no ground truth. None when the
    log has no behaviour expected features.
    """
    if log.behaviour_expected_features is None or log.features.shape[1] == 0:
        return None
    fqe = fitted_q_evaluation(
        log.session_offsets,
        log.reward,
        log.features,
        log.behaviour_expected_features,
        gamma=settings.gamma,
        config=settings.fqe,
    )
    return q_calibration(log.session_offsets, log.reward, fqe.q_factual, gamma=settings.gamma)


def simulated_ope_check(
    make_env: Callable[[int], BatchedInterestDrift],
    behaviour: ProbabilisticPolicy,
    targets: Mapping[str, ProbabilisticPolicy],
    settings: SimulatedCheckSettings,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Log sessions under ``behaviour``, estimate every target, compare with on-policy truth.

    Args:
        make_env: Builds a batched env with the given number of users (same configuration
            for the log and the truth).
        behaviour: The known stochastic logging policy.
        targets: Name -> target policy.
        settings: Sizes and seeds.
        progress: Called with a short description before each stage.

    Returns:
        ``{"sessions", "logged_steps", "behaviour_value", "default_estimator", "targets":
        {name: see evaluate_logged_targets}}``.
    """
    say = progress or (lambda _msg: None)
    say(f"logging {settings.n_sessions} sessions")
    log = log_sessions(make_env(settings.n_sessions), behaviour, targets, settings.seed)
    truths = {}
    for name, policy in targets.items():
        say(f"true value of {name} ({settings.truth_sessions} on-policy sessions)")
        truths[name] = true_value(policy, make_env(settings.truth_sessions), settings.seed + 1)
    say("estimating")
    return {
        "sessions": log.n_sessions,
        "logged_steps": len(log.reward),
        "behaviour_value": log.mean_return,
        "default_estimator": DEFAULT_ESTIMATOR,
        "behaviour_q_calibration": behaviour_q_calibration(log, settings),
        "targets": evaluate_logged_targets(log, settings, truths),
    }
