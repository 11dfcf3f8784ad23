r"""Hand features of (state, action) for the linear fitted Q evaluation of session policies.

:class:`CatalogFeatures` maps the logged history and a catalog action to the features FQE
(:mod:`rlrec.evaluation.ope.fqe`) regresses on; :func:`catalog_features` builds it for an
env's catalog and :func:`category_switch_matrix` estimates the category switch probabilities
it uses from logged sessions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from rlrec.envs.batched import BatchedInterestDrift
from rlrec.errors import UserError

__all__ = ["CatalogFeatures", "catalog_features", "category_switch_matrix", "engaged_reward"]


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
      with every consecutive miss. Without outcomes (``misses=None``) it is 0;
    * with ``dwell_levels=True`` (real logs with timestamps), the time the user spent on the
      previous step (the gap between the history's last two steps, levels
      :data:`DWELL_EDGES` in seconds, plus a level for "no previous gap"), read from the
      observation's ``dwell_seconds`` (B,), NaN where there is none: a long dwell marks an
      engaged user, a burst of short ones a browsing one.

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
        dwell_levels: Add the dwell levels to the state basis (observations must then
            carry ``dwell_seconds``).
    """

    STEP_EDGES = (1, 2, 3, 4, 6, 8, 12, 16)
    """Upper bounds of the session-step buckets (the last bucket is open)."""

    STREAK_EDGES: tuple[int, ...] = (1, 2, 3, 4, 5)
    """Upper bounds of the streak levels 1 .. 5 (6+ is open)."""

    MISS_EDGES = (0, 1, 2, 4, 8)
    """Upper bounds of the consecutive-miss levels 0, 1, 2, 3-4, 5-8 (9+ is open)."""

    DWELL_EDGES = (10.0, 60.0, 300.0, 1800.0)
    """Upper bounds (seconds) of the dwell levels; longer is open, no gap is its own level."""

    N_ACTION_BASIS = 9
    """Size of the action basis without ``action_reward`` (see the class docstring)."""

    SWITCH_EDGES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    """Level edges of the scaled switch probability (1 = a category drawn at random)."""

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
        dwell_levels: bool = False,
        action_reward: np.ndarray | None = None,
    ) -> None:
        self.n_actions = len(action_item_token)
        # Reward of an engaged step with each action, relative to the catalog's mean: the
        # funnel (cart, buy) differs by category, so two items that engage equally often can
        # differ threefold in value; without it a target that keeps recommending one item
        # (``popular``) is valued at its popularity bin's average reward.
        self.action_reward: np.ndarray | None = None
        if action_reward is not None:
            r = np.asarray(action_reward, dtype=np.float64)
            if r.shape != (self.n_actions,) or not np.all(np.isfinite(r)) or r.mean() <= 0:
                raise UserError(
                    f"action_reward: expected ({self.n_actions},) finite rewards with a "
                    f"positive mean, got shape {r.shape}"
                )
            self.action_reward = r / r.mean()
        self.n_action_basis = self.N_ACTION_BASIS + (2 if action_reward is not None else 0)
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
        self.dwell_levels = dwell_levels
        self.n_state_basis = (
            1
            + len(self.STEP_EDGES)
            + len(self.STREAK_EDGES)
            + len(self.MISS_EDGES)
            + (len(self.DWELL_EDGES) + 1 if dwell_levels else 0)
        )
        # Switch-probability level of every (previous category, next category) pair; the
        # same category has its own features (same_last), so its row entry is unused.
        self.switch_level = np.searchsorted(
            np.asarray(self.SWITCH_EDGES), self.transition, side="right"
        )  # (C, C) in [0, n_switch_levels)
        self.n_switch_levels = len(self.SWITCH_EDGES) + 1
        self.n_features = (
            self.n_state_basis * self.n_action_basis
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
        streak_level = np.searchsorted(np.asarray(self.STREAK_EDGES), streak, side="left")
        m = np.zeros(b, dtype=np.int64) if misses is None else np.asarray(misses, np.int64)
        if m.shape != (b,):
            raise UserError(f"misses: expected shape ({b},), got {m.shape}")
        miss_level = np.searchsorted(np.asarray(self.MISS_EDGES), m, side="left")
        n_step = len(self.STEP_EDGES) + 1
        onehots = [
            np.eye(n_step)[step_level][:, 1:],
            np.eye(len(self.STREAK_EDGES) + 1)[streak_level][:, 1:],
            np.eye(len(self.MISS_EDGES) + 1)[miss_level][:, 1:],
        ]
        if self.dwell_levels:
            if "dwell_seconds" not in obs:
                raise UserError("dwell_seconds: these Q features need it in the observations")
            dwell = np.asarray(obs["dwell_seconds"], dtype=np.float64).reshape(-1)  # (B,)
            # Level 0: no previous gap (NaN); then the DWELL_EDGES buckets, the last open.
            level = np.where(
                np.isfinite(dwell),
                1 + np.searchsorted(np.asarray(self.DWELL_EDGES), np.nan_to_num(dwell)),
                0,
            )
            onehots.append(np.eye(len(self.DWELL_EDGES) + 2)[level][:, 1:])
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
                *(
                    (self.action_reward[a], same_last * self.action_reward[a])
                    if self.action_reward is not None
                    else ()
                ),
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

    def _expected_reward(
        self, p: np.ndarray, rows: np.ndarray, last: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """The ``action_reward`` columns of the action basis in expectation under (B, A) ``p``."""
        if self.action_reward is None:
            return ()
        pr = p * self.action_reward  # (B, A)
        same = np.asarray((self.category_onehot.T @ pr.T).T)[rows, last]  # (B,)
        return pr.sum(axis=1), same

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
                *self._expected_reward(p, rows, last),
            ]
        )
        # Mass per (switch level, popularity bin) over the categories other than the last.
        level_onehot = np.eye(self.n_switch_levels)[self.switch_level[last]]  # (B, C, ns)
        level_onehot[rows, last] = 0.0
        switch_x_bins = np.einsum("bcs,bcn->bsn", level_onehot, by_cat_bin).reshape(b, -1)
        return self._combine(
            self.state_basis(obs, misses), chi, bins, by_cat_bin[rows, last], switch_x_bins
        )


