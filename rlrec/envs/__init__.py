"""Interest-drift simulator: the single Gymnasium env and the batched vector env.

Importing this package registers ``rlrec/InterestDrift-v0`` (the single env) and
``rlrec/InterestDriftBatched-v0`` (the vector env, for ``gymnasium.make_vec``)::

    import gymnasium as gym
    import rlrec.envs

    env = gym.make("rlrec/InterestDrift-v0", sim_model="logs/sim", dataset="logs/data")

Registration adds no ``TimeLimit``: the env truncates at ``max_steps`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gymnasium.envs.registration import register, registry

from rlrec.envs.batched import BatchedInterestDrift, make_batched_env
from rlrec.envs.config import EnvConfig, EnvSpec, RewardWeights
from rlrec.envs.dynamics import OUTCOMES, InvalidActionError, UserDynamics
from rlrec.envs.interest_drift import InterestDriftEnv, make_env

if TYPE_CHECKING:
    from rlrec.envs.sb3_vec_env import BatchedVecEnv, make_vec_env

ENV_ID = "rlrec/InterestDrift-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="rlrec.envs.interest_drift:InterestDriftEnv",
        max_episode_steps=None,  # the env enforces max_steps itself
        vector_entry_point="rlrec.envs.batched:BatchedInterestDrift",
    )

_SB3 = ("BatchedVecEnv", "make_vec_env")


def __getattr__(name: str) -> Any:
    # The SB3 adapter imports torch (through Stable-Baselines3): load it on first use only.
    if name in _SB3:
        from rlrec.envs import sb3_vec_env

        return getattr(sb3_vec_env, name)
    raise AttributeError(f"module 'rlrec.envs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SB3})


__all__ = [
    "ENV_ID",
    "OUTCOMES",
    "BatchedInterestDrift",
    "BatchedVecEnv",
    "EnvConfig",
    "EnvSpec",
    "InterestDriftEnv",
    "InvalidActionError",
    "RewardWeights",
    "UserDynamics",
    "make_batched_env",
    "make_env",
    "make_vec_env",
]
