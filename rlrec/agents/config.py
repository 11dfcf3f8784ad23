"""Typed settings of an RL agent (``agents/*.yaml``): PPO hyperparameters and the encoder's role.

:class:`AgentConfig` is built with :func:`rlrec.config.from_mapping` from a preset file, so a
typo or a bad value fails at load with the field's name; the resolved configuration is saved
as ``config.yaml`` in the run directory. Bad combinations are caught at construction, as
Stable-Baselines3 does (e.g. a batch size larger than one rollout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlrec.config import from_mapping, load_yaml, resolve_preset
from rlrec.errors import UserError

__all__ = [
    "PRESET_DIR",
    "AgentConfig",
    "EncoderMode",
    "agent_preset_path",
    "load_agent_config",
]

PRESET_DIR = Path(__file__).resolve().parents[2] / "agents"
"""The bundled agent presets (``ppo``, ``ppo_frozen``) in the project's ``agents/`` folder."""

EncoderMode = Literal["finetune", "frozen"]


@dataclass(frozen=True)
class AgentConfig:
    """A PPO agent on the batched simulator.

    Attributes:
        encoder: ``finetune``: the policy runs the pretrained encoder over the observed history
            and trains it; ``frozen``: the env's observations are replaced by the frozen
            encoder's states (computed once per step, not per epoch: fast).
        share_encoder: Fine-tune mode only: actor and critic share one encoder (faster);
            False gives the critic its own copy, so value gradients cannot disturb the
            actor's pretrained features.
        critic_arch: Hidden layer widths of the critic MLP on top of the features.
        head_hidden: Hidden width of the actor's category terms (see
            :class:`rlrec.agents.policy.FactoredActorHead`).
        init_temperature: The untrained policy is the encoder's next-item softmax at this
            temperature (same mode: the greedy supervised choice). Below 1 it starts closer
            to the greedy recommender: sampling a flat softmax over a large catalog earns
            far less than its mode, and PPO would first spend updates sharpening it.
        mask_recent: Mask (sb3-contrib MaskablePPO) the catalog items among the last
            ``mask_recent`` steps of the history; 0 uses plain PPO with no masking.
        n_envs: Simulated users stepped together (the batched env's N).
        n_steps: Steps per user per rollout; a rollout has ``n_envs * n_steps`` transitions.
        batch_size: Minibatch size of the PPO update.
        n_epochs: Passes over each rollout.
        learning_rate: Adam learning rate (constant).
        gamma: Discount factor of the long-term return.
        gae_lambda: GAE bias/variance trade-off.
        clip_range: PPO ratio clipping.
        ent_coef: Entropy bonus weight.
        vf_coef: Value loss weight.
        max_grad_norm: Gradient norm clip.
        target_kl: Stop an update's epochs early past this approximate KL; None never stops.
        total_timesteps: Default training length in env steps (``--timesteps`` overrides).
        checkpoint_every: Save a checkpoint every this many env steps (0: only at the end).
        keep_checkpoints: Checkpoints kept (older ones are deleted).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        num_threads: Torch CPU threads; 0 keeps torch's default.
        encoder_batch_size: Histories per encoder forward pass in frozen mode and evaluation.
        planner: Start the actor from a plan of the fitted user model (frozen encoder only):
            :func:`rlrec.agents.robust.robust_planner` chooses the plan on validation worlds
            spanning the prior of what the log cannot identify, the actor's category logits
            start at its values, and after training the policy is kept only if it does not
            do worse than its start by the same rule (see ``docs/agent.md``).
        prior_temperature: Plan values per logit unit of the actor's category prior.
        selection: How the plan (and the trained policy against its start) is chosen:
            ``safe``, the best mean ratio to the best baseline among those never below it on
            any validation world; ``mean``, the best mean ratio.
        selection_draws: Random prior draws among the validation worlds (besides the centre
            and each parameter's ends).
        selection_episodes: Seeded users per policy and validation world.
        randomize_response: Train with each simulated user's unidentified response
            parameters drawn from the prior (domain randomisation).
    """

    encoder: EncoderMode = "finetune"
    share_encoder: bool = False
    critic_arch: tuple[int, ...] = (64, 64)
    head_hidden: int = 64
    init_temperature: float = 1.0
    mask_recent: int = 0
    n_envs: int = 16
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    total_timesteps: int = 200_000
    checkpoint_every: int = 50_000
    keep_checkpoints: int = 3
    device: str = "cpu"
    num_threads: int = 0
    encoder_batch_size: int = 4096
    planner: bool = False
    prior_temperature: float = 0.1
    selection: Literal["safe", "mean"] = "safe"
    selection_draws: int = 8
    selection_episodes: int = 1000
    randomize_response: bool = False

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.n_envs >= 1, f"n_envs: {self.n_envs}, expected >= 1"),
            (self.n_steps >= 1, f"n_steps: {self.n_steps}, expected >= 1"),
            (self.batch_size >= 2, f"batch_size: {self.batch_size}, expected >= 2"),
            (
                self.batch_size <= self.n_envs * self.n_steps,
                f"batch_size: {self.batch_size} exceeds one rollout (n_envs * n_steps = "
                f"{self.n_envs * self.n_steps}); lower it or raise n_steps",
            ),
            (self.n_epochs >= 1, f"n_epochs: {self.n_epochs}, expected >= 1"),
            (self.learning_rate > 0, f"learning_rate: {self.learning_rate}, expected > 0"),
            (0 < self.gamma <= 1, f"gamma: {self.gamma}, expected in (0, 1]"),
            (0 <= self.gae_lambda <= 1, f"gae_lambda: {self.gae_lambda}, expected in [0, 1]"),
            (self.clip_range > 0, f"clip_range: {self.clip_range}, expected > 0"),
            (self.ent_coef >= 0 and self.vf_coef >= 0, "ent_coef and vf_coef must be >= 0"),
            (self.max_grad_norm > 0, f"max_grad_norm: {self.max_grad_norm}, expected > 0"),
            (
                self.target_kl is None or self.target_kl > 0,
                f"target_kl: {self.target_kl}, expected > 0 or null",
            ),
            (self.total_timesteps >= 1, "total_timesteps must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.mask_recent >= 0, f"mask_recent: {self.mask_recent}, expected >= 0"),
            (all(w >= 1 for w in self.critic_arch), "critic_arch widths must be >= 1"),
            (self.head_hidden >= 1, f"head_hidden: {self.head_hidden}, expected >= 1"),
            (
                self.init_temperature > 0,
                f"init_temperature: {self.init_temperature}, expected > 0",
            ),
            (self.num_threads >= 0, "num_threads must be >= 0"),
            (self.encoder_batch_size >= 1, "encoder_batch_size must be >= 1"),
            (
                not self.planner or self.encoder == "frozen",
                "planner: true needs encoder: frozen",
            ),
            (
                not self.planner or self.mask_recent == 0,
                "planner: true needs mask_recent: 0",
            ),
            (self.prior_temperature > 0, "prior_temperature must be > 0"),
            (self.selection_draws >= 0, "selection_draws must be >= 0"),
            (self.selection_episodes >= 1, "selection_episodes must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"agent.{message}")

    @property
    def rollout_size(self) -> int:
        """Transitions per rollout, ``n_envs * n_steps``."""
        return self.n_envs * self.n_steps


def agent_preset_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a bundled agent preset name or a YAML path (see :func:`rlrec.config.resolve_preset`).

    Raises:
        UserError: If neither exists.
    """
    return resolve_preset(name_or_path, PRESET_DIR, "agent")


def load_agent_config(name_or_path: str | os.PathLike[str]) -> AgentConfig:
    """Load an :class:`AgentConfig` from a YAML preset (a path or a bundled name).

    Raises:
        UserError: Naming the file and the offending field.
    """
    path = agent_preset_path(name_or_path)
    return from_mapping(AgentConfig, load_yaml(path), where=path.name)
