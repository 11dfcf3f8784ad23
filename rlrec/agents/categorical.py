"""The actor's categorical distribution over a large catalog, factored by category.

The actor's logit of catalog action ``a`` in category slot ``k(a)`` is ``z_a = u_a + c_k(a)``:
an item term ``u`` and a category term ``c`` (:class:`rlrec.agents.policy.FactoredActorHead`).
The distribution factors exactly into a category and an item within it::

    p(a) = P(k) q(a | k),   P = softmax_k(c_k + L_k),   q(a | k) = exp(u_a - L_k),

with ``L_k = logsumexp_{a in k} u_a``, and its entropy into ``H(P) + sum_k P_k H_k`` with
``H_k`` the entropy of ``q(. | k)``. Given the per-category summaries ``(L, H)`` of the item
term (:func:`category_summaries`, one pass over the A actions), the log-probability of a taken
action and the entropy cost O(K) per row (:func:`factored_log_prob_entropy`). Frozen-encoder
agents freeze the item term too and carry its summaries in the observation
(:class:`CatalogTerm`, used by :class:`rlrec.agents.features.FrozenEncoderStates`), so a PPO
update never touches the A actions: with A = 1000 that was most of the update's time.

:func:`sample` draws by inverse CDF (a ``cumsum`` and a binary search per row) rather than
``torch.multinomial``'s exponential race over all A actions. Randomness comes from torch's
global generator, so SB3's seeding covers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rlrec.models.encoder import SequenceEncoder

__all__ = [
    "CatalogTerm",
    "catalog_slots",
    "category_summaries",
    "factored_log_prob_entropy",
    "sample",
]


def catalog_slots(item_category: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The categories present in a catalog, and each action's slot among them.

    Args:
        item_category: (A,) dataset category of each catalog action.

    Returns:
        ``slot_category`` (K,) sorted dataset categories with at least one action, and
        ``action_slot`` (A,) the index of each action's category in ``slot_category``.
    """
    slot_category, action_slot = torch.unique(item_category, sorted=True, return_inverse=True)
    return slot_category, action_slot


def category_summaries(
    item_logits: torch.Tensor, action_slot: torch.Tensor, n_slots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-category log-normaliser and entropy of the item term (differentiable).

    Args:
        item_logits: (B, A) item term ``u``.
        action_slot: (A,) category slot of each action.
        n_slots: K.

    Returns:
        ``L`` (B, K) ``logsumexp`` of ``u`` over each category's actions and ``H`` (B, K) the
        entropy of ``softmax(u)`` within each category. Every slot must hold an action.
    """
    rows = item_logits.shape[0]
    index = action_slot.expand(rows, -1)  # (B, A)
    # Per-category max for stability; a constant shift per category, so no gradient needed.
    top = item_logits.new_full((rows, n_slots), -torch.inf)
    top = top.scatter_reduce(1, index, item_logits.detach(), "amax")  # (B, K)
    shifted = item_logits - top.index_select(1, action_slot)  # (B, A), <= 0
    weight = shifted.exp()  # (B, A)
    zeros = item_logits.new_zeros(rows, n_slots)
    total = zeros.index_add(1, action_slot, weight)  # (B, K), >= 1
    moment = zeros.index_add(1, action_slot, weight * shifted)  # (B, K)
    log_total = total.log()
    # H_k = -sum q log q with log q = shifted - log_total: log_total - sum q * shifted.
    return top + log_total, log_total - moment / total


def factored_log_prob_entropy(
    category_terms: torch.Tensor,
    log_norm: torch.Tensor,
    entropy_within: torch.Tensor,
    item_taken: torch.Tensor,
    slot_taken: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of taken actions and the policy's entropy, in O(K) per row.

    Args:
        category_terms: (B, K) category term ``c``.
        log_norm: (B, K) ``L`` from :func:`category_summaries`.
        entropy_within: (B, K) ``H`` from :func:`category_summaries`.
        item_taken: (B,) item term ``u`` of each taken action.
        slot_taken: (B,) category slot of each taken action.

    Returns:
        (B,) ``log p(a)`` and (B,) entropies (nats), equal to those of ``softmax(u + c[k])``.
    """
    log_p_category = torch.log_softmax(category_terms + log_norm, dim=1)  # (B, K)
    p_category = log_p_category.exp()
    taken = slot_taken.unsqueeze(1)
    log_prob = (
        log_p_category.gather(1, taken).squeeze(1)
        + item_taken
        - log_norm.gather(1, taken).squeeze(1)
    )
    entropy = (p_category * (entropy_within - log_p_category)).sum(dim=1)
    return log_prob, entropy


def sample(probs: torch.Tensor) -> torch.Tensor:
    """One action per row, drawn from ``probs`` by inverse CDF.

    Args:
        probs: (B, A) probabilities (rows sum to 1 up to rounding).

    Returns:
        (B,) int64 actions; an action of probability zero is never drawn.
    """
    cdf = probs.cumsum(dim=1)  # (B, A), last column ~1
    total = cdf[:, -1:]  # (B, 1)
    u = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device) * total  # (B, 1)
    # Strictly below the total even where rand * total rounds up to it.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    # The first column whose cumulative mass exceeds u: P(a) = cdf[a] - cdf[a - 1].
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


