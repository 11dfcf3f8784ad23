"""``BatchedVecEnv``: the batched simulator as a Stable-Baselines3 ``VecEnv``.

In its own module because Stable-Baselines3 imports torch: ``import rlrec.envs`` stays light
and loads this on first use of ``rlrec.envs.BatchedVecEnv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from rlrec.envs.batched import BatchedInterestDrift, make_batched_env
from rlrec.envs.config import EnvSpec
from rlrec.envs.dynamics import StepResult
from rlrec.envs.interest_drift import ConfigLike, DatasetLike, ModelLike
from rlrec.errors import UserError

__all__ = [
    "BatchedVecEnv",
    "make_vec_env",
]


class BatchedVecEnv(VecEnv):
    """Stable-Baselines3 ``VecEnv`` over :class:`BatchedInterestDrift` (N users = N envs).

    Auto-reset as SB3 expects: when user ``i`` finishes, ``step_wait`` returns the new user's
    observation in row ``i``, ``infos[i]["terminal_observation"]`` (the finished episode's
    last observation) and ``infos[i]["TimeLimit.truncated"]`` (True when it hit
    ``max_steps`` rather than leaving). ``seed(s)`` then ``reset()`` seeds the one shared
    generator with ``s``.

    The N "envs" are users of one simulator, so ``get_attr``/``set_attr`` read and write the
    simulator's attributes (the same for every index; ``set_attr`` must target all indices),
    and ``env_method`` calls a simulator method once, splitting a result with N rows into one
    row per index (e.g. ``env_method("interest")`` gives each user's (K,) interest).

    Args:
        num_envs: N users, or pass ``env``.
        sim_model: A SimModel or its directory.
        dataset: Its PreparedDataset or directory.
        config: An EnvConfig or a mapping of its fields.
        env: An existing :class:`BatchedInterestDrift` to wrap instead.
    """

    def __init__(
        self,
        num_envs: int | None = None,
        sim_model: ModelLike | None = None,
        dataset: DatasetLike = None,
        config: ConfigLike = None,
        env: BatchedInterestDrift | None = None,
    ) -> None:
        if env is None:
            if num_envs is None:
                raise UserError("BatchedVecEnv: pass num_envs (and a sim_model) or env")
            env = BatchedInterestDrift(num_envs, sim_model, dataset, config)
        self.env = env
        self._actions: np.ndarray | None = None
        # What the last step did (engaged, outcome, item) for callbacks that log it.
        self.last_step: StepResult | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    def reset(self) -> VecEnvObs:
        """Start N new users; uses the seed given to :meth:`seed`, once."""
        seed = self._seeds[0]
        obs, _ = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return dict(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Store the (N,) actions for :meth:`step_wait`."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step all users; see the class docstring for auto-reset."""
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        result, done, final = self.env._advance(self._actions)
        self._actions = None
        self.last_step = result
        state = self.env._state
        assert state is not None
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        truncated = result.truncated
        for i in done.tolist():
            infos[i]["terminal_observation"] = {key: rows[i] for key, rows in final.items()}
            infos[i]["TimeLimit.truncated"] = bool(truncated[i])
        obs = self.env.observation(state)
        dones = result.terminated | result.truncated
        return obs, result.reward.astype(np.float32), dones, infos

    def close(self) -> None:
        """Close the simulator."""
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The simulator's attribute, once per index."""
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set a simulator attribute (shared by all users, so indices must cover all)."""
        targets = list(self._get_indices(indices))
        if sorted(targets) != list(range(self.num_envs)):
            raise UserError(
                f"set_attr({attr_name!r}) on users {targets}: the users share one simulator, "
                "so attributes can only be set for all of them (indices=None)"
            )
        setattr(self.env, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a simulator method once; a result with N rows is split per index."""
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        targets: Iterable[int] = self._get_indices(indices)
        if isinstance(result, np.ndarray) and result.shape[:1] == (self.num_envs,):
            return [result[i] for i in targets]
        return [result for _ in targets]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Users are not separate Gymnasium envs, so none is wrapped."""
        return [False for _ in self._get_indices(indices)]


def make_vec_env(spec: EnvSpec | Mapping[str, Any]) -> BatchedVecEnv:
    """Build a Stable-Baselines3 :class:`BatchedVecEnv` from a plain dict of ``EnvSpec`` fields."""
    return BatchedVecEnv(env=make_batched_env(spec))
