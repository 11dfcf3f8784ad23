"""The sequence encoder: a small transformer over interaction histories.

Inputs follow the token contract of :mod:`rlrec.models.sequences` (item and category tokens
are dataset index + 1, ``0`` is left padding, most recent step last), which is also the form
of the simulator's observations, so the encoder reads exactly what the agent sees.

Architecture (SASRec-style, pre-norm): the embedding of a step is
``item_embedding[item] + category_embedding[category] + position_embedding[p] +
streak_embedding[s]``, where ``p`` counts real steps from the start of the window (``0`` for
the oldest visible step), so a prefix gets the same positions whether it is encoded alone or
inside a longer sequence, and ``s`` is the step's category streak (:func:`category_streak`).
Attention is causal (a position sees itself and the past); the masked BERT4Rec-style
pretraining objective runs the same weights bidirectionally. Padding keys are never attended.

Heads:

* next item: the dot product of the state with the item's output vector
  ``item_embedding[i] + category_embedding[category(i)]`` plus a per-item bias (tied to the
  input embeddings, so rare items borrow strength from their category);
* next category (the interest-migration task): the dot product with the category's
  embedding plus a per-category bias (tied likewise);
* copy (``EncoderConfig.copy``, a pointer-generator mixture as in RepeatNet): users go back to
  items they have just seen (comparing products), and the tied embeddings of rarely seen items
  are too poor for the generative head to rank them first. A pointer attends from the state at
  step ``t`` over the visible steps ``j <= t`` and the next item's probability is
  ``p(i) = g * p_copy(i) + (1 - g) * p_gen(i)``, with ``p_copy(i)`` the pointer weight summed
  over the steps that show item ``i``, ``p_gen`` the softmax of the generative head above and
  ``g = sigmoid(w . h_t + b)`` a learned gate (``p_gen`` also gets a learned penalty on the
  current item, which a step never repeats; see ``_CopyHead``); everything is in log space
  (:meth:`SequenceEncoder.pointer`, :meth:`SequenceEncoder.next_item_log_probs`). The
  evaluation and :meth:`StateEncoder.next_item_scores` rank by the mixture. The PPO actor head
  and the greedy baseline (``rlrec.agents``) start from the generative head only
  (:meth:`SequenceEncoder.item_logits`, :meth:`SequenceEncoder.item_output_vectors`): the
  simulator's user model does not revisit items, so there is nothing there to copy.
* category copy (``EncoderConfig.category_copy``): the next category mixes the same pointer's
  weights, summed per category of the history steps, with the generative category head,
  through a second learned gate. "Stay in the current category" and "go back to a category
  of this user" are then one pointer step away instead of a direction the state must encode.

Sessions (``EncoderConfig.sessions``): where the input is a user's history across sessions
(:func:`rlrec.models.sequences.history_windows`), each step also adds a session embedding
(its session token: starts a session or continues one), and the copy head gets a learned
bias for history steps in the query's own session. Without session tokens a window is one
session (the env's observations, the session protocol).

:class:`StateEncoder` is the frozen, inference-only interface that envs and agents use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlrec.errors import UserError

__all__ = [
    "BIAS_SCALE",
    "NEG",
    "EncoderConfig",
    "Pointer",
    "SequenceEncoder",
    "StateEncoder",
    "category_streak",
    "session_tokens",
]


@dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of :class:`SequenceEncoder` (vocabulary sizes come from the data).

    Attributes:
        d_model: Width of embeddings and hidden states (the state dimension).
        n_layers: Number of transformer blocks.
        n_heads: Attention heads; must divide ``d_model``.
        max_len: Longest history read, in steps; longer ones keep their most recent steps.
        ff_mult: Width of each block's feed-forward layer, as a multiple of ``d_model``.
        dropout: Dropout on embeddings, attention and feed-forward outputs during training.
        max_streak: Streaks (consecutive steps in one category) longer than this share one
            streak embedding.
        copy: Add the copy (pointer) term to the next-item head (see the module docstring).
            Checkpoints saved before it existed load with ``copy=False``.
        sessions: Read session tokens (a session embedding, and a same-session copy bias).
            Checkpoints saved before it existed load with ``sessions=False``.
        category_copy: Mix the pointer into the next-category head (no effect without ``copy``).
            Checkpoints saved before it existed load with ``category_copy=False``.
        category_recency: The category copy term weighs history steps by its own learned
            recency bias (the query's own step, the current category, first) instead of the
            item pointer's (which keeps the query's own step, the current item, out). No effect
            without ``category_copy``. Checkpoints saved before it existed load with
            ``category_recency=False``.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 50
    ff_mult: int = 4
    dropout: float = 0.2
    max_streak: int = 16
    copy: bool = True
    sessions: bool = True
    category_copy: bool = True
    category_recency: bool = True

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.n_layers < 1 or self.n_heads < 1 or self.max_len < 1:
            raise ValueError("d_model, n_layers, n_heads and max_len must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        if self.ff_mult < 1 or self.max_streak < 1:
            raise ValueError("ff_mult and max_streak must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")


class _Block(nn.Module):
    """Pre-norm transformer block: attention then feed-forward, each with a residual."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, config.ff_mult * d),
            nn.GELU(),
            nn.Linear(config.ff_mult * d, d),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, L, d) hidden states.
            allowed: (B, 1, L, L) bool, True where query ``i`` may attend to key ``j``.
            last_only: Compute the output of the last position only (keys and values still
                come from every position). A state reads nothing else from the last block,
                and this halves its cost.

        Returns:
            (B, L, d) hidden states, or (B, 1, d) with ``last_only``.
        """
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)  # 3 x (B, L, d)
        if last_only:
            q, x, allowed = q[:, -1:], x[:, -1:], allowed[:, :, -1:]
        queries = q.shape[1]
        q = q.reshape(b, queries, self.n_heads, d // self.n_heads).transpose(1, 2)
        k = k.reshape(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)
        v = v.reshape(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, queries, d/H)
        att = att.transpose(1, 2).reshape(b, queries, d)  # (B, queries, d)
        x = x + self.drop(self.proj(att))
        return x + self.drop(self.ff(self.norm2(x)))


NEG = -1e9
"""Log-weight of an impossible event. Finite on purpose: ``-inf`` turns the gradients of
``logsumexp`` and ``log`` into NaN on rows where every term is impossible."""


@dataclass(frozen=True)
class Pointer:
    """The copy term's distribution at a batch of query steps, in log space.

    Leading dimensions ``...`` are the queries: (B, L) from :meth:`SequenceEncoder.pointer`,
    (N,) after selecting positions with ``pointer[mask]``, ``pointer[rows, cols]`` or
    ``pointer[:, -1]``. ``K`` is the window length.

    Attributes:
        log_weights: (..., K) log pointer weight of each visible history step (they sum to one
            over the visible steps), :data:`NEG` where a step is not visible (later, padding).
        history: (..., K) item token at each history step (0 = padding).
        log_gate: (...) log g, the copy share of the mixture (:data:`NEG` without history).
        log_ungate: (...) log (1 - g).
        current: (...) item token of the query step itself (0 at padding).
        history_categories: (..., K) category token at each history step (0 = padding).
        log_category_gate: (...) log of the category copy share, or None without
            ``EncoderConfig.category_copy``.
        log_category_ungate: (...) log of one minus it, or None.
        current_category: (...) category token of the query step itself (0 at padding).
        category_log_weights: (..., K) log weights of the category copy term over the history
            steps (``EncoderConfig.category_recency``), or None: it uses ``log_weights``.
    """

    log_weights: torch.Tensor
    history: torch.Tensor
    log_gate: torch.Tensor
    log_ungate: torch.Tensor
    current: torch.Tensor
    history_categories: torch.Tensor
    log_category_gate: torch.Tensor | None = None
    log_category_ungate: torch.Tensor | None = None
    current_category: torch.Tensor | None = None
    category_log_weights: torch.Tensor | None = None

    def __getitem__(self, index: Any) -> Pointer:
        """Select query positions (any index that selects along the leading dimensions)."""
        return Pointer(
            log_weights=self.log_weights[index],
            history=self.history[index],
            log_gate=self.log_gate[index],
            log_ungate=self.log_ungate[index],
            current=self.current[index],
            history_categories=self.history_categories[index],
            log_category_gate=(
                self.log_category_gate[index] if self.log_category_gate is not None else None
            ),
            log_category_ungate=(
                self.log_category_ungate[index] if self.log_category_ungate is not None else None
            ),
            current_category=(
                self.current_category[index] if self.current_category is not None else None
            ),
            category_log_weights=(
                self.category_log_weights[index] if self.category_log_weights is not None else None
            ),
        )

    def copy_category_log_probs(self, n_categories: int) -> torch.Tensor:
        """Log of the pointer's weight per category: (..., n_categories), NEG where none."""
        log_weights = self.log_weights
        if self.category_log_weights is not None:  # the category pointer's own recency
            log_weights = self.category_log_weights
        weights = log_weights.exp()  # (..., K)
        index = (self.history_categories - 1).clamp(min=0)
        probs = torch.zeros(
            (*weights.shape[:-1], n_categories), dtype=weights.dtype, device=weights.device
        ).scatter_add_(-1, index, weights)  # (..., C)
        tiny = torch.finfo(probs.dtype).tiny
        return torch.where(probs > 0, probs.clamp(min=tiny).log(), torch.full_like(probs, NEG))

    def copy_log_probs(self, n_items: int) -> torch.Tensor:
        """Log p_copy over the catalog: (..., n_items), :data:`NEG` for items not in history."""
        weights = self.log_weights.exp()  # (..., K), 0 where not visible
        index = (self.history - 1).clamp(min=0)  # padding adds weight 0 to item 0
        probs = torch.zeros(
            (*weights.shape[:-1], n_items), dtype=weights.dtype, device=weights.device
        ).scatter_add_(-1, index, weights)  # (..., n_items)
        tiny = torch.finfo(probs.dtype).tiny
        return torch.where(probs > 0, probs.clamp(min=tiny).log(), torch.full_like(probs, NEG))

    def target_log_copy(self, targets: torch.Tensor) -> torch.Tensor:
        """Log p_copy of each query's target: (...,) from (...,) dataset item indices."""
        hit = self.history == (targets + 1).unsqueeze(-1)  # (..., K)
        return torch.logsumexp(self.log_weights.masked_fill(~hit, NEG), dim=-1)


