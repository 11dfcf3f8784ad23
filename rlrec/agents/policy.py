"""The PPO agent around the pretrained encoder: model building, transfer init, masking, protocol.

Actor (:class:`FactoredActorHead`), over the features ``[state, context, category]`` of
:mod:`rlrec.agents.features`: the logit of catalog action ``a`` with category ``k(a)`` is

    item(state)[a] + adjust(state, context)[k(a)] + gate(state, context) * [k(a) == current]

The item term is a linear map whose weights start as the encoder's next-item head gathered at
the catalog items (item output vectors and item biases, divided by ``init_temperature``), and
the last layers of ``adjust`` (a K-way category bias) and ``gate`` (one number: lean towards or
away from the user's current category) start at zero. At initialisation the actor's logits are
therefore exactly the encoder's next-item logits of dataset item ``item_ids[a]`` at that
temperature: the untrained policy is the supervised recommender's softmax restricted to the
catalog, and its mode is the greedy supervised baseline's choice (transfer). PPO then moves the
category terms (and, when fine-tuning, the item term and the encoder) toward what pays over a
session. The category terms are why: what a long-term policy changes first is *which
category* to show (leave a category before the user tires of it, favour categories that
buy), a move that needs K + 1 numbers per state instead of A item logits. Critic: a small MLP
on ``[state, context]``.

Frozen-encoder agents keep the item term frozen as well (the within-category choice stays the
supervised one, sharpened by ``init_temperature``), which makes the distribution factor into a
category and an item within it (:mod:`rlrec.agents.categorical`): the observation carries the
item term's per-category summaries and a PPO update costs O(K) per sample instead of O(A).
The policy's ``forward``, ``evaluate_actions`` and ``_predict`` use that factored form and an
inverse-CDF sampler instead of ``torch.distributions.Categorical``.

Masking (``mask_recent > 0``): sb3-contrib's MaskablePPO with :class:`RecentItemMask`, which
forbids the catalog items among the last ``mask_recent`` history steps.

:class:`AgentPolicy` puts a trained model behind the policy protocol of ``DESIGN.md``
(``predict`` and ``action_probabilities`` on the simulator's raw observations), applying the
frozen encoder and the mask itself, so evaluation treats it like any baseline.

The SB3 model is held, not subclassed: only keyword arguments and weights are set here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from rlrec.agents import categorical
from rlrec.agents.categorical import CatalogTerm
from rlrec.agents.config import AgentConfig
from rlrec.agents.features import (
    N_CONTEXT,
    N_EXTRA,
    CategoryPrior,
    EncoderFeatures,
    encode_features,
)
from rlrec.errors import UserError
from rlrec.models.encoder import SequenceEncoder

__all__ = [
    "AgentPolicy",
    "FactoredActorHead",
    "MaskableRecommenderPolicy",
    "Model",
    "RecentItemMask",
    "RecommenderPolicy",
    "build_model",
    "init_from_encoder",
    "recent_item_mask",
    "token_to_action_table",
]

Model = PPO | MaskablePPO

if TYPE_CHECKING:

    class _PolicyBase(BasePolicy):
        """What the build mixin uses of both SB3 actor-critic bases (for the type checker)."""

        mlp_extractor: Any

        def _build(self, lr_schedule: Any) -> None: ...

else:
    _PolicyBase = object


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


class FactoredActorHead(torch.nn.Module):
    """Catalog logits = item term + category adjustment + current-category gate.

    Features are ``[state (d), context (N_CONTEXT), category token (1)]``, followed with
    ``frozen_item_term`` by the item term's summaries ``[L (K), H (K)]`` (see
    :mod:`rlrec.agents.categorical`; K is the number of categories present in the catalog).

    Args:
        state_dim: d, the encoder state's width.
        item_category: (A,) category index (dataset categories, 0-based) of each action.
        n_categories: C, the dataset's category count.
        hidden: Width of the hidden layer shared by the category terms.
        frozen_item_term: The item term is not trained and its summaries come with the
            features (frozen-encoder agents); otherwise it is trained and summarised here.
        category_prior: The features end with K prior logits of a plan
            (:class:`rlrec.agents.features.CategoryPrior`); the category term is then
            ``prior - L + adjust + gate``, so that at initialisation the category
            distribution is the plan's softmax (needs ``frozen_item_term``).
    """

    def __init__(
        self,
        state_dim: int,
        item_category: list[int],
        n_categories: int,
        hidden: int,
        frozen_item_term: bool = False,
        category_prior: bool = False,
    ) -> None:
        super().__init__()
        if category_prior and not frozen_item_term:
            raise UserError("agent.planner needs encoder: frozen (a frozen item term)")
        self.state_dim = state_dim
        self.n_categories = n_categories
        self.frozen_item_term = frozen_item_term
        self.category_prior = category_prior
        index = torch.as_tensor(item_category, dtype=torch.long)
        self.register_buffer("item_category", index)
        slot_category, action_slot = categorical.catalog_slots(index)
        self.n_slots = len(slot_category)
        # Derived from item_category, so not saved.
        self.register_buffer("slot_category", slot_category, persistent=False)
        self.register_buffer("action_slot", action_slot, persistent=False)
        self.item = torch.nn.Linear(state_dim, len(item_category))
        if frozen_item_term:
            self.item.requires_grad_(False)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(state_dim + N_CONTEXT, hidden), torch.nn.Tanh()
        )
        self.category = torch.nn.Linear(hidden, n_categories + 1)  # C biases and the gate
        torch.nn.init.zeros_(self.category.weight)
        torch.nn.init.zeros_(self.category.bias)

    @property
    def out_features(self) -> int:
        """A, the number of actions."""
        return self.item.out_features

    @property
    def features_dim(self) -> int:
        """Width of the features this head reads."""
        return (
            self.state_dim
            + N_EXTRA
            + (2 * self.n_slots if self.frozen_item_term else 0)
            + (self.n_slots if self.category_prior else 0)
        )

    def _learned_terms(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) the trained part of ``c``: adjustment plus the gate on the current category."""
        context_end = self.state_dim + N_CONTEXT
        current = features[:, context_end].long() - 1  # (B,) token -> category; none -> -1
        terms = self.category(self.body(features[:, :context_end]))  # (B, C + 1)
        slot_category: torch.Tensor = self.slot_category  # type: ignore[assignment]
        adjust = terms[:, :-1].index_select(1, slot_category)  # (B, K)
        is_current = slot_category.unsqueeze(0) == current.unsqueeze(1)  # (B, K)
        return adjust + terms[:, -1:] * is_current

    def _summaries_and_prior(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``L`` (B, K) of the frozen item term and the plan's prior (B, K) in the features."""
        start = self.state_dim + N_EXTRA
        log_norm = features[:, start : start + self.n_slots]
        return log_norm, features[:, start + 2 * self.n_slots : start + 3 * self.n_slots]

    def category_terms(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) category term ``c``: adjustment plus the gate on the current category."""
        out = self._learned_terms(features)
        if self.category_prior:
            # P(k) is softmax(c + L): with c = prior - L + learned terms, P starts at the plan.
            log_norm, prior = self._summaries_and_prior(features)
            out = out + prior - log_norm
        return out

    @torch.no_grad()
    def mode(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) the deterministic action: the likeliest category, then its likeliest item.

        Heads with a plan's prior act by this factored mode rather than the joint argmax of
        the logits: the joint argmax weighs a category by its best item and, through ``- L``,
        by how its mass spreads over its items, so an untrained policy would leave the plan's
        category wherever another category's items are more concentrated. Categories of equal
        probability (slots that the plan merges into one category, at the same prior) go to
        the one holding the best item: with the plan's popularity item term
        (:meth:`rlrec.agents.categorical.CatalogTerm.from_popularity`), the slot of the
        merged category's most popular item, which is the plan's. Untrained, the mode is
        therefore exactly the plan's action (tests check it).

        Args:
            features: (B, features_dim) features.

        Raises:
            ValueError: If the head has no plan prior.
        """
        if not self.category_prior:
            raise ValueError("the factored mode needs a head with a plan's prior")
        action_slot: torch.Tensor = self.action_slot  # type: ignore[assignment]
        # log P(k) up to a constant: c + L = prior + learned terms (summed directly, so that
        # slots at the same prior tie exactly rather than up to the rounding of - L + L).
        _, prior = self._summaries_and_prior(features)
        score = prior + self._learned_terms(features)  # (B, K)
        items = self.item(features[:, : self.state_dim])  # (B, A)
        index = action_slot.expand(len(items), -1)
        top = items.new_full((len(items), self.n_slots), -torch.inf)
        top = top.scatter_reduce(1, index, items, "amax")  # (B, K) best item per slot
        tied = score == score.max(dim=1, keepdim=True).values
        slot = torch.where(tied, top, -torch.inf).argmax(dim=1)  # (B,)
        inside = action_slot.unsqueeze(0) == slot.unsqueeze(1)  # (B, A)
        return torch.where(inside, items, -torch.inf).argmax(dim=1)

    def forward(
        self, features: torch.Tensor, category_terms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, A) action logits from (B, features_dim) features.

        Args:
            features: The features.
            category_terms: (B, K) :meth:`category_terms` of the features, if at hand.
        """
        if category_terms is None:
            category_terms = self.category_terms(features)
        action_slot: torch.Tensor = self.action_slot  # type: ignore[assignment]
        by_slot = category_terms.index_select(1, action_slot)  # (B, A)
        # In place: the item term's own backward does not need its output.
        return self.item(features[:, : self.state_dim]).add_(by_slot)

    def log_prob_entropy(
        self,
        features: torch.Tensor,
        actions: torch.Tensor,
        category_terms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(a)`` (B,) of the actions and the entropy (B,) of the policy, factored.

        Exactly those of ``softmax(forward(features))``, in O(K) per row when the summaries
        come with the features (:func:`rlrec.agents.categorical.factored_log_prob_entropy`).

        Args:
            features: (B, features_dim) features.
            actions: (B,) actions.
            category_terms: (B, K) :meth:`category_terms` of the features, if at hand.
        """
        if category_terms is None:
            category_terms = self.category_terms(features)
        state = features[:, : self.state_dim]
        action_slot: torch.Tensor = self.action_slot  # type: ignore[assignment]
        if self.frozen_item_term:
            start = self.state_dim + N_EXTRA
            log_norm = features[:, start : start + self.n_slots]
            entropy_within = features[:, start + self.n_slots : start + 2 * self.n_slots]
        else:
            log_norm, entropy_within = categorical.category_summaries(
                self.item(state), action_slot, self.n_slots
            )
        actions = actions.long()
        item_taken = (self.item.weight[actions] * state).sum(dim=1) + self.item.bias[actions]
        return categorical.factored_log_prob_entropy(
            category_terms,
            log_norm,
            entropy_within,
            item_taken,
            action_slot[actions],
        )

    def catalog_term(self) -> categorical.CatalogTerm:
        """The item term as a frozen :class:`~rlrec.agents.categorical.CatalogTerm`."""
        action_slot: torch.Tensor = self.action_slot  # type: ignore[assignment]
        return categorical.CatalogTerm(
            self.item.weight.detach().cpu(),
            self.item.bias.detach().cpu(),
            action_slot.cpu(),
            self.n_slots,
        )


class _CriticOnly(torch.nn.Module):
    """SB3's ``mlp_extractor`` slot: features pass to the actor; the critic reads the context.

    Args:
        feature_dim: Width of the features.
        critic_in: Leading columns the critic reads: ``[state, context]`` (never the
            category token, an id rather than a magnitude).
        critic_arch: Hidden widths of the critic.
        activation_fn: Activation class of the critic.
    """

    def __init__(
        self,
        feature_dim: int,
        critic_in: int,
        critic_arch: list[int],
        activation_fn: type[torch.nn.Module],
    ) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        self.critic_in = width = critic_in
        for size in critic_arch:
            layers += [torch.nn.Linear(width, size), activation_fn()]
            width = size
        self.value_net = torch.nn.Sequential(*layers)
        self.latent_dim_pi = feature_dim
        self.latent_dim_vf = width

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent_pi, latent_vf)``."""
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """The features themselves (the actor head reads their layout)."""
        return features

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        """The critic MLP on ``[state, context]``."""
        return self.value_net(features[:, : self.critic_in])


def _state_dim(policy: Any, extra: dict[str, Any]) -> int:
    """d, the state's width, from an SB3 policy's feature width and the head's arguments."""
    n_slots = len(set(extra["item_category"]))
    summaries = 2 * n_slots if extra["frozen_item_term"] else 0
    prior = n_slots if extra.get("category_prior", False) else 0
    return int(policy.features_dim) - N_EXTRA - summaries - prior


