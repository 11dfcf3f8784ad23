"""``InterestDriftEnv``: one simulated e-commerce user whose interests drift between categories."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlrec.config import from_mapping
from rlrec.data.content import require_items
from rlrec.data.dataset import PreparedDataset, load_dataset
from rlrec.envs.config import EnvConfig, EnvSpec
from rlrec.envs.dynamics import UserDynamics, UserState
from rlrec.errors import UserError
from rlrec.models.sim_model import SimModel, load_sim_model

__all__ = [
    "ConfigLike",
    "DatasetLike",
    "InterestDriftEnv",
    "ModelLike",
    "Observation",
    "existing_dir",
    "make_env",
    "observation_space",
    "resolve_inputs",
]

ModelLike = SimModel | str | os.PathLike[str]
DatasetLike = PreparedDataset | str | os.PathLike[str] | None
ConfigLike = EnvConfig | Mapping[str, Any] | None

Observation = dict[str, Any]  # "item_history", "category_history", "step" arrays


def resolve_inputs(
    sim_model: ModelLike | None, dataset: DatasetLike, config: ConfigLike
) -> tuple[SimModel, PreparedDataset | None, EnvConfig]:
    """Load a SimModel, a dataset and an EnvConfig given as objects, paths or mappings.

    With no ``sim_model``, the embedded synthetic default preset is built (or reused from
    ``logs/cache``), so ``gymnasium.make("rlrec/InterestDrift-v0")`` works on a fresh clone.

    Raises:
        UserError: For a missing or inconsistent SimModel/dataset directory or a bad setting.
    """
    if isinstance(config, EnvConfig):
        cfg = config
    elif config is None:
        cfg = EnvConfig()
    else:
        cfg = from_mapping(EnvConfig, config, "env")
    if sim_model is None:
        from rlrec.envs.presets import build_artifacts, load_env_preset

        preset = load_env_preset("synthetic")
        artifacts = build_artifacts(preset)
        sim_model = artifacts.sim_dir
        if dataset is None:
            dataset = artifacts.dataset_dir
        if config is None:
            cfg = preset.env
    model = sim_model if isinstance(sim_model, SimModel) else load_sim_model(sim_model)
    data = (
        dataset
        if dataset is None or isinstance(dataset, PreparedDataset)
        else load_dataset(dataset)
    )
    if data is not None:
        require_items(data, "the env")
    return model, data, cfg


def observation_space(dynamics: UserDynamics) -> spaces.Dict:
    """The Dict observation space of one user.

    Integer ``Box`` spaces rather than ``MultiDiscrete``: Stable-Baselines3 would one-hot
    ``MultiDiscrete`` (vocabulary x L inputs), while an encoder wants the token ids.
    """
    length = dynamics.history_length
    return spaces.Dict(
        {
            "item_history": spaces.Box(0, dynamics.n_item_tokens - 1, (length,), np.int32),
            "category_history": spaces.Box(0, dynamics.n_category_tokens - 1, (length,), np.int32),
            "step": spaces.Box(1, dynamics.max_session_step, (1,), np.int64),
        }
    )


class InterestDriftEnv(gym.Env[Observation, np.int64]):
    """A recommender facing one user whose interest drifts between categories.

    The user model (fitted from logs, see ``docs/architecture.md#the-user-model``) has a
    hidden current category, a streak (steps spent in it, saturating interest) and a session
    step. Each step the agent recommends one catalog item; the user engages with it with a
    probability that grows with their interest in its category and its popularity. An engaged
    item pulls the user's interest to its category; a miss lets the user drift organically
    along the fitted migration model. Engagement lowers the chance that the user leaves,
    consecutive misses raise it.

    ## Action Space
    ``Discrete(n)``: the catalog item to recommend, ``n = min(catalog_size, SimModel items)``;
    catalog items are ordered by popularity (0 is the most popular). Catalog item ``a`` is
    dataset item ``model.item_ids[a]``. An action outside the space raises
    :class:`rlrec.envs.dynamics.InvalidActionError` (a ``ValueError``).

    ## Observation Space
    ``Dict``:

    * ``item_history``: ``Box(int32, (L,))`` the last L steps' dataset item index + 1, oldest
      first, left-padded with 0;
    * ``category_history``: ``Box(int32, (L,))`` their dataset category index + 1 (0 pads);
    * ``step``: ``Box(int64, (1,))`` the session step ``t`` of the last step (a warm start's
      logged prefix counts; the leave hazard depends on it).

    The tokens are the PreparedDataset's indices, so an encoder trained on the dataset reads
    them directly. (The keys are not ``items``/``categories``: Stable-Baselines3's
    ``CombinedExtractor`` stores one module per key in an ``nn.ModuleDict``, where ``items``
    clashes with ``ModuleDict.items``.)

    The hidden state is in ``info`` only (for oracles and diagnostics): ``interest`` (K,)
    next-category distribution, ``category``, ``streak``, and after a step ``engaged``,
    ``outcome`` (code into :data:`rlrec.envs.dynamics.OUTCOMES`: miss, engage, cart, buy),
    ``item`` (catalog item of the step, -1 if none).

    ## Rewards
    The weight of the recommendation's outcome (default engage 1, cart 3, buy 10); 0 for a
    miss.

    ## Starting State
    ``warm``: a logged session prefix of ``warm_prefix`` steps from the dataset's
    ``warm_split``, its history the real logged items; ``stationary``: a first category drawn
    from the fitted first-category distribution, a first item by popularity. ``auto`` (the
    default) is warm when a dataset is given.

    ## Episode End
    Terminated when the user leaves (the fitted leave hazard, scaled by engagement and
    consecutive misses); truncated after ``max_steps`` recommendations. The env enforces its
    limit itself: it is registered with ``max_episode_steps=None``.

    ## Arguments
    ``InterestDriftEnv(sim_model, dataset=None, config=None, render_mode=None)``; each of
    ``sim_model`` and ``dataset`` is an object or a directory, ``config`` an
    :class:`~rlrec.envs.config.EnvConfig` or a mapping of its fields. With no ``sim_model``,
    the synthetic default preset is built or reused. :func:`make_env` builds one from a plain
    dict (``EnvSpec`` fields), and the env pickles, for worker processes.

    ## Version History
    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        sim_model: ModelLike | None = None,
        dataset: DatasetLike = None,
        config: ConfigLike = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserError(
                f"render_mode {render_mode!r}: expected one of {self.metadata['render_modes']}"
            )
        model, data, cfg = resolve_inputs(sim_model, dataset, config)
        self.model = model
        self.config = cfg
        self.render_mode = render_mode
        self.dynamics = UserDynamics(model, cfg, data)
        self.action_space = spaces.Discrete(self.dynamics.n_actions)
        self.observation_space = observation_space(self.dynamics)
        self._state: UserState | None = None
        self._last_info: dict[str, Any] = {}
        self._seeded = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start a new user; see the class docstring's Starting State."""
        if seed is None and not self._seeded and self.config.seed is not None:
            seed = self.config.seed
        super().reset(seed=seed)
        self._seeded = True
        self._state = self.dynamics.start(1, self.np_random)
        info = self._info(self._state)
        self._last_info = info
        return self._observation(self._state), info

    def step(self, action: Any) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Recommend catalog item ``action``; see the class docstring."""
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        actions = self.dynamics.check_actions(np.asarray(action).reshape(-1), 1)
        self._state, result = self.dynamics.step(self._state, actions, self.np_random)
        info = self._info(self._state)
        info["engaged"] = bool(result.engaged[0])
        info["outcome"] = int(result.outcome[0])
        info["item"] = int(result.item[0])
        self._last_info = info
        return (
            self._observation(self._state),
            float(result.reward[0]),
            bool(result.terminated[0]),
            bool(result.truncated[0]),
            info,
        )

    def render(self) -> str | None:
        """``ansi``: one line with the hidden state and the last tokens."""
        if self.render_mode != "ansi" or self._state is None:
            return None
        s = self._state
        return (
            f"t={int(s.step[0])} category={int(s.category[0])} streak={int(s.streak[0])} "
            f"items={s.items[0, -5:].tolist()} outcome={self._last_info.get('outcome')}"
        )

    def interest(self) -> np.ndarray:
        """(K,) the current user's next-category distribution (for oracle policies)."""
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before interest()")
        return self.dynamics.interest(self._state)[0]

    def _observation(self, state: UserState) -> Observation:
        # Views of arrays that a later step replaces rather than mutates: safe to hand out.
        return {
            "item_history": state.items[0],
            "category_history": state.categories[0],
            "step": state.step[:1],
        }

    def _info(self, state: UserState) -> dict[str, Any]:
        return {
            "interest": self.dynamics.interest(state)[0],
            "category": int(state.category[0]),
            "streak": int(state.streak[0]),
        }


def make_env(spec: EnvSpec | Mapping[str, Any]) -> InterestDriftEnv:
    """Build a single env from a plain dict of :class:`~rlrec.envs.config.EnvSpec` fields.

    Example: ``make_env({"sim_model": "logs/sim", "dataset": "logs/data", "env":
    {"max_steps": 50}})``. This is what a worker process (e.g. a Ray RLlib env creator) calls.

    Raises:
        UserError: Naming a bad field, a missing or inconsistent directory.
    """
    resolved = spec if isinstance(spec, EnvSpec) else from_mapping(EnvSpec, spec, "env_spec")
    return InterestDriftEnv(
        sim_model=existing_dir(resolved.sim_model, "sim_model"),
        dataset=None if resolved.dataset is None else existing_dir(resolved.dataset, "dataset"),
        config=resolved.env,
    )


def existing_dir(path: Path, field_name: str) -> Path:
    """Return ``path`` if it is a directory (the env specs' ``sim_model`` and ``dataset``).

    Raises:
        UserError: Naming ``field_name`` and the path when it is not a directory.
    """
    if not path.is_dir():
        raise UserError(f"{field_name}: {path} is not a directory; check the path")
    return path