def engaged_reward(
    item_category: np.ndarray,
    p_cart: np.ndarray,
    p_buy: np.ndarray,
    engage: float,
    cart: float,
    buy: float,
) -> np.ndarray:
    """(N,) expected reward of an engaged step with each item, from its category's funnel.

    The simulator's outcome nests (a buy only after a cart): P(cart or more | engaged) is
    ``max(p_cart, p_buy)`` of the item's category and P(buy | engaged) is ``p_buy``, so the
    expected reward is ``engage + (cart - engage) P(cart+) + (buy - cart) P(buy)``.

    Args:
        item_category: (N,) sim category of each item.
        p_cart: (K,) cart rate given engagement per category.
        p_buy: (K,) buy rate given engagement per category.
        engage: Reward weight of an engaged step.
        cart: Reward weight of a cart.
        buy: Reward weight of a buy.
    """
    k = np.asarray(item_category, dtype=np.int64)
    cart_or_more = np.maximum(np.asarray(p_cart, np.float64), np.asarray(p_buy, np.float64))[k]
    return engage + (cart - engage) * cart_or_more + (buy - cart) * np.asarray(p_buy)[k]


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
    w = env.config.reward_weights
    reward = engaged_reward(
        k[:a], np.asarray(model.p_cart), np.asarray(model.p_buy), w.engage, w.cart, w.buy
    )
    return CatalogFeatures(
        action_item_token=dyn.item_token[:a],
        action_category_token=dyn.item_category_token[:a],
        action_log_popularity=log_pop,
        n_item_tokens=dyn.n_item_tokens,
        n_category_tokens=dyn.n_category_tokens,
        category_transition=transition,
        action_reward=reward,
    )