def _critic_extractor(policy: Any, extra: dict[str, Any]) -> Any:
    """The :class:`_CriticOnly` extractor for an SB3 policy (its ``net_arch['vf']``)."""
    net_arch = policy.net_arch
    critic = list(net_arch.get("vf", [])) if isinstance(net_arch, dict) else list(net_arch)
    critic_in = _state_dim(policy, extra) + N_CONTEXT
    return _CriticOnly(policy.features_dim, critic_in, critic, policy.activation_fn)


def _install_head(policy: Any, lr_schedule: Any, extra: dict[str, Any]) -> None:
    """Replace the built policy's linear actor by :class:`FactoredActorHead`; new optimizer.

    Args:
        policy: A just-built SB3 actor-critic policy.
        lr_schedule: Its learning-rate schedule.
        extra: The policy's extra constructor arguments (see :class:`RecommenderPolicy`).
    """
    policy.action_net = FactoredActorHead(
        _state_dim(policy, extra),
        item_category=extra["item_category"],
        n_categories=extra["n_categories"],
        hidden=extra["head_hidden"],
        frozen_item_term=extra["frozen_item_term"],
        category_prior=extra.get("category_prior", False),
    )
    trainable = [p for p in policy.parameters() if p.requires_grad]
    policy.optimizer = policy.optimizer_class(
        trainable, lr=lr_schedule(1), **policy.optimizer_kwargs
    )


