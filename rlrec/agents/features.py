"""The pretrained encoder as the policy's eyes: a features extractor and a frozen-state wrapper.

Features of an observation are ``[state, context, category]`` (:data:`N_EXTRA` columns after
the state), every one a function of the observation alone:

* ``state``: the encoder's (d,) state of the observed history (dataset tokens, most recent
  last);
* ``context``: ``log(1 + t) / 5`` of the session step ``t`` (the leave hazard depends on it)
  and a one-hot of the current category streak (how many of the last history steps share the
  last step's category: 1..5, 6 or more; users tire of long streaks). The encoder sees both
  implicitly; stating them lets the critic and the actor's category head use them directly;
* ``category``: the last step's category token (dataset category + 1), as a float, for the
  actor's category head (:class:`rlrec.agents.policy.FactoredActorHead`); the critic never
  reads it (a token id is not a magnitude).

Planned agents (``planner: true``) get K more columns after the summaries: the plan's prior,
``(Q_k - max_k Q) / temperature`` of each catalog category slot (:class:`CategoryPrior`, from
the :class:`~rlrec.agents.planner.PlanTable` of the fitted user model).

Two ways to get them:

* :class:`EncoderFeatures` (``encoder: finetune``): an SB3 ``BaseFeaturesExtractor`` that runs a
  :class:`~rlrec.models.encoder.SequenceEncoder` on the token observations, so PPO's gradients
  fine-tune it. Dropout is off: a stochastic features extractor would make PPO's probability
  ratios noisy.
* :class:`FrozenEncoderStates` (``encoder: frozen``): a ``VecEnvWrapper`` that replaces the
  token observations by the frozen encoder's features once per env step, so the PPO update
  never runs the transformer (it would otherwise run it ``n_epochs`` times per transition).
  Frozen agents also freeze the actor's item term, and the wrapper appends its per-category
  summaries ``[L, H]`` (2K columns; :class:`rlrec.agents.categorical.CatalogTerm`), so the
  update never evaluates the A item logits either.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from rlrec.agents.categorical import CatalogTerm, catalog_slots
from rlrec.agents.planner import PlanTable
from rlrec.models.encoder import EncoderConfig, SequenceEncoder, category_streak

__all__ = [
    "N_CONTEXT",
    "N_EXTRA",
    "STEP_SCALE",
    "STREAK_BINS",
    "CategoryPrior",
    "EncoderFeatures",
    "FrozenEncoderStates",
    "encode_features",
    "extra_features",
    "feature_width",
    "rl_encoder",
    "step_feature",
]

STEP_SCALE = 5.0
"""``log(1 + t) / STEP_SCALE`` keeps the step feature near [0, 1] for sessions up to ~150 steps."""

STREAK_BINS = 6
"""Current-streak one-hot bins: streaks 1..5 and 6 or more."""

N_CONTEXT = 1 + STREAK_BINS
"""Context columns after the state: the step feature and the streak one-hot."""

N_EXTRA = N_CONTEXT + 1
"""Columns after the state: the context and the last category token."""


def step_feature(step: torch.Tensor) -> torch.Tensor:
    """(B, 1) scaled log session step from (B, 1) steps (any numeric dtype)."""
    return torch.log1p(step.float().clamp(min=0)) / STEP_SCALE


def extra_features(category_history: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The columns after the state: step feature, streak one-hot, last category token.

    Args:
        category_history: (B, L) category tokens, most recent last (0 = padding).
        step: (B, 1) session steps.

    Returns:
        (B, N_EXTRA) float32.
    """
    history = category_history.long()
    # The encoder's own streak count at the last position (0 for an empty history -> bin 1).
    streak = category_streak(history, STREAK_BINS)[:, -1]  # (B,)
    bins = torch.nn.functional.one_hot(streak.clamp(min=1) - 1, STREAK_BINS)
    return torch.cat([step_feature(step), bins.float(), history[:, -1:].float()], dim=1)


