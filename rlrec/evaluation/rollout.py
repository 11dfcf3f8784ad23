"""Online evaluation: roll any policy out in the batched simulator on the same seeded users.

A policy is anything with SB3's ``predict(obs, state=None, episode_start=None,
deterministic=False) -> (actions, state)`` on batched observations (this module never imports
``rlrec.agents``). One evaluation runs ``n_episodes`` users side by side in a
:class:`~rlrec.envs.batched.BatchedInterestDrift` reset with ``seed``: every policy meets the
same starting users (the same logged prefixes), and each slot's first episode is the one
counted (users that replace finished ones are ignored).

Hidden state: a policy with ``uses_hidden_state = True`` (an oracle) receives the users'
(B, K) interest rows in the observation under :data:`HIDDEN_INTEREST_KEY`.

Per-episode metrics: return, session length (recommendations), engage rate (engaged / length),
buys, category coverage (distinct sim categories recommended / K). Lifecycle episodes
(``env.episode: lifecycle``) add sessions per user and day-7 / day-30 retention: the share of
users whose first return session starts within 7 (30) days of their first session (reported
only where the horizon covers that day). Each is reported as a mean
with a 95% Student-t confidence interval over episodes; the aggregate catalog coverage
(distinct items recommended / A) and the entropy of the recommended categories (nats) come
without intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import stats

from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.dynamics import OUTCOMES

__all__ = [
    "HIDDEN_INTEREST_KEY",
    "RETENTION_DAYS",
    "EpisodeStats",
    "Policy",
    "entropy_nats",
    "evaluate_policies",
    "mean_ci95",
    "rollout",
    "summarize",
]

HIDDEN_INTEREST_KEY = "interest"
"""Observation key under which oracle policies receive the (B, K) hidden interest rows."""

_BUY = OUTCOMES.index("buy")
_CART = OUTCOMES.index("cart")


class Policy(Protocol):
    """The policy protocol (SB3's ``predict``)."""

    def predict(
        self,
        obs: dict[str, Any],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """(B,) actions and the recurrent state."""
        ...


@dataclass(frozen=True)
class EpisodeStats:
    """Per-episode outcomes of one policy; arrays are (E,) over episodes.

    Attributes:
        returns: Undiscounted episode return.
        lengths: Recommendations in the episode.
        engaged: Engaged recommendations.
        buys: Recommendations that ended in a buy.
        carts: Recommendations that ended in a cart (bought ones included).
        categories: Distinct sim categories recommended.
        n_categories: K.
        n_actions: A.
        item_counts: (A,) how often each catalog item was recommended (all episodes).
        category_counts: (K,) how often each category was recommended.
        sessions: Sessions in the episode (lifecycle episodes; None for one-session ones).
        first_return_day: Day the first return session started (``inf``: never), or None.
        horizon_days: The lifecycle horizon, or None.
    """

    returns: np.ndarray
    lengths: np.ndarray
    engaged: np.ndarray
    buys: np.ndarray
    carts: np.ndarray
    categories: np.ndarray
    n_categories: int
    n_actions: int
    item_counts: np.ndarray
    category_counts: np.ndarray
    sessions: np.ndarray | None = None
    first_return_day: np.ndarray | None = None
    horizon_days: float | None = None


RETENTION_DAYS: tuple[int, ...] = (7, 30)
"""Days of the retention figures (``retention_d7``, ``retention_d30``)."""


def mean_ci95(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% Student-t confidence interval ``(mean, lo, hi)``.

    One value gives an interval of zero width at the mean (no spread to estimate).
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def rollout(
    policy: Policy,
    env: BatchedInterestDrift,
    seed: int,
    deterministic: bool = True,
) -> EpisodeStats:
    """Run one episode per user slot of ``env`` (``env.num_envs`` episodes).

    Args:
        policy: Anything with ``predict``; ``uses_hidden_state`` policies get the interest.
        env: The batched simulator; it is reset with ``seed``.
        seed: Seed of the users and the dynamics.
        deterministic: Passed to ``predict``.

    Returns:
        The per-episode statistics.
    """
    n = env.num_envs
    dynamics = env.dynamics
    k, a = dynamics.n_categories, dynamics.n_actions
    item_category = dynamics.item_category
    hidden = bool(getattr(policy, "uses_hidden_state", False))
    obs, _ = env.reset(seed=seed)
    active = np.ones(n, dtype=bool)
    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    engaged = np.zeros(n, dtype=np.int64)
    buys = np.zeros(n, dtype=np.int64)
    carts = np.zeros(n, dtype=np.int64)
    seen = np.zeros((n, k), dtype=bool)
    item_counts = np.zeros(a, dtype=np.int64)
    state: Any = None
    episode_start = np.ones(n, dtype=bool)
    lifecycle = env.dynamics.returns is not None
    sessions = np.ones(n, dtype=np.int64)
    first_return = np.full(n, np.inf)
    while active.any():
        policy_obs = dict(obs)
        if hidden:
            policy_obs[HIDDEN_INTEREST_KEY] = env.interest()
        actions, state = policy.predict(
            policy_obs, state=state, episode_start=episode_start, deterministic=deterministic
        )
        actions = np.asarray(actions, dtype=np.int64).reshape(n)
        obs, reward, terminated, truncated, info = env.step(actions)
        rows = np.flatnonzero(active)
        chosen = actions[rows]
        returns[rows] += reward[rows]
        lengths[rows] += 1
        engaged[rows] += info["engaged"][rows]
        buys[rows] += info["outcome"][rows] == _BUY
        carts[rows] += info["outcome"][rows] >= _CART
        seen[rows, item_category[chosen]] = True
        item_counts += np.bincount(chosen, minlength=a)
        ends = env.session_ends
        if lifecycle and ends is not None:
            back = rows[ends.returned[rows]]
            sessions[back] += 1
            came_on = ends.day[back] + ends.gap_days[back]
            first_return[back] = np.minimum(first_return[back], came_on)
        done = terminated | truncated
        episode_start = done
        active &= ~done
    category_counts = np.bincount(
        item_category[np.repeat(np.arange(a), item_counts)], minlength=k
    ).astype(np.int64)
    return EpisodeStats(
        returns=returns,
        lengths=lengths,
        engaged=engaged,
        buys=buys,
        carts=carts,
        categories=seen.sum(axis=1),
        n_categories=k,
        n_actions=a,
        item_counts=item_counts,
        category_counts=category_counts,
        sessions=sessions if lifecycle else None,
        first_return_day=first_return if lifecycle else None,
        horizon_days=float(env.config.horizon_days) if lifecycle else None,
    )


def entropy_nats(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the empirical distribution given by ``counts``."""
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        return 0.0
    return float(stats.entropy(c))


def summarize(stats_: EpisodeStats) -> dict[str, Any]:
    """Means with 95% intervals, in the ``rlrec evaluate --json`` per-policy layout.

    Returns:
        ``return_mean``, ``return_ci95`` ``[lo, hi]``, ``session_length_mean`` and
        ``session_length_ci95``, ``engage_rate`` and ``engage_rate_ci95``, ``buys_mean`` and
        ``buys_ci95``, ``coverage`` and ``coverage_ci95`` (category coverage per session),
        ``catalog_coverage``, ``category_entropy`` and ``episodes``.
    """
    lengths = np.maximum(stats_.lengths, 1)
    out: dict[str, Any] = {}
    for key, ci_key, values in (
        ("return_mean", "return_ci95", stats_.returns),
        ("session_length_mean", "session_length_ci95", stats_.lengths),
        ("engage_rate", "engage_rate_ci95", stats_.engaged / lengths),
        ("buys_mean", "buys_ci95", stats_.buys),
        ("coverage", "coverage_ci95", stats_.categories / stats_.n_categories),
    ):
        mean, lo, hi = mean_ci95(values)
        out[key] = mean
        out[ci_key] = [lo, hi]
    if stats_.sessions is not None and stats_.first_return_day is not None:
        mean, lo, hi = mean_ci95(stats_.sessions)
        out["sessions_per_user"] = mean
        out["sessions_per_user_ci95"] = [lo, hi]
        horizon = stats_.horizon_days or 0.0
        for days in RETENTION_DAYS:
            key = f"retention_d{days}"
            if days <= horizon:
                mean, lo, hi = mean_ci95(stats_.first_return_day <= days)
                out[key], out[f"{key}_ci95"] = mean, [lo, hi]
            else:  # the horizon ends before that day: not observed
                out[key], out[f"{key}_ci95"] = None, None
    out["catalog_coverage"] = float(np.count_nonzero(stats_.item_counts) / stats_.n_actions)
    out["category_entropy"] = entropy_nats(stats_.category_counts)
    out["episodes"] = len(stats_.returns)
    return out


def evaluate_policies(
    policies: Mapping[str, Policy],
    make_env: Callable[[int], BatchedInterestDrift],
    n_episodes: int,
    seed: int,
    deterministic: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate several policies on the same seeded users.

    Args:
        policies: Name -> policy.
        make_env: Builds a fresh batched env with the given number of users.
        n_episodes: Users (episodes) per policy.
        seed: Seed shared by every policy's rollout.
        deterministic: Passed to ``predict``.
        progress: Called with each policy's name before its rollout.

    Returns:
        Name -> :func:`summarize` output.
    """
    if n_episodes < 1:
        raise ValueError("n_episodes must be >= 1")
    results: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        if progress is not None:
            progress(name)
        results[name] = summarize(rollout(policy, make_env(n_episodes), seed, deterministic))
    return results