def _extra_kwargs(
    item_category: list[int],
    n_categories: int,
    head_hidden: int,
    frozen_item_term: bool,
    category_prior: bool,
) -> dict[str, Any]:
    """The extra constructor arguments as plain values (saved with the model)."""
    return {
        "item_category": [int(k) for k in item_category],
        "n_categories": int(n_categories),
        "head_hidden": int(head_hidden),
        "frozen_item_term": bool(frozen_item_term),
        "category_prior": bool(category_prior),
    }


class _RecommenderBuild(_PolicyBase):
    """What both policy classes change in SB3's build: extra arguments, critic, actor head.

    Extra keyword arguments (kept in the saved model, so ``load`` rebuilds the same head):
    ``item_category`` (A,) category index per action, ``n_categories``, ``head_hidden``,
    ``frozen_item_term`` and ``category_prior`` (see :class:`FactoredActorHead`; models saved
    before they existed load without them, as they were trained).
    """

    def __init__(
        self,
        *args: Any,
        item_category: list[int],
        n_categories: int,
        head_hidden: int = 64,
        frozen_item_term: bool = False,
        category_prior: bool = False,
        **kwargs: Any,
    ) -> None:
        self._extra = _extra_kwargs(
            item_category, n_categories, head_hidden, frozen_item_term, category_prior
        )
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _critic_extractor(self, self._extra)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        _install_head(self, lr_schedule, self._extra)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self._extra}


