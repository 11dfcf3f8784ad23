"""Model-based planning in the fitted user model: the agent's prior and a policy of its own.

The fitted SimModel is a small Markov decision process once the catalog is reduced to one
candidate per category (the most popular catalog item of the category: within a category every
item has the same funnel, and engagement grows with popularity, so it dominates the others).
Its state is what the simulator's user model keeps, and what a recommender can read off the
history: the current category ``c``, the streak ``s``, the session step ``t`` and the
consecutive misses ``m``. Backward induction over ``t`` (the leave hazard is fitted per step
up to ``T``; beyond it the problem is stationary and solved by value iteration) gives the value
of recommending each category in each state, ``Q[t, c, s, k]``, in about a second.

What the log does not identify (the response parameters, :mod:`rlrec.models.prior`) is not
one number but a range. The planner therefore plans for the prior, not for one draw: it draws
``n_draws`` response parameter sets, starts from the action that is best on average over the
draws' own optimal values, and then runs policy iteration on the *average* value: each round
evaluates the current policy under every draw and improves it against the mean. This is a
Bayes-risk planner for a user population whose response is uncertain (each user a draw), the
same objective as PPO with domain randomisation, solved exactly on the fitted model's states.

The recommender never sees ``m`` (whether its last recommendations were clicked is not in the
observation), so the policy is evaluated as executed: blind to ``m``, acting on ``m = 0``. The
streak is read from the visible history (up to ``history_length`` steps).

Two uses: :class:`PlannerPolicy` (the policy protocol of ``DESIGN.md``) is evaluated beside the
agent, and :meth:`PlanTable.category_values` gives the agent's actor its prior (category
logits ``Q / temperature``; see :class:`rlrec.agents.policy.FactoredActorHead`), so that PPO
starts from the plan and learns only what the plan misses.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.agents.baselines import expected_reward_if_engaged
from rlrec.agents.retention import RetentionBonus
from rlrec.envs.config import RewardWeights
from rlrec.errors import UserError
from rlrec.models.prior import RESPONSE_PARAMETERS, prior_draws
from rlrec.models.sim_model import SimModel

__all__ = [
    "PlanTable",
    "Planner",
    "PlannerConfig",
    "PlannerPolicy",
    "category_top_items",
    "plan_state",
    "streaks",
]


@dataclass(frozen=True)
class PlannerConfig:
    """Settings of the planner.

    Attributes:
        max_streak: Streaks beyond this are treated as this (boredom and stay stop growing).
        max_misses: Consecutive misses beyond this are treated as this.
        n_draws: Response-parameter draws from the prior (1 with no unidentified parameter).
        iterations: Policy-iteration rounds on the mean value over the draws.
        tail_tolerance: Value iteration of the stationary tail stops below this change.
        tail_max_iterations: ... or after this many sweeps.
        seed: Seed of the draws.
    """

    max_streak: int = 30
    max_misses: int = 8
    n_draws: int = 8
    iterations: int = 2
    tail_tolerance: float = 1e-4
    tail_max_iterations: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_streak < 2 or self.max_misses < 1 or self.n_draws < 1 or self.iterations < 0:
            raise UserError(
                "planner: need max_streak >= 2, max_misses >= 1, n_draws >= 1, iterations >= 0"
            )


def category_top_items(model: SimModel, n_actions: int) -> np.ndarray:
    """(K,) the most popular catalog action of each sim category among the first ``n_actions``.

    -1 for a category without a catalog action.
    """
    k = model.n_categories
    cats = np.asarray(model.item_category[:n_actions], dtype=np.int64)
    pop = np.asarray(model.item_popularity[:n_actions], dtype=np.float64)
    top = np.full(k, -1, dtype=np.int64)
    best = np.full(k, -np.inf)
    for action in range(len(cats)):  # first of the most popular wins (stable)
        if pop[action] > best[cats[action]]:
            best[cats[action]] = pop[action]
            top[cats[action]] = action
    return top


def streaks(sim_history: np.ndarray, cap: int) -> np.ndarray:
    """(B,) trailing run length of the last column's value in (B, L) histories, capped.

    Padding is -1 and never extends a run; an all-padding row gives 1.
    """
    last = sim_history[:, -1:]
    same = (sim_history == last) & (sim_history >= 0)
    # Run length = position of the last mismatch from the end.
    mismatch = ~same[:, ::-1]
    first = np.where(mismatch.any(axis=1), mismatch.argmax(axis=1), same.shape[1])
    return np.clip(first, 1, cap)


def plan_state(
    obs: dict[str, Any],
    category_of_dataset_category: np.ndarray,
    max_streak: int,
    n_steps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, c, s)`` plan indices (each (B,)) of batched observations.

    ``t`` is the session step (clipped to the ``n_steps`` planned, 0-based), ``c`` the sim
    category of the last history item and ``s`` its trailing streak (capped at
    ``max_streak``, 0-based), read off ``category_history`` mapped by
    ``category_of_dataset_category``.
    """
    cats = np.asarray(obs["category_history"], dtype=np.int64)
    cats = cats.reshape(-1, cats.shape[-1])
    sim = np.where(cats > 0, category_of_dataset_category[np.maximum(cats - 1, 0)], -1)
    s = streaks(sim, max_streak)
    c = np.maximum(sim[:, -1], 0)
    step = np.asarray(obs["step"], dtype=np.int64).reshape(-1)
    t = np.clip(step, 1, n_steps) - 1
    return t, c, s - 1


