r"""Logged sessions with known propensities from the simulator, and their ground truth.

1. :func:`log_sessions` runs ``n_sessions`` simulated users, one session each, under a known
   stochastic **behaviour** policy, recording per step the logged action, its propensity, the
   reward, Q-function features of the logged (state, action) and, for every **target**
   policy, its probability of the logged action, its expected features and the per-step KL
   divergence :math:`KL(\pi_e(\cdot|s) \| \pi_b(\cdot|s))` at the logged states;
2. :func:`true_value` rolls each target out on-policy in the same env configuration: its mean
   session return is the truth the estimates are compared with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from rlrec.data.ragged import Ragged
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.errors import UserError
from rlrec.evaluation.ope.q_features import CatalogFeatures, catalog_features
from rlrec.evaluation.ope.stochastic_policies import (
    ProbabilisticPolicy,
    kl_divergence,
    sample_actions,
)
from rlrec.evaluation.rollout import mean_ci95

__all__ = [
    "TRUTH_CHUNK_SEED_STRIDE",
    "SimulatedLog",
    "TargetLog",
    "TrueValue",
    "log_sessions",
    "true_value",
]


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


@dataclass(frozen=True)
class SimulatedLog(Ragged):
    """Sessions logged in the simulator under a known behaviour policy (session order).

    Sessions in CSR form (:class:`~rlrec.data.ragged.Ragged`): session ``s`` spans
    ``offsets[s]:offsets[s + 1]`` of the per-step arrays.

    Attributes:
        offsets: (S + 1,) int64 offsets.
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

    action: np.ndarray
    reward: np.ndarray
    behaviour_prob: np.ndarray
    features: np.ndarray
    targets: dict[str, TargetLog] = field(default_factory=dict)
    engaged: np.ndarray | None = None
    behaviour_expected_features: np.ndarray | None = None

    @property
    def mean_return(self) -> float:
        """Mean logged session return (the behaviour policy's on-policy estimate)."""
        return float(self.reward.sum() / self.n_sessions)


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
        offsets=offsets,
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


TRUTH_CHUNK_SEED_STRIDE = 1_000_003
"""Seed step between the batches of :func:`true_value` (``seed``, ``seed + stride``, ...): a
prime far above any log seed a benchmark uses, so no batch replays a logged population."""


def true_value(
    policy: ProbabilisticPolicy, env: BatchedInterestDrift, seed: int, repeats: int = 1
) -> TrueValue:
    """On-policy mean session return of a stochastic policy, one session per user slot.

    The policy's own probabilities drive :func:`log_sessions` (the logging loop, which only
    evaluates users still in their first session), so the truth and the log come from the
    same simulation code.

    A truth must be far more precise than the estimates it judges: one batch of 40,000
    sessions left the benchmark's ``random`` target 1% off its value (a 95% interval of
    +-2.4%), an error every seed's estimate then shared. ``repeats`` pools that many batches
    of ``env.num_envs`` sessions (other users and dynamics each), so the memory stays that of
    one batch while the sessions grow.

    Args:
        policy: Anything with ``action_probabilities``; its actions are sampled.
        env: The batched simulator; ``env.num_envs`` sessions are simulated per batch.
        seed: Seed of the users and dynamics of the first batch (use another than the
            log's); batch ``i`` uses ``seed + i * TRUTH_CHUNK_SEED_STRIDE``, so
            ``repeats=1`` is the single batch of before.
        repeats: Batches pooled (>= 1).

    Raises:
        UserError: If ``repeats`` < 1.
    """
    if repeats < 1:
        raise UserError(f"repeats: expected >= 1 batches of on-policy sessions, got {repeats}")
    returns = []
    for i in range(repeats):
        log = log_sessions(
            env, policy, {}, seed + i * TRUTH_CHUNK_SEED_STRIDE, record_features=False
        )
        returns.append(np.add.reduceat(log.reward, log.offsets[:-1]))
    pooled = np.concatenate(returns)
    mean, lo, hi = mean_ci95(pooled)
    return TrueValue(value=mean, ci95=(lo, hi), episodes=len(pooled))