BIAS_SCALE = 10.0
"""Scale of the copy head's scalar biases (its parameters hold bias / BIAS_SCALE)."""

RECENCY_PRIOR = 2.0
"""Initial pointer score of a history step ``d`` steps back: ``-RECENCY_PRIOR * log(1 + d)``
(logit units; the step one back gets twice the weight of the step three back)."""

CURRENT_STEP_PRIOR = 6.0
"""Initial pointer penalty on the query's own step (logit units)."""


class _CopyHead(nn.Module):
    """Pointer scores over the history and the copy gate (see :meth:`SequenceEncoder.pointer`).

    Besides the content score ``(W_q h_t) . (W_k h_j) / sqrt(d)`` a pair ``(t, j)`` gets learned
    scalar biases: one per distance ``t - j`` (recency, as T5's relative attention bias), one
    when step ``j`` shows the current item (collapsed steps never repeat it), one when ``j``
    is in the current category, and one when ``j`` is inside the current category streak.
    Dot products cannot express "``j`` is after the streak's start", and the streak is where
    revisits happen (comparing products of one interest), so the biases hand it over.

    ``repeat_bias`` is added to the generative logit of the query's own item. With tied
    embeddings the state carries that item's embedding, so the generative head ranks the
    current item near the top (measured: in the top 10 for nearly every query), while a step
    is a maximal run of one item and the next step is never the same item. Learned rather than
    a hard mask, so data that does repeat items keeps them.

    The scalar biases are stored divided by :data:`BIAS_SCALE`: Adam moves a parameter by
    about the learning rate per step, so a logit bias stored as is would need thousands of
    steps to reach the several units it is worth.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.gate = nn.Linear(d, 1)
        self.distance_bias = nn.Parameter(torch.zeros(config.max_len))
        self.same_item_bias = nn.Parameter(torch.zeros(()))
        self.same_category_bias = nn.Parameter(torch.zeros(()))
        self.in_streak_bias = nn.Parameter(torch.zeros(()))
        self.repeat_bias = nn.Parameter(torch.zeros(()))
        # Optional parts: absent from checkpoints saved before they existed.
        self.same_session_bias = nn.Parameter(torch.zeros(())) if config.sessions else None
        self.category_gate = nn.Linear(d, 1) if config.category_copy else None
        self.stay_bias = nn.Parameter(torch.zeros(())) if config.category_copy else None
        self.category_distance_bias = (
            nn.Parameter(torch.zeros(config.max_len))
            if config.category_copy and config.category_recency
            else None
        )

    def bias(self, name: str) -> torch.Tensor:
        """The bias ``name`` (a parameter's name) in logit units."""
        return BIAS_SCALE * getattr(self, name)


class SequenceEncoder(nn.Module):
    """Transformer over step histories with next-item and next-category heads.

    Args:
        config: Hyperparameters.
        n_items: Item vocabulary size of the dataset.
        n_categories: Category vocabulary size of the dataset.
        item_category: (n_items,) int dataset category index of each item (for the tied
            item output vectors).
    """

    item_category: torch.Tensor  # (n_items,) long buffer, saved with the weights

    def __init__(
        self,
        config: EncoderConfig,
        n_items: int,
        n_categories: int,
        item_category: np.ndarray | torch.Tensor,
    ) -> None:
        super().__init__()
        if n_items < 1 or n_categories < 1:
            raise ValueError("n_items and n_categories must be positive")
        item_category = torch.tensor(np.asarray(item_category), dtype=torch.long)  # a copy
        if item_category.shape != (n_items,):
            raise ValueError(f"item_category has shape {tuple(item_category.shape)}")
        if n_items and (item_category.min() < 0 or item_category.max() >= n_categories):
            raise ValueError("item_category holds a category outside the vocabulary")
        self.config = config
        self.n_items = n_items
        self.n_categories = n_categories
        # Token layout: 0 = padding, 1..n = dataset index + 1, n + 1 = [MASK].
        self.item_mask_token = n_items + 1
        self.category_mask_token = n_categories + 1
        d = config.d_model
        self.item_embedding = nn.Embedding(n_items + 2, d, padding_idx=0)
        self.category_embedding = nn.Embedding(n_categories + 2, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, d)
        # Index 0 is padding; s = 1..max_streak is the streak (longer ones share the last).
        self.streak_embedding = nn.Embedding(config.max_streak + 1, d, padding_idx=0)
        # Session tokens: 0 = padding, 1 = continues a session, 2 = starts one.
        self.session_embedding = nn.Embedding(3, d, padding_idx=0) if config.sessions else None
        self.embed_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(d)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.category_bias = nn.Parameter(torch.zeros(n_categories))
        self.register_buffer("item_category", item_category, persistent=True)
        self.copy_head = _CopyHead(config) if config.copy else None
        self._init_weights()

    def _init_weights(self) -> None:
        # Small normal init as in GPT-2/nanoGPT: large embeddings make the tied item scores
        # saturate the softmax at the start of training.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
        for block in self.blocks:
            assert isinstance(block, _Block)
            # Scaled residual projections (GPT-2): keeps the residual stream's variance flat.
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * self.config.n_layers))
        if self.copy_head is not None:
            # Start mostly generative (g = 0.12); the trainer sets the gates from the data's
            # repeat shares before training (:meth:`init_copy_gates`).
            nn.init.constant_(self.copy_head.gate.bias, -2.0)
            if self.copy_head.category_gate is not None:
                nn.init.constant_(self.copy_head.category_gate.bias, -2.0)
            # The pointer starts as the re-visit rule: most recent first (-RECENCY_PRIOR x
            # log(1 + distance)), and the query's own step (distance 0, the current item,
            # which a collapsed step never repeats) far down. Measured on the Taobao sample:
            # from uniform weights, a few hundred optimizer steps left the pointer's order
            # below plain recency (NDCG@10 0.084 vs 0.087); from recency it only has to learn
            # where to depart from it.
            distance = torch.arange(self.config.max_len, dtype=torch.float32)
            prior = -RECENCY_PRIOR * torch.log1p(distance)
            prior[0] = -CURRENT_STEP_PRIOR
            with torch.no_grad():
                self.copy_head.distance_bias.copy_(prior / BIAS_SCALE)
                if self.copy_head.category_distance_bias is not None:
                    # Categories: the last-category rule, then the categories seen most
                    # recently; the query's own step (its category) is the strongest.
                    self.copy_head.category_distance_bias.copy_(
                        -RECENCY_PRIOR * torch.log1p(distance) / BIAS_SCALE
                    )

    def init_copy_gates(self, item_share: float, category_share: float) -> None:
        """Start the copy gates at the data's repeat shares (a no-op without a copy head).

        ``item_share`` is the share of training targets whose item is in the visible history,
        ``category_share`` the share whose category is. A gate that starts there puts the
        pointer's mass where the data does from the first step: Adam moves the gate's bias by
        about the learning rate per step, too slow to find a share far from its start in the
        few hundred steps a small log gives (measured on the Taobao sample: the gate stayed
        near its 0.12 start (0.13 after training) while 18% of the targets were re-visits).

        Args:
            item_share: In [0, 1]; clipped to [0.02, 0.98] so both parts keep a gradient.
            category_share: In [0, 1]; likewise.
        """
        head = self.copy_head
        if head is None:
            return
        with torch.no_grad():
            head.gate.bias.fill_(_logit(item_share))
            if head.category_gate is not None:
                head.category_gate.bias.fill_(_logit(category_share))

    @property
    def state_dim(self) -> int:
        """Dimension d of a state."""
        return self.config.d_model

    def forward(
        self,
        items: torch.Tensor,
        categories: torch.Tensor,
        causal: bool = True,
        sessions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden state at every position.

        Args:
            items: (B, L) item tokens (index + 1, 0 = left padding); ``L <= max_len`` (longer
                inputs keep their last ``max_len`` columns).
            categories: (B, L) category tokens.
            causal: Whether a position may only see itself and earlier positions (True for
                next-step prediction and every state; False for masked pretraining).
            sessions: (B, L) session tokens (:data:`rlrec.models.sequences.SESSION_STARTS`
                etc.); None: each row is one session.

        Returns:
            (B, L, d) hidden states; row ``b``, column ``t`` summarises the steps up to ``t``
            (all steps when not causal). Padding columns hold meaningless values.
        """
        x, allowed = self._embed(items, categories, causal, sessions)
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)  # (B, L, d)

    def encode(
        self, items: torch.Tensor, categories: torch.Tensor, sessions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """State of each history: the causal hidden state at its most recent step.

        Equal to ``forward(items, categories)[:, -1]``, but the last block computes the last
        position only (the frozen agent runs this once per env step).

        Args:
            items: (B, L) item tokens, left-padded, most recent last.
            categories: (B, L) category tokens.
            sessions: (B, L) session tokens, or None (one session per row).

        Returns:
            (B, d) states (differentiable; use :class:`StateEncoder` for frozen inference).
        """
        x, allowed = self._embed(items, categories, True, sessions)
        *inner, last = self.blocks
        for block in inner:
            x = block(x, allowed)
        return self.final_norm(last(x, allowed, last_only=True)[:, -1])  # (B, d)

    def _embed(
        self,
        items: torch.Tensor,
        categories: torch.Tensor,
        causal: bool,
        sessions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step embeddings and the attention mask (see :meth:`forward` for the arguments).

        Returns:
            (B, L, d) embeddings and the (B, 1, L, L) bool mask of allowed query-key pairs.
        """
        if items.shape != categories.shape or items.dim() != 2:
            raise ValueError(
                f"items {tuple(items.shape)} and categories {tuple(categories.shape)} "
                "must both be (B, L)"
            )
        max_len = self.config.max_len
        if items.shape[1] > max_len:
            items, categories = items[:, -max_len:], categories[:, -max_len:]
            sessions = sessions[:, -max_len:] if sessions is not None else None
        real = items != 0  # (B, L)
        # Positions count real steps from the oldest visible one, so left padding and
        # prefix length do not shift a step's position.
        position = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
        x = (
            self.item_embedding(items)
            + self.category_embedding(categories)
            + self.position_embedding(position)
            + self.streak_embedding(category_streak(categories, self.config.max_streak))
        )  # (B, L, d)
        if self.session_embedding is not None:
            x = x + self.session_embedding(session_tokens(items, sessions))
        x = self.embed_drop(x)
        length = items.shape[1]
        allowed = real[:, None, None, :].expand(-1, 1, length, -1)  # (B, 1, L, L) key mask
        if causal:
            tril = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
            allowed = allowed & tril  # (B, 1, L, L)
        # Every query may see itself, so rows of padding never attend to an empty set (NaN).
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        return x, allowed | eye

    def item_output_vectors(self) -> torch.Tensor:
        """(n_items, d) output vector of each item: its embedding plus its category's."""
        return self.item_embedding.weight[1 : self.n_items + 1] + self.category_embedding(
            self.item_category + 1
        )

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-item scores over the full catalog.

        Args:
            hidden: (..., d) hidden states.

        Returns:
            (..., n_items) unnormalised log-probabilities.
        """
        return hidden @ self.item_output_vectors().T + self.item_bias

    def pointer(
        self,
        hidden: torch.Tensor,
        items: torch.Tensor,
        categories: torch.Tensor,
        sessions: torch.Tensor | None = None,
    ) -> Pointer | None:
        """The copy term at every position: pointer weights over the visible steps and gate.

        Causal: query ``t`` weighs steps ``j <= t`` only (padding never), and its gate reads
        ``h_t``; with causal ``hidden`` nothing at ``t`` depends on later steps.

        Args:
            hidden: (B, K, d) causal hidden states (:meth:`forward`'s output for the tokens).
            items: (B, L) the item tokens they came from (``L >= K``; the last ``K`` columns
                are used, as :meth:`forward` truncates to ``max_len``).
            categories: (B, L) the category tokens.
            sessions: (B, L) session tokens, or None (one session per row).

        Returns:
            A (B, K) :class:`Pointer`, or None when the encoder has no copy term.
        """
        head = self.copy_head
        if head is None:
            return None
        b, length, d = hidden.shape
        items, categories = items[:, -length:], categories[:, -length:]
        sessions = sessions[:, -length:] if sessions is not None else None
        t = torch.arange(length, device=hidden.device)
        distance = t[:, None] - t[None, :]  # (K, K) query t, key j
        visible = (distance >= 0) & (items != 0)[:, None, :]  # (B, K, K)
        streak = category_streak(categories, length)  # (B, K)
        in_streak = distance[None] < streak[:, :, None]  # (B, K, K): t - j < streak_t
        scores = head.query(hidden) @ head.key(hidden).transpose(1, 2) / math.sqrt(d)
        lag = distance.clamp(0, self.config.max_len - 1)  # (K, K)
        scores = (
            scores  # (B, K, K)
            + head.bias("same_item_bias") * (items[:, :, None] == items[:, None, :])
            + head.bias("same_category_bias") * (categories[:, :, None] == categories[:, None, :])
            + head.bias("in_streak_bias") * in_streak
        )
        if head.same_session_bias is not None:
            session_id = (session_tokens(items, sessions) == 2).long().cumsum(dim=1)  # (B, K)
            same_session = session_id[:, :, None] == session_id[:, None, :]  # (B, K, K)
            scores = scores + head.bias("same_session_bias") * same_session

        def normalised(logits: torch.Tensor) -> torch.Tensor:
            log_weights = torch.log_softmax(logits.masked_fill(~visible, NEG), dim=-1)
            return log_weights.masked_fill(~visible, NEG)  # rows without history too

        log_weights = normalised(scores + head.bias("distance_bias")[lag])
        category_log_weights = None
        if head.category_distance_bias is not None:
            category_log_weights = normalised(scores + head.bias("category_distance_bias")[lag])
        has_history = visible.any(dim=-1)  # (B, K)
        gate = head.gate(hidden).squeeze(-1)  # (B, K)
        neg = torch.full_like(gate, NEG)
        log_category_gate = log_category_ungate = None
        if head.category_gate is not None:
            category_gate = head.category_gate(hidden).squeeze(-1)  # (B, K)
            log_category_gate = torch.where(has_history, F.logsigmoid(category_gate), neg)
            log_category_ungate = torch.where(
                has_history, F.logsigmoid(-category_gate), torch.zeros_like(category_gate)
            )
        return Pointer(
            log_weights=log_weights,
            history=items[:, None, :].expand(b, length, length),
            log_gate=torch.where(has_history, F.logsigmoid(gate), neg),
            log_ungate=torch.where(has_history, F.logsigmoid(-gate), torch.zeros_like(gate)),
            current=items,
            history_categories=categories[:, None, :].expand(b, length, length),
            log_category_gate=log_category_gate,
            log_category_ungate=log_category_ungate,
            current_category=categories,
            category_log_weights=category_log_weights,
        )

    def repeat_adjustment(self, ids: torch.Tensor, pointer: Pointer | None) -> torch.Tensor:
        """The learned ``repeat_bias`` where a scored item is the query's own item.

        Args:
            ids: (N, M) or (M,) dataset item index of each scored column.
            pointer: (N,) :class:`Pointer` of the queries, or None.

        Returns:
            (N, M) (or 0 without a copy term) to add to the generative logits.
        """
        if pointer is None or self.copy_head is None:
            return torch.zeros((), device=ids.device)
        same = ids == (pointer.current - 1)[:, None]  # (N, M); padding (-1) matches nothing
        return self.copy_head.bias("repeat_bias") * same

    def with_repeat_bias(self, logits: torch.Tensor, pointer: Pointer | None) -> torch.Tensor:
        """Full-catalog ``logits`` plus :meth:`repeat_adjustment`, touching one cell per row.

        Equal to ``logits + repeat_adjustment(arange(n_items), pointer)`` without building
        the (N, n_items) mask and product: on a catalog of thousands of items those dense
        temporaries cost more than the logits themselves.

        Args:
            logits: (N, n_items) generative logits.
            pointer: (N,) :class:`Pointer`, or None (returns ``logits``).

        Returns:
            (N, n_items) a new tensor.
        """
        if pointer is None or self.copy_head is None:
            return logits
        current = pointer.current - 1  # (N,), -1 at padding
        rows = torch.nonzero(current >= 0).squeeze(1)
        bias = self.copy_head.bias("repeat_bias").expand(len(rows)).to(logits.dtype)
        return logits.index_put((rows, current[rows]), bias, accumulate=True)

    def mix_log_probs(self, logits: torch.Tensor, pointer: Pointer | None) -> torch.Tensor:
        """Next-item log-probabilities of the mixture, from the generative head's logits.

        The generative part is the softmax of ``logits`` plus :meth:`repeat_adjustment`.

        Args:
            logits: (N, n_items) :meth:`item_logits` of the query states.
            pointer: (N,) :class:`Pointer` of the same queries, or None (generative only).

        Returns:
            (N, n_items) log-probabilities ``log(g p_copy + (1 - g) p_gen)``.
        """
        if pointer is None:
            return torch.log_softmax(logits, dim=-1)
        log_gen = torch.log_softmax(self.with_repeat_bias(logits, pointer), dim=-1)
        return torch.logaddexp(
            pointer.log_gate[:, None] + pointer.copy_log_probs(self.n_items),
            pointer.log_ungate[:, None] + log_gen,
        )

    def next_item_log_probs(self, hidden: torch.Tensor, pointer: Pointer | None) -> torch.Tensor:
        """Next-item log-probabilities over the full catalog (the mixture with a copy term).

        Args:
            hidden: (N, d) query states.
            pointer: (N,) their :class:`Pointer` (from :meth:`pointer`), or None.

        Returns:
            (N, n_items) log-probabilities; what evaluation ranks by.
        """
        return self.mix_log_probs(self.item_logits(hidden), pointer)

    def mix_target_log_prob(
        self, log_gen_target: torch.Tensor, pointer: Pointer | None, targets: torch.Tensor
    ) -> torch.Tensor:
        """Log p(target) of the mixture, from the generative head's log p_gen(target).

        Training's loss: exact in the copy part (the history is at most ``max_len`` steps,
        and a target in the history gets its pointer weight), whatever estimates
        ``log_gen_target`` (a full or a sampled softmax, of the logits with
        :meth:`repeat_adjustment` added).

        Args:
            log_gen_target: (N,) log p_gen of each target.
            pointer: (N,) :class:`Pointer` of the queries, or None (returns the input).
            targets: (N,) dataset item index of each target.

        Returns:
            (N,) log-probabilities.
        """
        if pointer is None:
            return log_gen_target
        return torch.logaddexp(
            pointer.log_gate + pointer.target_log_copy(targets),
            pointer.log_ungate + log_gen_target,
        )

    def sampled_item_logits(
        self, hidden: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """Sampled-softmax scores: the target first, then negatives shared by all rows.

        Negatives equal to a row's target are masked to ``-inf`` (accidental hits). The
        caller subtracts the log sampling probabilities (the log-q correction).

        Args:
            hidden: (N, d) hidden states.
            targets: (N,) dataset item index of each row's target.
            negatives: (K,) dataset item indices shared by all rows.

        Returns:
            (N, 1 + K) logits; the cross-entropy target is column 0.
        """
        ids = torch.cat([targets, negatives])  # (N + K,)
        vectors = self.item_embedding(ids + 1) + self.category_embedding(
            self.item_category[ids] + 1
        )  # (N + K, d)
        bias = self.item_bias[ids]  # (N + K,)
        n = targets.shape[0]
        positive = (hidden * vectors[:n]).sum(-1, keepdim=True) + bias[:n, None]  # (N, 1)
        negative = hidden @ vectors[n:].T + bias[n:]  # (N, K)
        negative = negative.masked_fill(targets[:, None] == negatives[None, :], float("-inf"))
        return torch.cat([positive, negative], dim=1)

    def category_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-category scores: the state against the (tied) category embeddings, plus a bias.

        Tying makes "stay in the current category" easy to express: the state carries the
        last step's category embedding through the residual stream.

        Args:
            hidden: (..., d) hidden states.

        Returns:
            (..., n_categories) unnormalised log-probabilities.
        """
        weights = self.category_embedding.weight[1 : self.n_categories + 1]  # (C, d)
        return hidden @ weights.T + self.category_bias

    def next_category_log_probs(
        self, hidden: torch.Tensor, pointer: Pointer | None
    ) -> torch.Tensor:
        """Next-category log-probabilities: the category copy mixture, or the head alone.

        With ``category_copy`` the generative part also gets the learned ``stay_bias`` on the
        query's own category.

        Args:
            hidden: (N, d) query states.
            pointer: (N,) their :class:`Pointer`, or None (generative head only).

        Returns:
            (N, n_categories) log-probabilities; what evaluation ranks by and training fits.
        """
        logits = self.category_logits(hidden)  # (N, C)
        head = self.copy_head
        if pointer is None or pointer.log_category_gate is None or head is None:
            return torch.log_softmax(logits, dim=-1)
        assert pointer.log_category_ungate is not None and pointer.current_category is not None
        assert head.stay_bias is not None
        # Staying in the current category is the most common move in every log we have seen
        # (the last-category rule's accuracy); a learned logit bonus hands it to the head.
        ids = torch.arange(1, self.n_categories + 1, device=logits.device)
        stay = ids[None, :] == pointer.current_category[:, None]  # (N, C)
        log_gen = torch.log_softmax(logits + head.bias("stay_bias") * stay, dim=-1)
        return torch.logaddexp(
            pointer.log_category_gate[:, None] + pointer.copy_category_log_probs(self.n_categories),
            pointer.log_category_ungate[:, None] + log_gen,
        )


def _logit(share: float) -> float:
    p = min(max(float(share), 0.02), 0.98)
    return math.log(p / (1.0 - p))


def session_tokens(items: torch.Tensor, sessions: torch.Tensor | None) -> torch.Tensor:
    """(B, L) session tokens: ``sessions`` as given, or one session per row when None.

    Mirrors :func:`rlrec.models.sequences.session_tokens`: the first real step of a row
    starts its session (2), later real steps continue it (1), padding is 0.
    """
    if sessions is not None:
        return sessions.long()
    real = items != 0
    before = torch.zeros_like(real)
    before[:, 1:] = real[:, :-1]
    return torch.where(real & ~before, 2, real.long())


def category_streak(categories: torch.Tensor, max_streak: int) -> torch.Tensor:
    """Streak at every position: consecutive steps in the current category, ending there.

    The user model's hidden state is (category, streak), and saturation makes the streak
    decide whether a user stays; attention could count it, but handing it over directly is
    what lets a small encoder learn saturation from modest data. Causal: the streak at ``t``
    depends only on categories up to ``t``.

    Args:
        categories: (B, L) category tokens, 0 = padding.
        max_streak: Cap; longer streaks map to ``max_streak``.

    Returns:
        (B, L) long streaks in ``1..max_streak``, 0 at padding.
    """
    length = categories.shape[1]
    t = torch.arange(length, device=categories.device).expand_as(categories)  # (B, L)
    change = torch.ones_like(categories, dtype=torch.bool)
    change[:, 1:] = categories[:, 1:] != categories[:, :-1]
    last_change = torch.cummax(torch.where(change, t, torch.zeros_like(t)), dim=1).values
    streak = (t - last_change + 1).clamp(max=max_streak)
    return torch.where(categories != 0, streak, torch.zeros_like(streak))


class StateEncoder:
    """Frozen, inference-only view of a trained encoder, in the env's observation format.

    Every method takes ``items`` and ``categories`` as (B, L) integer arrays or tensors of
    tokens (dataset index + 1, ``0`` = left padding, most recent step last), exactly the
    ``items`` and ``categories`` entries of the simulator's observations, and runs without
    gradients on the encoder's device.

    Args:
        model: A trained :class:`SequenceEncoder`; it is put in eval mode.
    """

    def __init__(self, model: SequenceEncoder) -> None:
        self.model = model.eval()

    @property
    def device(self) -> torch.device:
        """Device the weights live on."""
        return next(self.model.parameters()).device

    @property
    def state_dim(self) -> int:
        """Dimension d of a state."""
        return self.model.state_dim

    @property
    def n_items(self) -> int:
        """Item vocabulary size (length of a next-item score row)."""
        return self.model.n_items

    @property
    def n_categories(self) -> int:
        """Category vocabulary size (length of a next-category score row)."""
        return self.model.n_categories

    def _sessions(
        self, sessions: torch.Tensor | np.ndarray | None, items: torch.Tensor
    ) -> torch.Tensor | None:
        if sessions is None:
            return None
        st = torch.as_tensor(np.asarray(sessions) if not torch.is_tensor(sessions) else sessions)
        st = st[None] if st.dim() == 1 else st
        if tuple(st.shape) != tuple(items.shape):
            raise UserError(
                f"observation: sessions {tuple(st.shape)} must have the items' shape "
                f"{tuple(items.shape)}"
            )
        return st.long().to(self.device)

    def _tokens(
        self, items: torch.Tensor | np.ndarray, categories: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        it = torch.as_tensor(np.asarray(items) if not torch.is_tensor(items) else items)
        ct = torch.as_tensor(
            np.asarray(categories) if not torch.is_tensor(categories) else categories
        )
        if it.dim() == 1:  # a single observation
            it, ct = it[None], ct[None]
        if it.shape != ct.shape or it.dim() != 2:
            raise UserError(
                f"observation: items {tuple(it.shape)} and categories {tuple(ct.shape)} "
                "must be (B, L) arrays of the same shape"
            )
        it, ct = it.long(), ct.long()
        if it.numel() and (
            it.min() < 0 or it.max() > self.n_items or ct.min() < 0 or ct.max() > self.n_categories
        ):
            raise UserError(
                f"observation: tokens must be dataset index + 1 (items 0..{self.n_items}, "
                f"categories 0..{self.n_categories}); was the encoder trained on this dataset?"
            )
        return it.to(self.device), ct.to(self.device)

    @torch.no_grad()
    def encode(
        self,
        items: torch.Tensor | np.ndarray,
        categories: torch.Tensor | np.ndarray,
        sessions: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """States of a batch of histories.

        Args:
            items: (B, L) item tokens (or (L,) for one history).
            categories: (B, L) category tokens.
            sessions: (B, L) session tokens of user histories, or None (one session per row).

        Returns:
            (B, d) float states on the encoder's device.
        """
        it, ct = self._tokens(items, categories)
        return self.model.encode(it, ct, self._sessions(sessions, it))

    @torch.no_grad()
    def next_item_scores(
        self,
        items: torch.Tensor | np.ndarray,
        categories: torch.Tensor | np.ndarray,
        sessions: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """Next-item log-probabilities over the whole catalog.

        Args:
            items: (B, L) item tokens.
            categories: (B, L) category tokens.
            sessions: (B, L) session tokens, or None (one session per row).

        Returns:
            (B, n_items) log-probabilities; column ``i`` is dataset item ``i``. With the copy
            term (``EncoderConfig.copy``) this is the copy/generate mixture, so items of the
            history rank higher than the generative head alone (:meth:`encode` followed by
            ``model.item_logits``, which the PPO head starts from) would put them.
        """
        it, ct = self._tokens(items, categories)
        st = self._sessions(sessions, it)
        hidden = self.model(it, ct, sessions=st)  # (B, K, d)
        pointer = self.model.pointer(hidden, it, ct, st)
        return self.model.next_item_log_probs(
            hidden[:, -1], pointer[:, -1] if pointer is not None else None
        )

    @torch.no_grad()
    def next_category_scores(
        self,
        items: torch.Tensor | np.ndarray,
        categories: torch.Tensor | np.ndarray,
        sessions: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """Next-category log-probabilities (the category copy mixture when it has one).

        Args:
            items: (B, L) item tokens.
            categories: (B, L) category tokens.
            sessions: (B, L) session tokens, or None (one session per row).

        Returns:
            (B, n_categories) log-probabilities; column ``c`` is dataset category ``c``.
        """
        it, ct = self._tokens(items, categories)
        st = self._sessions(sessions, it)
        hidden = self.model(it, ct, sessions=st)  # (B, K, d)
        pointer = self.model.pointer(hidden, it, ct, st)
        return self.model.next_category_log_probs(
            hidden[:, -1], pointer[:, -1] if pointer is not None else None
        )