@dataclass(frozen=True)
class CatalogTerm:
    """A frozen item term ``u = state @ weight.T + bias`` over the catalog, and its summaries.

    Attributes:
        weight: (A, d) one vector per catalog action.
        bias: (A,) one bias per catalog action.
        action_slot: (A,) category slot of each action (:func:`catalog_slots`).
        n_slots: K, the number of category slots.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    action_slot: torch.Tensor
    n_slots: int

    @classmethod
    def from_encoder(
        cls, encoder: SequenceEncoder, item_ids: np.ndarray, temperature: float = 1.0
    ) -> CatalogTerm:
        """The encoder's generative next-item head at the catalog items, at a temperature.

        Args:
            encoder: The pretrained encoder.
            item_ids: (A,) dataset item of each catalog action.
            temperature: The logits are divided by it.

        Returns:
            The term, on the CPU, detached from the encoder.
        """
        ids = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
        with torch.no_grad():
            weight = encoder.item_output_vectors()[ids].detach().cpu() / temperature
            bias = encoder.item_bias[ids].detach().cpu() / temperature
        _, action_slot = catalog_slots(encoder.item_category[ids].cpu())
        return cls(weight, bias, action_slot, int(action_slot.max()) + 1)

    @classmethod
    def from_popularity(
        cls,
        encoder: SequenceEncoder,
        item_ids: np.ndarray,
        popularity: np.ndarray,
        temperature: float = 1.0,
    ) -> CatalogTerm:
        """A state-blind item term: ``log(popularity) / temperature`` within each category.

        Used when the category comes from a plan (:mod:`rlrec.agents.planner`): inside a
        category, the user model engages more with more popular items and their funnel is the
        same, so the plan's item is the most popular one; at a low temperature this term's mode
        is that item and the policy still samples its neighbours.

        Args:
            encoder: The pretrained encoder (its state width and item categories).
            item_ids: (A,) dataset item of each catalog action.
            popularity: (A,) within-category popularity of each catalog action.
            temperature: The log-popularities are divided by it.
        """
        ids = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
        weight = torch.zeros(len(ids), encoder.state_dim)
        pop = np.maximum(np.asarray(popularity, dtype=np.float64), 1e-12)
        bias = torch.as_tensor(np.log(pop) / temperature, dtype=torch.float32)
        _, action_slot = catalog_slots(encoder.item_category[ids].cpu())
        return cls(weight, bias, action_slot, int(action_slot.max()) + 1)

    @torch.no_grad()
    def summaries(self, states: torch.Tensor) -> torch.Tensor:
        """``[L, H]`` (B, 2K) of :func:`category_summaries` for (B, d) states."""
        item_logits = torch.addmm(self.bias, states, self.weight.T)  # (B, A)
        log_norm, entropy = category_summaries(item_logits, self.action_slot, self.n_slots)
        return torch.cat([log_norm, entropy], dim=1)
