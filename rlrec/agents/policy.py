"""The PPO agent around the pretrained encoder: model building, transfer init, masking, protocol.

Actor: a linear head over the features ``[state, step_feature]`` whose weights start as the
encoder's next-item head gathered at the catalog items (item output vectors and item biases;
zeros on the step feature). At initialisation the actor's logits over catalog action ``a``
are therefore exactly the encoder's next-item logits of dataset item ``item_ids[a]``: the
untrained policy is the supervised recommender's softmax restricted to the catalog, and its
mode is the greedy supervised baseline's choice (transfer). PPO then moves the whole head (and,
when fine-tuning, the encoder) toward what pays over a session. Critic: a small MLP on the
same features.

Masking (``mask_recent > 0``): sb3-contrib's MaskablePPO with :class:`RecentItemMask`, which
forbids the catalog items among the last ``mask_recent`` history steps.

:class:`AgentPolicy` puts a trained model behind the policy protocol of ``DESIGN.md``
(``predict`` and ``action_probabilities`` on the simulator's raw observations), applying the
frozen encoder and the mask itself, so evaluation treats it like any baseline.

The SB3 model is held, not subclassed: only keyword arguments and weights are set here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from rlrec.agents.config import AgentConfig
from rlrec.agents.features import EncoderFeatures, encode_features
from rlrec.errors import UserError
from rlrec.models.encoder import SequenceEncoder

Model = PPO | MaskablePPO


def token_to_action_table(item_ids: np.ndarray, n_item_tokens: int) -> np.ndarray:
    """Lookup from item token (dataset item + 1) to catalog action; -1 for non-catalog tokens.

    Args:
        item_ids: (A,) dataset item index of each catalog action.
        n_item_tokens: Size of the token vocabulary (padding 0 included).

    Returns:
        (n_item_tokens,) int64 table.
    """
    table = np.full(n_item_tokens, -1, dtype=np.int64)
    table[np.asarray(item_ids, dtype=np.int64) + 1] = np.arange(len(item_ids))
    return table


def recent_item_mask(
    item_history: np.ndarray, token_to_action: np.ndarray, n_actions: int, recent: int
) -> np.ndarray:
    """Allowed actions: every catalog item except those among the last ``recent`` steps.

    Args:
        item_history: (B, L) item tokens, most recent last.
        token_to_action: Table from :func:`token_to_action_table`.
        n_actions: A.
        recent: How many of the most recent steps to mask (<= L is used).

    Returns:
        (B, A) bool, True where the action is allowed.
    """
    history = np.asarray(item_history, dtype=np.int64)
    mask = np.ones((len(history), n_actions), dtype=bool)
    if recent <= 0:
        return mask
    recent_actions = token_to_action[history[:, -recent:]]  # (B, r), -1 = not in catalog
    rows = np.repeat(np.arange(len(history)), recent_actions.shape[1])
    flat = recent_actions.ravel()
    keep = flat >= 0
    mask[rows[keep], flat[keep]] = False
    return mask


class RecentItemMask(VecEnvWrapper):
    """Expose ``action_masks()`` (MaskablePPO's hook) from the last raw observations.

    Args:
        venv: The simulator's VecEnv (Dict token observations).
        token_to_action: Table from :func:`token_to_action_table`.
        recent: Steps of history to mask.
    """

    def __init__(self, venv: VecEnv, token_to_action: np.ndarray, recent: int) -> None:
        super().__init__(venv)
        n = getattr(venv.action_space, "n", None)
        if n is None:
            raise UserError("mask_recent needs a Discrete action space")
        if recent >= int(n):
            raise UserError(f"agent.mask_recent: {recent} would mask the whole catalog of {n}")
        self.n_actions = int(n)
        self.token_to_action = token_to_action
        self.recent = recent
        self._history: np.ndarray | None = None

    def reset(self) -> Any:
        """Reset and remember the histories."""
        obs = self.venv.reset()
        assert isinstance(obs, dict)
        self._history = np.asarray(obs["item_history"])
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        """Step and remember the histories (of the new users where episodes ended)."""
        obs, rewards, dones, infos = self.venv.step_wait()
        assert isinstance(obs, dict)
        self._history = np.asarray(obs["item_history"])
        return obs, rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        """(N, A) bool allowed actions for the current observations."""
        if self._history is None:
            raise UserError("action_masks() before reset()")
        return recent_item_mask(self._history, self.token_to_action, self.n_actions, self.recent)

    def has_attr(self, attr_name: str) -> bool:
        """True for ``action_masks``; otherwise asks the wrapped env."""
        return attr_name == "action_masks" or self.venv.has_attr(attr_name)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """``action_masks`` returns one row per user; other methods go to the wrapped env."""
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in self._get_indices(indices)]
        return self.venv.env_method(method_name, *method_args, indices=indices, **method_kwargs)


def build_model(
    config: AgentConfig,
    venv: VecEnv,
    encoder: SequenceEncoder,
    item_ids: np.ndarray,
    seed: int,
    tensorboard_log: str | None = None,
) -> Model:
    """A fresh PPO (or MaskablePPO) whose actor starts as the encoder's next-item head.

    Args:
        config: The agent settings.
        venv: The training VecEnv: Dict token observations (``finetune``) or
            :class:`~rlrec.agents.features.FrozenEncoderStates` features (``frozen``); with a
            :class:`RecentItemMask` inside when ``mask_recent > 0``.
        encoder: The pretrained encoder (its weights are copied, never shared).
        item_ids: (A,) dataset item of each catalog action.
        seed: Seed of the policy's initialisation and sampling.
        tensorboard_log: Folder for TensorBoard event files, or None.

    Returns:
        The model, ready for ``learn``.
    """
    policy_kwargs: dict[str, Any] = {
        "net_arch": {"pi": [], "vf": list(config.critic_arch)},
        "activation_fn": torch.nn.Tanh,
    }
    if config.encoder == "finetune":
        policy_kwargs.update(
            features_extractor_class=EncoderFeatures,
            features_extractor_kwargs={
                "encoder_config": {
                    f: getattr(encoder.config, f) for f in encoder.config.__dataclass_fields__
                },
                "n_items": encoder.n_items,
                "n_categories": encoder.n_categories,
            },
            share_features_extractor=config.share_encoder,
        )
        policy_name = "MultiInputPolicy"
    else:
        policy_name = "MlpPolicy"
    kwargs: dict[str, Any] = {
        "n_steps": config.n_steps,
        "batch_size": config.batch_size,
        "n_epochs": config.n_epochs,
        "learning_rate": config.learning_rate,
        "gamma": config.gamma,
        "gae_lambda": config.gae_lambda,
        "clip_range": config.clip_range,
        "ent_coef": config.ent_coef,
        "vf_coef": config.vf_coef,
        "max_grad_norm": config.max_grad_norm,
        "target_kl": config.target_kl,
        "policy_kwargs": policy_kwargs,
        "tensorboard_log": tensorboard_log,
        "seed": seed,
        "device": config.device,
        "verbose": 0,
    }
    algo: type[PPO] | type[MaskablePPO] = MaskablePPO if config.mask_recent > 0 else PPO
    model = algo(policy_name, venv, **kwargs)
    init_from_encoder(model, encoder, item_ids)
    return model


@torch.no_grad()
def init_from_encoder(model: Model, encoder: SequenceEncoder, item_ids: np.ndarray) -> None:
    """Copy the pretrained encoder into the policy's extractors and its head into the actor.

    Args:
        model: A freshly built model.
        encoder: The pretrained encoder.
        item_ids: (A,) dataset item of each catalog action.
    """
    policy = model.policy
    state = encoder.state_dict()
    for extractor in {
        id(m): m for m in policy.modules() if isinstance(m, EncoderFeatures)
    }.values():
        extractor.encoder.load_state_dict(state)
    ids = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
    vectors = encoder.item_output_vectors()[ids].to(policy.device)  # (A, d)
    bias = encoder.item_bias[ids].to(policy.device)  # (A,)
    head = policy.action_net
    assert isinstance(head, torch.nn.Linear)
    if head.out_features != len(ids) or head.in_features != encoder.state_dim + 1:
        raise UserError(
            f"actor head {head.in_features}->{head.out_features} does not match the encoder "
            f"(d={encoder.state_dim}) and catalog ({len(ids)} actions)"
        )
    head.weight.zero_()
    head.weight[:, : encoder.state_dim] = vectors  # the step feature column stays 0
    head.bias.copy_(bias)


class AgentPolicy:
    """A trained model behind the policy protocol, on the simulator's raw observations.

    Args:
        model: The trained PPO or MaskablePPO.
        encoder: The frozen encoder for ``frozen`` agents (features are computed here);
            None for ``finetune`` agents (the policy holds its encoder).
        token_to_action: Table from :func:`token_to_action_table` (needed with masking).
        mask_recent: Steps of history masked (0: none).
        batch_size: Histories per frozen-encoder forward pass.
    """

    def __init__(
        self,
        model: Model,
        encoder: SequenceEncoder | None = None,
        token_to_action: np.ndarray | None = None,
        mask_recent: int = 0,
        batch_size: int = 4096,
    ) -> None:
        if mask_recent > 0 and token_to_action is None:
            raise ValueError("masking needs token_to_action")
        self.model = model
        self.encoder = encoder
        self.token_to_action = token_to_action
        self.mask_recent = mask_recent
        self.batch_size = batch_size
        self.n_actions = int(getattr(model.action_space, "n", 0))

    def _prepare(self, obs: dict[str, np.ndarray]) -> tuple[Any, np.ndarray | None]:
        masks = None
        if self.mask_recent > 0:
            assert self.token_to_action is not None
            masks = recent_item_mask(
                obs["item_history"], self.token_to_action, self.n_actions, self.mask_recent
            )
        if self.encoder is not None:
            return encode_features(self.encoder, obs, self.batch_size), masks
        return {k: np.asarray(obs[k]) for k in ("item_history", "category_history", "step")}, masks

    def predict(
        self,
        obs: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """(B,) catalog actions for a batch of raw observations (SB3's signature).

        Args:
            obs: The simulator's observation dict, batched (B, ...).
            state: Recurrent state (unused, returned as is).
            episode_start: Unused (no recurrence).
            deterministic: The most likely action rather than a sample.

        Returns:
            (B,) int64 actions and ``state``.
        """
        policy_obs, masks = self._prepare(obs)
        if masks is not None:
            assert isinstance(self.model, MaskablePPO)
            actions, _ = self.model.predict(
                policy_obs, deterministic=deterministic, action_masks=masks
            )
        else:
            actions, _ = self.model.predict(policy_obs, deterministic=deterministic)
        return np.asarray(actions, dtype=np.int64).reshape(-1), state

    @torch.no_grad()
    def action_probabilities(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, A) the policy's action distribution for a batch of raw observations."""
        policy_obs, masks = self._prepare(obs)
        policy = self.model.policy
        policy.set_training_mode(False)
        obs_tensor, _ = policy.obs_to_tensor(policy_obs)
        if masks is not None:
            dist = policy.get_distribution(obs_tensor, action_masks=masks)  # type: ignore[call-arg]
        else:
            dist = policy.get_distribution(obs_tensor)
        probs = dist.distribution.probs  # type: ignore[union-attr]
        return probs.cpu().numpy().astype(np.float64)