class Planner:
    """Category values of the fitted user model under the prior; see the module docstring.

    Args:
        model: The SimModel (the simulator's fitted user model).
        n_actions: A, the env's action count.
        weights: The env's reward weights.
        config: Planner settings.
        draws: (J, P) response parameters (columns :data:`RESPONSE_PARAMETERS`); drawn from
            the prior over the model's unidentified parameters when None.
        draw_weights: (J,) weight of each draw in the mean value (equal when None).
        bonus: Lifecycle episodes: the continuation value of a session's events and
            outcomes (:func:`rlrec.agents.retention.retention_bonus`), added to every step's
            reward so that the plan values users coming back; None for one-session episodes.
    """

    def __init__(
        self,
        model: SimModel,
        n_actions: int,
        weights: RewardWeights,
        config: PlannerConfig | None = None,
        draws: np.ndarray | None = None,
        draw_weights: np.ndarray | None = None,
        bonus: RetentionBonus | None = None,
    ) -> None:
        self.config = config or PlannerConfig()
        self.bonus = bonus
        cfg = self.config
        self.n_categories = k = model.n_categories
        self.top_item = category_top_items(model, n_actions)
        self.valid = self.top_item >= 0
        if not self.valid.any():
            raise UserError("planner: no category has a catalog item")
        self.category_of_dataset_category = np.asarray(
            model.category_of_dataset_category, dtype=np.int64
        )
        if draws is None:
            rng = np.random.default_rng(cfg.seed)
            draws = prior_draws(model, cfg.n_draws, rng)
            if len(np.unique(draws, axis=0)) == 1:
                draws = draws[:1]  # nothing is uncertain: one draw is the model itself
        self.draws = np.asarray(draws, dtype=np.float64)
        w = np.ones(len(self.draws)) if draw_weights is None else np.asarray(draw_weights, float)
        if w.shape != (len(self.draws),) or not np.all(w >= 0) or w.sum() <= 0:
            raise UserError("planner: need one non-negative weight per draw, not all zero")
        self.weights = w / w.sum()
        s_cap, m_cap = cfg.max_streak, cfg.max_misses
        self.stay = model.stay_probability(np.arange(1, s_cap + 1)).astype(np.float64)  # (S,)
        self.n_steps = len(model.leave_hazard)  # T: beyond it the hazard is constant
        self.hazard = model.hazard(np.arange(2, self.n_steps + 2)).astype(np.float64)  # (T,)
        self.switch = np.asarray(model.switch_matrix, dtype=np.float64)
        top = np.where(self.valid, self.top_item, 0)
        reward = expected_reward_if_engaged(model, weights)[top]
        self.step_bonus = 0.0
        if bonus is not None:
            reward = reward + expected_reward_if_engaged(model, bonus.outcome)[top]
            self.step_bonus = bonus.event
        self.reward = np.where(self.valid, reward, 0.0)
        n_in_category = np.bincount(model.item_category, minlength=k)[model.item_category[top]]
        self.rel_pop = np.maximum(n_in_category * model.item_popularity[top], 1e-12)  # (K,)
        # interest[c, s, k] = stay(s) [k == c] + (1 - stay(s)) switch[c, k]
        eye = np.eye(k)
        self.interest = (
            self.stay[None, :, None] * eye[:, None, :]
            + (1 - self.stay)[None, :, None] * self.switch[:, None, :]
        )  # (K, S, K)
        self.next_streak = np.minimum(np.arange(s_cap) + 1, s_cap - 1)  # index of s + 1
        self.next_miss = np.minimum(np.arange(m_cap) + 1, m_cap - 1)
        self.values, self.policy = self._plan()

    # -- the model under one draw -----------------------------------------------------------

    def _draw(self, theta: np.ndarray) -> dict[str, Any]:
        p = dict(zip(RESPONSE_PARAMETERS, theta, strict=True))
        k = self.n_categories
        z = (
            p["engage_base_rate"]
            * np.power(self.rel_pop, p["engage_popularity_exponent"])[None, None, :]
            * np.power(k * self.interest, p["engage_interest_exponent"])
        )
        m = p["engage_ceiling"]
        engage = np.where(self.valid[None, None, :], m * z / (m + z), 0.0)  # (K, S, K)
        streak = np.arange(1, self.config.max_streak + 1)
        boredom = p["leave_engaged_factor"] * p["leave_streak_factor"] ** np.maximum(
            streak - p["leave_streak_start"], 0
        )  # (S,) hazard factor after an engaged step with new streak s'
        misses = p["leave_miss_factor"] ** (np.arange(self.config.max_misses) + 1.0)  # (M,)
        return {"engage": engage, "boredom": boredom, "misses": misses}

    def _backup(
        self, world: dict[str, Any], v_next: np.ndarray, hazard: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Q (K, S, M, K) of one decision step from the next step's values V (K, S, M).

        Also returns Q at ``m = 0`` (K, S, K), the row the recommender acts on.
        """
        keep_engaged = 1.0 - np.minimum(1.0, hazard * world["boredom"])  # (S,) by new streak
        keep_missed = 1.0 - np.minimum(1.0, hazard * world["misses"])  # (M,) by m + 1
        ns = self.next_streak
        # Engaged with another category k: new streak 1, misses 0.
        other = self.reward + keep_engaged[0] * v_next[:, 0, 0]  # (K,)
        # Engaged with the current one: streak s + 1.
        same = self.reward[:, None] + keep_engaged[ns][None, :] * v_next[:, ns, 0]  # (K, S)
        engaged = np.broadcast_to(other, (self.n_categories, len(ns), self.n_categories)).copy()
        kk = np.arange(self.n_categories)
        engaged[kk, :, kk] = same  # (K, S, K): diagonal k == c
        # Missed: the organic step (stay -> s + 1, else switch -> streak 1), misses + 1.
        vm = v_next[:, :, self.next_miss]  # (K, S, M)
        switched = self.switch @ vm[:, 0, :]  # (K, M)
        missed = keep_missed[None, None, :] * (
            self.stay[None, :, None] * vm[:, ns, :]
            + (1.0 - self.stay)[None, :, None] * switched[:, None, :]
        )  # (K, S, M)
        p = world["engage"]  # (K, S, K)
        q = missed[..., None] + p[:, :, None, :] * (engaged[:, :, None, :] - missed[..., None])
        if self.step_bonus:
            q = q + self.step_bonus  # every step is an event of the session, engaged or not
        q = np.where(self.valid, q, -np.inf)
        return q, q[:, :, 0, :]

    def _solve(self, world: dict[str, Any], policy: np.ndarray | None) -> np.ndarray:
        """Q at m = 0, (T, K, S, K): optimal (``policy`` None) or of an m-blind policy (T, K, S).

        The stationary tail's value iteration starts from this world's last tail values (a
        policy-iteration round changes the policy little, so it converges in a few sweeps).
        """
        cfg = self.config
        k, s_cap, m_cap = self.n_categories, cfg.max_streak, cfg.max_misses
        idx = np.indices((k, s_cap, m_cap))

        def value(q: np.ndarray, t: int) -> np.ndarray:
            if policy is None:
                return q.max(axis=-1)
            chosen = np.broadcast_to(policy[t][:, :, None], (k, s_cap, m_cap))
            return q[idx[0], idx[1], idx[2], chosen]

        t_last = self.n_steps - 1
        v = world.get("tail", np.zeros((k, s_cap, m_cap)))
        for _ in range(cfg.tail_max_iterations):  # the stationary tail: t >= T
            q, q0 = self._backup(world, v, self.hazard[t_last])
            new = value(q, t_last)
            done = np.max(np.abs(new - v)) < cfg.tail_tolerance
            v = new
            if done:
                break
        world["tail"] = v
        out = np.empty((self.n_steps, k, s_cap, k))
        out[t_last] = q0
        for t in range(t_last - 1, -1, -1):
            q, out[t] = self._backup(world, v, self.hazard[t])
            v = value(q, t)
        return out

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        worlds = [self._draw(theta) for theta in self.draws]

        def mean_value(policy: np.ndarray | None) -> np.ndarray:
            total = np.zeros(())
            for weight, world in zip(self.weights, worlds, strict=True):
                total = total + weight * self._solve(world, policy)
            return total

        mean = mean_value(None)  # (T, K, S, K)
        policy = mean.argmax(axis=-1)
        for _ in range(self.config.iterations):
            mean = mean_value(policy)
            improved = mean.argmax(axis=-1)
            if np.array_equal(improved, policy):
                break
            policy = improved
        return mean.astype(np.float32), policy

    @property
    def table(self) -> PlanTable:
        """What acting needs: the mean values, the policy and how to read states."""
        return PlanTable(
            values=self.values,
            policy=self.policy.astype(np.int64),
            top_item=self.top_item,
            category_of_dataset_category=self.category_of_dataset_category,
            max_streak=self.config.max_streak,
        )


@dataclass(frozen=True)
class PlanTable:
    """A solved plan: values and policy by (step, category, streak), read off observations.

    Attributes:
        values: (T, K, S, K) float32 mean value over the draws of recommending each category,
            at ``m = 0``; ``-inf`` for a category without a catalog item.
        policy: (T, K, S) the planned category.
        top_item: (K,) the catalog action that stands for each category (-1: none).
        category_of_dataset_category: (C,) sim category of each dataset category.
        max_streak: S.
    """

    values: np.ndarray
    policy: np.ndarray
    top_item: np.ndarray
    category_of_dataset_category: np.ndarray
    max_streak: int

    @property
    def n_steps(self) -> int:
        """T, the steps with their own hazard (later steps use the last)."""
        return int(self.values.shape[0])

    def state(self, obs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t, c, s)`` indices (each (B,)) of batched observations."""
        return plan_state(obs, self.category_of_dataset_category, self.max_streak, self.n_steps)

    def category_values(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, K) mean value over the draws of recommending each sim category (-inf: none)."""
        t, c, s = self.state(obs)
        return self.values[t, c, s]

    def actions(self, obs: dict[str, Any]) -> np.ndarray:
        """(B,) catalog actions of the planned policy."""
        t, c, s = self.state(obs)
        return self.top_item[self.policy[t, c, s]]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as an ``.npz`` of numeric arrays (loading never unpickles)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                values=self.values.astype(np.float32),
                policy=self.policy.astype(np.int16),
                top_item=self.top_item.astype(np.int64),
                category_of_dataset_category=self.category_of_dataset_category.astype(np.int64),
                max_streak=np.int64(self.max_streak),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PlanTable:
        """Read a table written by :meth:`save`.

        Raises:
            UserError: If the file is missing, unreadable or inconsistent.
        """
        try:
            with np.load(path, allow_pickle=False) as npz:
                table = cls(
                    values=np.asarray(npz["values"], dtype=np.float32),
                    policy=np.asarray(npz["policy"], dtype=np.int64),
                    top_item=np.asarray(npz["top_item"], dtype=np.int64),
                    category_of_dataset_category=np.asarray(
                        npz["category_of_dataset_category"], dtype=np.int64
                    ),
                    max_streak=int(npz["max_streak"]),
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path}: unreadable plan ({exc}); train the run again") from None
        t, k, s, k2 = table.values.shape if table.values.ndim == 4 else (0, 0, 0, -1)
        consistent = (
            k == k2 == len(table.top_item)
            and table.policy.shape == (t, k, s)
            and s == table.max_streak
            and table.category_of_dataset_category.size > 0
            and table.category_of_dataset_category.min() >= 0
            and table.category_of_dataset_category.max() < k
            and table.policy.min() >= 0
            and table.policy.max() < k
        )
        if not consistent:
            raise UserError(f"{path}: an inconsistent plan; train the run again")
        return table


class PlannerPolicy:
    """The planner's own policy under the policy protocol (deterministic, one-hot).

    Args:
        plan: The solved plan.
        n_actions: A.
    """

    name = "planner"
    uses_hidden_state = False

    def __init__(self, plan: PlanTable, n_actions: int) -> None:
        self.plan = plan
        self.n_actions = n_actions

    def predict(
        self,
        obs: dict[str, Any],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """(B,) the planned action for each observation."""
        return self.plan.actions(obs), state

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) one-hot rows at the planned actions."""
        actions = self.plan.actions(obs)
        out = np.zeros((len(actions), self.n_actions))
        out[np.arange(len(actions)), actions] = 1.0
        return out