class RecommenderPolicy(_RecommenderBuild, ActorCriticPolicy):
    """SB3's actor-critic with the factored actor head and a token-blind critic.

    Takes the extra keyword arguments of :class:`_RecommenderBuild`.
    """

    # SB3's forward, evaluate_actions and _predict with torch.distributions.Categorical
    # replaced by the factored distribution of rlrec.agents.categorical (the same
    # distribution, seeded the same way; far less work per update).

    def _latents(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent_pi, latent_vf)`` of a batch of observations."""
        features = self.extract_features(obs)
        if self.share_features_extractor:
            latent_pi, latent_vf = self.mlp_extractor(features)
            return latent_pi, latent_vf
        pi_features, vf_features = features
        return (
            self.mlp_extractor.forward_actor(pi_features),
            self.mlp_extractor.forward_critic(vf_features),
        )

    def forward(
        self, obs: Any, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions (B,), values (B, 1) and the actions' log-probabilities (B,) (rollouts)."""
        latent_pi, latent_vf = self._latents(obs)
        head = self._actor_head()
        terms = head.category_terms(latent_pi)  # (B, K)
        probs = torch.softmax(head(latent_pi, terms), dim=1)  # (B, A)
        if deterministic:
            actions = head.mode(latent_pi) if head.category_prior else probs.argmax(dim=1)
        else:
            actions = categorical.sample(probs)
        # The update's own formula, so that the first ratio of every update is exactly 1.
        log_prob, _ = head.log_prob_entropy(latent_pi, actions, terms)
        return actions, self.value_net(latent_vf), log_prob

    def evaluate_actions(
        self, obs: Any, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Values (B, 1), log-probabilities (B,) and entropies (B,) of taken actions (updates)."""
        latent_pi, latent_vf = self._latents(obs)
        log_prob, entropy = self._actor_head().log_prob_entropy(latent_pi, actions)
        return self.value_net(latent_vf), log_prob, entropy

    def _actor_head(self) -> FactoredActorHead:
        head = self.action_net
        assert isinstance(head, FactoredActorHead)
        return head

    def _predict(self, observation: Any, deterministic: bool = False) -> torch.Tensor:
        """(B,) actions (SB3's ``predict`` calls this)."""
        latent_pi = self._latents(observation)[0]
        head = self._actor_head()
        if deterministic and head.category_prior:
            return head.mode(latent_pi)  # the plan's action when untrained (FactoredActorHead)
        probs = torch.softmax(head(latent_pi), dim=1)  # (B, A)
        return probs.argmax(dim=1) if deterministic else categorical.sample(probs)


class MaskableRecommenderPolicy(_RecommenderBuild, MaskableActorCriticPolicy):
    """:class:`RecommenderPolicy` for sb3-contrib's MaskablePPO (same extra arguments)."""


def build_model(
    config: AgentConfig,
    venv: VecEnv,
    encoder: SequenceEncoder,
    item_ids: np.ndarray,
    seed: int,
    tensorboard_log: str | None = None,
    catalog: CatalogTerm | None = None,
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
        catalog: The item term to start from (the one the frozen wrapper summarises); the
            encoder's next-item head at ``init_temperature`` when None.

    Returns:
        The model, ready for ``learn``.
    """
    ids = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
    policy_kwargs: dict[str, Any] = {
        "net_arch": {"pi": [], "vf": list(config.critic_arch)},
        "activation_fn": torch.nn.Tanh,
        "item_category": encoder.item_category[ids].tolist(),
        "n_categories": encoder.n_categories,
        "head_hidden": config.head_hidden,
        # With frozen encoder states the item term is frozen too and its category summaries
        # come with the features (FrozenEncoderStates), so updates cost O(K), not O(A).
        "frozen_item_term": config.encoder == "frozen",
        "category_prior": config.planner,
        # SB3's Adam eps; fused: one kernel for all parameters (6x faster steps on CPU).
        "optimizer_kwargs": {"eps": 1e-5, "fused": True},
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
    masked = config.mask_recent > 0
    policy_class: Any = MaskableRecommenderPolicy if masked else RecommenderPolicy
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
    algo: type[PPO] | type[MaskablePPO] = MaskablePPO if masked else PPO
    model = algo(policy_class, venv, **kwargs)
    init_from_encoder(model, encoder, item_ids, config.init_temperature, catalog)
    return model


@torch.no_grad()
def init_from_encoder(
    model: Model,
    encoder: SequenceEncoder,
    item_ids: np.ndarray,
    temperature: float = 1.0,
    catalog: CatalogTerm | None = None,
) -> None:
    """Copy the pretrained encoder into the policy's extractors and its head into the actor.

    Args:
        model: A freshly built model.
        encoder: The pretrained encoder.
        item_ids: (A,) dataset item of each catalog action.
        temperature: The initial policy is the encoder's softmax at this temperature (the
            item term's weights and biases are divided by it; the mode is unchanged).
        catalog: The item term to copy instead of the encoder's head (planned agents).
    """
    policy = model.policy
    state = encoder.state_dict()
    for extractor in {
        id(m): m for m in policy.modules() if isinstance(m, EncoderFeatures)
    }.values():
        extractor.encoder.load_state_dict(state)
    ids = np.asarray(item_ids, dtype=np.int64)
    term = catalog if catalog is not None else CatalogTerm.from_encoder(encoder, ids, temperature)
    head = policy.action_net
    assert isinstance(head, FactoredActorHead)
    if head.out_features != len(ids) or head.state_dim != encoder.state_dim:
        raise UserError(
            f"actor head (d={head.state_dim}, {head.out_features} actions) does not match "
            f"the encoder (d={encoder.state_dim}) and catalog ({len(ids)} actions)"
        )
    # The same numbers as the frozen wrapper's CatalogTerm (make_training_env), so the
    # summaries in the features are this head's.
    head.item.weight.copy_(term.weight.to(policy.device))
    head.item.bias.copy_(term.bias.to(policy.device))
    # The category terms' output layer is zero (FactoredActorHead), so the logits are the
    # encoder's; SB3's orthogonal init never touches it (the head is built after that init).
    head.category.weight.zero_()
    head.category.bias.zero_()


class AgentPolicy:
    """A trained model behind the policy protocol, on the simulator's raw observations.

    Args:
        model: The trained PPO or MaskablePPO.
        encoder: The frozen encoder for ``frozen`` agents (features are computed here);
            None for ``finetune`` agents (the policy holds its encoder).
        token_to_action: Table from :func:`token_to_action_table` (needed with masking).
        mask_recent: Steps of history masked (0: none).
        batch_size: Histories per frozen-encoder forward pass.
        prior: The plan's prior columns (planned agents; see
            :class:`rlrec.agents.features.CategoryPrior`).
    """

    def __init__(
        self,
        model: Model,
        encoder: SequenceEncoder | None = None,
        token_to_action: np.ndarray | None = None,
        mask_recent: int = 0,
        batch_size: int = 4096,
        prior: CategoryPrior | None = None,
    ) -> None:
        if mask_recent > 0 and token_to_action is None:
            raise ValueError("masking needs token_to_action")
        self.model = model
        self.encoder = encoder
        self.token_to_action = token_to_action
        self.mask_recent = mask_recent
        self.batch_size = batch_size
        self.prior = prior
        self.n_actions = int(getattr(model.action_space, "n", 0))

    def _prepare(self, obs: dict[str, np.ndarray]) -> tuple[Any, np.ndarray | None]:
        masks = None
        if self.mask_recent > 0:
            assert self.token_to_action is not None
            masks = recent_item_mask(
                obs["item_history"], self.token_to_action, self.n_actions, self.mask_recent
            )
        if self.encoder is not None:
            head = self.model.policy.action_net
            assert isinstance(head, FactoredActorHead)
            catalog = head.catalog_term() if head.frozen_item_term else None
            features = encode_features(self.encoder, obs, self.batch_size, catalog, self.prior)
            return features, masks
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
        if policy.training:  # the switch walks every submodule: a quarter of a served request
            policy.set_training_mode(False)
        obs_tensor, _ = policy.obs_to_tensor(policy_obs)
        if masks is not None:
            dist = policy.get_distribution(obs_tensor, action_masks=masks)  # type: ignore[call-arg]
        else:
            dist = policy.get_distribution(obs_tensor)
        probs = dist.distribution.probs  # type: ignore[union-attr]
        return probs.cpu().numpy().astype(np.float64)