def rl_encoder(config: EncoderConfig, n_items: int, n_categories: int) -> SequenceEncoder:
    """An encoder of the given shape with dropout off (its weights are loaded afterwards).

    ``item_category`` is a saved buffer, so the placeholder zeros here are replaced by the
    checkpoint's (or by a saved policy's) values when the state dict is loaded.
    """
    quiet = dataclasses.replace(config, dropout=0.0)
    return SequenceEncoder(quiet, n_items, n_categories, np.zeros(n_items, dtype=np.int64))


class CategoryPrior:
    """The plan's values as category logits of the actor, per catalog category slot.

    Args:
        plan: The solved plan (sim categories).
        slot_category: (K,) dataset category of each slot (:func:`catalog_slots`).
        category_of_dataset_category: (C,) sim category of each dataset category.
        temperature: Value units per logit unit: ``(Q - max Q) / temperature``.
    """

    def __init__(
        self,
        plan: PlanTable,
        slot_category: np.ndarray,
        category_of_dataset_category: np.ndarray,
        temperature: float,
    ) -> None:
        self.plan = plan
        self.slot_sim = np.asarray(category_of_dataset_category, dtype=np.int64)[
            np.asarray(slot_category, dtype=np.int64)
        ]
        self.temperature = float(temperature)

    @classmethod
    def for_catalog(
        cls,
        plan: PlanTable,
        encoder: SequenceEncoder,
        item_ids: np.ndarray,
        category_of_dataset_category: np.ndarray,
        temperature: float,
    ) -> CategoryPrior:
        """The prior over the slots of a catalog (its actions' dataset categories)."""
        ids = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
        slot_category, _ = catalog_slots(encoder.item_category[ids].cpu())
        return cls(plan, slot_category.numpy(), category_of_dataset_category, temperature)

    @property
    def n_slots(self) -> int:
        """K, the columns this prior adds."""
        return len(self.slot_sim)

    def __call__(self, obs: dict[str, Any]) -> torch.Tensor:
        """(B, K) float32 prior logits of batched token observations."""
        values = self.plan.category_values(obs)[:, self.slot_sim]  # (B, K)
        best = values.max(axis=1, keepdims=True)
        return torch.as_tensor((values - best) / self.temperature, dtype=torch.float32)


class EncoderFeatures(BaseFeaturesExtractor):
    """Run the (trainable) sequence encoder over token observations.

    Args:
        observation_space: The env's Dict space (``item_history``, ``category_history``,
            ``step``).
        encoder_config: :class:`EncoderConfig` fields as a plain dict (picklable with the
            saved policy).
        n_items: Item vocabulary of the encoder's dataset.
        n_categories: Category vocabulary of the encoder's dataset.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        encoder_config: dict[str, Any],
        n_items: int,
        n_categories: int,
    ) -> None:
        config = EncoderConfig(**encoder_config)
        super().__init__(observation_space, features_dim=config.d_model + N_EXTRA)
        self.encoder = rl_encoder(config, n_items, n_categories)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features ``[state, context, category]`` (see the module docstring).

        Args:
            observations: ``item_history`` and ``category_history`` (B, L) tokens (SB3 hands
                them over as floats; token ids are exact in float32), ``step`` (B, 1).

        Returns:
            (B, d + N_EXTRA) features.
        """
        items = observations["item_history"].long()  # (B, L)
        categories = observations["category_history"].long()  # (B, L)
        state = self.encoder.encode(items, categories)  # (B, d)
        extra = extra_features(categories, observations["step"])  # (B, N_EXTRA)
        return torch.cat([state, extra], dim=1)


