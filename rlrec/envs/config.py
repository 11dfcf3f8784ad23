"""Settings of the interest-drift simulator (single and batched envs alike).

:class:`EnvConfig` holds what the env does with a SimModel (episode length, rewards, how a
user starts); :class:`EnvSpec` adds where the SimModel and the dataset live, so that a plain
dict is enough to build an env in another process (``make_env(spec_dict)``), which is what
distributed engines such as Ray RLlib need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlrec.errors import UserError

__all__ = [
    "EnvConfig",
    "EnvSpec",
    "EpisodeMode",
    "RewardWeights",
    "StartMode",
]

StartMode = Literal["auto", "warm", "stationary"]
EpisodeMode = Literal["session", "lifecycle"]


@dataclass(frozen=True)
class RewardWeights:
    """Reward of a step by its outcome; a missed recommendation always earns 0.

    Attributes:
        engage: Reward of an engaged recommendation that was neither carted nor bought.
        cart: Reward of an engaged recommendation that was carted (and not bought).
        buy: Reward of an engaged recommendation that was bought.
    """

    engage: float = 1.0
    cart: float = 3.0
    buy: float = 10.0


@dataclass(frozen=True)
class EnvConfig:
    """What the simulator does with a SimModel.

    Attributes:
        history_length: L, how many recent steps the observation shows (left-padded with 0).
        max_steps: Episode limit in recommendations; the env truncates itself there.
        catalog_size: The action space is the top ``catalog_size`` catalog items by
            popularity (fewer if the SimModel's catalog is smaller). Organic steps still
            draw from the whole SimModel catalog: the limit is on what may be recommended.
        reward_weights: Reward per outcome (engage, cart, buy).
        start: ``warm``: a user starts from a real logged session prefix of ``warm_split``
            (needs a dataset); ``stationary``: the first category is drawn from the fitted
            distribution of a session's first category and the first item from that
            category by popularity; ``auto``: warm when a dataset is given, else stationary.
        warm_split: The split whose sessions warm starts replay.
        warm_prefix: (min, max) prefix length in steps for warm starts, both >= 1; a session
            shorter than ``min`` is never used, a shorter-than-``max`` one is cut at its end.
        seed: Seed used by the first ``reset()`` when it is given none (so a worker process
            built from a dict is reproducible); None draws fresh entropy.
        randomize_response: Domain randomisation: every new user draws the SimModel's
            unidentified response parameters (provenance ``default``) from their prior
            (:data:`rlrec.models.prior.RESPONSE_PRIOR`) instead of sharing the point values.
        episode: ``session``: an episode is one session (it ends when the user leaves);
            ``lifecycle``: an episode is one user's sessions over ``horizon_days``: when a
            session ends the user returns after a gap drawn from the return process (or drops
            out, which terminates the episode); see :mod:`rlrec.envs.lifecycle`.
        horizon_days: Lifecycle episodes end (truncated) when the next session would start
            after this many days from the first one.
        day_discount: Lifecycle reward of a step in a session starting on day ``d`` is
            multiplied by ``day_discount ** d`` (1: undiscounted engagement over the horizon).
        max_sessions: Lifecycle episodes are truncated after this many sessions (a bound on
            episode length for the most active users).
        return_process: Fields of :class:`rlrec.envs.lifecycle.ReturnProcess` that replace the
            SimModel's (``info["return_process"]``, fitted or the truth's); needed in
            lifecycle mode when the SimModel has none.
    """

    history_length: int = 20
    max_steps: int = 100
    catalog_size: int = 1000
    reward_weights: RewardWeights = field(default_factory=RewardWeights)
    start: StartMode = "auto"
    warm_split: Literal["train", "valid", "test"] = "train"
    warm_prefix: tuple[int, int] = (1, 10)
    seed: int | None = None
    randomize_response: bool = False
    episode: EpisodeMode = "session"
    horizon_days: float = 30.0
    day_discount: float = 1.0
    max_sessions: int = 50
    return_process: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (self.horizon_days > 0 and self.horizon_days < float("inf")):
            raise UserError(f"env.horizon_days: {self.horizon_days}, expected a number > 0")
        if not 0.0 < self.day_discount <= 1.0:
            raise UserError(f"env.day_discount: {self.day_discount}, expected in (0, 1]")
        if self.max_sessions < 1:
            raise UserError(f"env.max_sessions: {self.max_sessions}, expected >= 1")
        if self.history_length < 1:
            raise UserError(f"env.history_length: {self.history_length}, expected >= 1")
        if self.max_steps < 1:
            raise UserError(f"env.max_steps: {self.max_steps}, expected >= 1")
        if self.catalog_size < 1:
            raise UserError(f"env.catalog_size: {self.catalog_size}, expected >= 1")
        lo, hi = self.warm_prefix
        if not 1 <= lo <= hi:
            raise UserError(
                f"env.warm_prefix: {list(self.warm_prefix)}, expected [min, max] with "
                "1 <= min <= max"
            )
        w = self.reward_weights
        for name in ("engage", "cart", "buy"):
            if getattr(w, name) != getattr(w, name):  # NaN
                raise UserError(f"env.reward_weights.{name}: NaN is not a reward")


@dataclass(frozen=True)
class EnvSpec:
    """Everything needed to build an env from files: the form a worker process receives.

    Attributes:
        sim_model: Directory of a SimModel (``rlrec fit`` writes one).
        dataset: Directory of the PreparedDataset the SimModel was fitted on; needed for
            warm starts and to map catalog items to dataset categories exactly.
        env: The simulator settings.
        num_envs: Number of simulated users of a batched env (ignored by the single env).
    """

    sim_model: Path
    dataset: Path | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    num_envs: int = 1

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise UserError(f"num_envs: {self.num_envs}, expected >= 1")
