"""Interest-drift simulator: the single Gymnasium env, the batched vector env, the SB3 adapter.

Importing this package registers one id, ``rlrec/InterestDrift-v0``, with both entry points:
``gymnasium.make`` gives the single env, ``gymnasium.make_vec`` with
``vectorization_mode="vector_entry_point"`` the batched one (N users in one numpy step)::

    import gymnasium as gym
    import rlrec.envs

    env = gym.make("rlrec/InterestDrift-v0", sim_model="logs/sim", dataset="logs/data")
    vec = gym.make_vec(
        "rlrec/InterestDrift-v0", num_envs=64, vectorization_mode="vector_entry_point",
        sim_model="logs/sim", dataset="logs/data",
    )

Registration adds no ``TimeLimit``: the env truncates at ``max_steps`` itself.
``BatchedVecEnv`` and ``make_vec_env`` (the Stable-Baselines3 ``VecEnv``, module
:mod:`rlrec.envs.sb3_vec_env`) load on first use, since SB3 imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gymnasium.envs.registration import register, registry

from rlrec.envs.batched import BatchedInterestDrift, make_batched_env
from rlrec.envs.config import EnvConfig, EnvSpec, RewardWeights
from rlrec.envs.dynamics import OUTCOMES, InvalidActionError, UserDynamics
from rlrec.envs.interest_drift import InterestDriftEnv, make_env
from rlrec.envs.lifecycle import ReturnProcess
from rlrec.lazy import lazy_exports

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

# The SB3 adapter imports torch (through Stable-Baselines3): load it on first use only.
_LAZY = {name: "rlrec.envs.sb3_vec_env" for name in ("BatchedVecEnv", "make_vec_env")}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "ENV_ID",
    "OUTCOMES",
    "BatchedInterestDrift",
    "BatchedVecEnv",
    "EnvConfig",
    "EnvSpec",
    "InterestDriftEnv",
    "InvalidActionError",
    "ReturnProcess",
    "RewardWeights",
    "UserDynamics",
    "make_batched_env",
    "make_env",
    "make_vec_env",
]