@torch.inference_mode()
def encode_features(
    encoder: SequenceEncoder,
    obs: dict[str, np.ndarray],
    batch_size: int = 4096,
    catalog: CatalogTerm | None = None,
    prior: CategoryPrior | None = None,
) -> np.ndarray:
    """Frozen features ``[state, context, category]`` of a batch of token observations.

    Args:
        encoder: The encoder (evaluated without gradients, in eval mode).
        obs: ``item_history``, ``category_history`` (B, L) int tokens and ``step`` (B, 1).
        batch_size: Histories per forward pass.
        catalog: When given, the summaries ``[L, H]`` (2K columns) of this frozen item term
            at each state are appended (see :mod:`rlrec.agents.categorical`).
        prior: When given (with ``catalog``), its K prior columns are appended last.

    Returns:
        (B, d + N_EXTRA [+ 2K [+ K]]) float32 features.
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    if was_training:  # toggling modes walks every submodule: only when needed
        encoder.eval()
    items = torch.as_tensor(np.asarray(obs["item_history"]), dtype=torch.long)
    cats = torch.as_tensor(np.asarray(obs["category_history"]), dtype=torch.long)
    steps = torch.as_tensor(np.asarray(obs["step"]).reshape(len(items), 1))
    priors = prior(obs) if prior is not None else None
    out = []
    for lo in range(0, len(items), batch_size):
        state = encoder.encode(
            items[lo : lo + batch_size].to(device), cats[lo : lo + batch_size].to(device)
        ).cpu()  # (b, d)
        parts = [state, extra_features(cats[lo : lo + batch_size], steps[lo : lo + batch_size])]
        if catalog is not None:
            parts.append(catalog.summaries(state))
        if priors is not None:
            parts.append(priors[lo : lo + batch_size])
        out.append(torch.cat(parts, dim=1))
    if was_training:
        encoder.train()
    if not out:
        return np.zeros((0, feature_width(encoder, catalog, prior)), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def feature_width(
    encoder: SequenceEncoder, catalog: CatalogTerm | None, prior: CategoryPrior | None
) -> int:
    """Width of :func:`encode_features`' output."""
    return (
        encoder.state_dim
        + N_EXTRA
        + (2 * catalog.n_slots if catalog else 0)
        + (prior.n_slots if prior else 0)
    )


class FrozenEncoderStates(VecEnvWrapper):
    """Replace token observations by frozen features, ``Box((d + N_EXTRA [+ 2K],), float32)``.

    Terminal observations in ``infos`` (SB3 bootstraps truncated episodes from them) are
    encoded too, all of a step's in one batch.

    Args:
        venv: A VecEnv with the simulator's Dict observations.
        encoder: The pretrained encoder; it is put in eval mode and never trained here.
        batch_size: Histories per forward pass.
        catalog: The actor's frozen item term; its category summaries are appended (see
            :func:`encode_features`).
        prior: The plan's prior columns, appended last (planned agents).
    """

    def __init__(
        self,
        venv: VecEnv,
        encoder: SequenceEncoder,
        batch_size: int = 4096,
        catalog: CatalogTerm | None = None,
        prior: CategoryPrior | None = None,
    ) -> None:
        self.encoder = encoder.eval()
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        self.batch_size = batch_size
        self.catalog = catalog
        self.prior = prior
        dim = feature_width(encoder, catalog, prior)
        space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        super().__init__(venv, observation_space=space)

    def _encode(self, obs: VecEnvObs) -> np.ndarray:
        assert isinstance(obs, dict)
        return encode_features(self.encoder, obs, self.batch_size, self.catalog, self.prior)

    def reset(self) -> np.ndarray:
        """Reset the users and return their features."""
        return self._encode(self.venv.reset())

    def step_wait(self) -> VecEnvStepReturn:
        """Step the users and return their features (terminal observations encoded too)."""
        obs, rewards, dones, infos = self.venv.step_wait()
        assert isinstance(obs, dict)
        finished = [i for i, info in enumerate(infos) if "terminal_observation" in info]
        if not finished:
            return self._encode(obs), rewards, dones, infos
        # One forward pass for the current and the terminal observations together.
        terminal = [infos[i]["terminal_observation"] for i in finished]
        batch = {
            key: np.concatenate([np.asarray(obs[key]), np.stack([t[key] for t in terminal])])
            for key in obs
        }
        encoded = self._encode(batch)
        n = len(rewards)
        for row, i in enumerate(finished):
            infos[i]["terminal_observation"] = encoded[n + row]
        return encoded[:n], rewards, dones, infos
