r"""Score histories with an exported policy: raw ids in, a slate with propensities out.

A request's history is a list of events ``(item, time, event)`` with the log's raw item ids.
It becomes the policy's observation exactly as the simulator builds one: events sorted by time
(stable: ties keep their order), items the export does not know ignored (and reported),
consecutive events on one item collapsed into one **step**, the last ``history_length`` steps
as left-padded item and category tokens (dataset index + 1), ``step`` = the number of steps.

The policy's distribution over its catalog, :math:`\pi(a \mid s)`, is what the trained agent
computes in the simulator (:meth:`rlrec.agents.policy.AgentPolicy.action_probabilities`:
frozen-encoder features, the plan's prior, the recent-item mask, all as trained). The served
distribution restricts it to the **eligible** actions :math:`E` (with ``exclude_seen``: not
an item of the history) and renormalises: :math:`p(a) = \pi(a \mid s) / \sum_{b \in E}
\pi(b \mid s)` on :math:`E`. The slate has ``min(k, |{a in E: p(a) > 0}|)`` items:

* ``greedy``: the ``k`` most probable actions (ties: the lower action index first); for an
  agent with a plan the first is its factored mode instead (the most probable item of the
  most probable category, :meth:`rlrec.agents.policy.FactoredActorHead.mode`: the action
  ``rlrec evaluate`` measured), then the ``k - 1`` most probable others;
* ``sample``: ``k`` sequential draws without replacement from :math:`p` (Plackett-Luce,
  drawn by Gumbel top-k with the server's seeded generator or the request's ``seed``).

Returned per item: ``score`` :math:`= \log \pi(a \mid s)` (the unrestricted policy) and
``propensity`` :math:`= p(a)` (its probability of being the first item shown). What the
traffic log records for OPE is the probability of what was actually served:
``position_propensities[j]`` :math:`= p(a_j) / (1 - \sum_{i<j} p(a_i))` (the j-th draw given
the earlier ones) in ``sample`` mode, and 1 in ``greedy`` mode (deterministic); the first
of them is the propensity of the slate's first item, the one ``rlrec ope served`` weights.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from rlrec.agents.artifacts import POLICY_NAME, load_policy
from rlrec.agents.features import CategoryPrior
from rlrec.agents.planner import PlanTable
from rlrec.agents.policy import (
    AgentPolicy,
    FactoredActorHead,
    recent_item_mask,
    token_to_action_table,
)
from rlrec.agents.train import ENCODER_DIR, PLAN_FILE
from rlrec.data.dataset import PreparedDataset
from rlrec.errors import UserError
from rlrec.models.checkpoint import load_encoder, vocabulary_fingerprint
from rlrec.serving.export import (
    CATEGORIES_FILE,
    ITEMS_FILE,
    ServingSpec,
    read_serving_spec,
    verify_export,
)

__all__ = [
    "COMPILED_TOLERANCE",
    "MASKED_LOGIT",
    "MODES",
    "Actor",
    "Context",
    "FrozenActor",
    "Recommendation",
    "Scorer",
    "SlateRequest",
    "compile_actor",
    "compile_frozen_actor",
]

MODES = ("greedy", "sample")
MASKED_LOGIT = -1e8
"""Logit of a masked action: what sb3_contrib's MaskableCategorical puts there."""
COMPILED_TOLERANCE = 1e-6
"""Largest difference in any probability between the traced actor and the eager policy on
the probe histories that :func:`compile_actor` accepts."""

Actor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(B, L) item tokens, (B, L) category tokens, (B, 1) steps (float32) -> (B, A) logits."""

FrozenActor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(B, L) item and (B, L) category tokens (int64), (B, 1) steps, (B, K) the plan's prior
(float32; (B, 0) without a plan) -> (B, A) logits of a frozen agent."""


class _ActorLogits(torch.nn.Module):
    """The actor's path of SB3's ``get_distribution`` up to the logits, as one module.

    What :meth:`stable_baselines3.common.policies.ActorCriticPolicy.get_distribution`
    computes (features of ``pi_features_extractor``, ``mlp_extractor.forward_actor``,
    ``action_net``) without the distribution object, so that it can be traced.
    """

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self, items: torch.Tensor, categories: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        from stable_baselines3.common.policies import BaseModel

        obs = {"item_history": items, "category_history": categories, "step": step}
        # BaseModel's extract_features: the actor-critic override ignores the extractor
        # argument and returns both extractors' features when they are not shared.
        features = BaseModel.extract_features(self.policy, obs, self.policy.pi_features_extractor)
        return cast(
            torch.Tensor, self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))
        )


class _FrozenActorLogits(torch.nn.Module):
    """A frozen agent's path from tokens to logits, as one module (see :func:`compile_actor`).

    What :meth:`rlrec.agents.policy.AgentPolicy.action_probabilities` computes for a frozen
    agent: the encoder's state, the context columns, the frozen item term's summaries (a
    constant of the loaded model, so computed once here) and the plan's prior (an input: it
    is a table lookup in numpy), then the actor's network on those features.
    """

    def __init__(self, agent: AgentPolicy) -> None:
        super().__init__()
        assert agent.encoder is not None
        self.encoder = agent.encoder
        self.policy = agent.model.policy
        head = self.policy.action_net
        frozen_term = bool(getattr(head, "frozen_item_term", False))
        self.catalog = head.catalog_term() if frozen_term else None  # type: ignore[operator]

    def forward(
        self,
        items: torch.Tensor,
        categories: torch.Tensor,
        step: torch.Tensor,
        prior: torch.Tensor,
    ) -> torch.Tensor:
        from stable_baselines3.common.policies import BaseModel

        from rlrec.agents.features import extra_features

        state = self.encoder.encode(items, categories)
        parts = [state, extra_features(categories, step)]
        if self.catalog is not None:
            parts.append(self.catalog.summaries(state))
        parts.append(prior)  # (B, 0) without a plan
        features = torch.cat(parts, dim=1)
        features = BaseModel.extract_features(
            self.policy, features, self.policy.pi_features_extractor
        )
        return cast(
            torch.Tensor, self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))
        )


@dataclass(frozen=True)
class SlateRequest:
    """One recommendation request, already validated for types and sizes.

    Attributes:
        history: ``(raw item id, time)`` of each event, in any order.
        k: Slate size asked for.
        exclude_seen: Never show an item of the history.
        mode: ``greedy`` or ``sample``.
        seed: Seed of this request's draws (``sample``); None: the server's generator.
    """

    history: Sequence[tuple[str, float]]
    k: int = 10
    exclude_seen: bool = True
    mode: str = "greedy"
    seed: int | None = None


@dataclass(frozen=True)
class Context:
    """A history as the policy sees it.

    Attributes:
        items: (L,) int64 item tokens, left-padded, most recent last.
        categories: (L,) int64 category tokens.
        step: Number of steps in the history.
        seen: Dataset indices of every known item of the history (all steps, not just L).
        unknown: Raw ids the export does not know, each once, in order of appearance.
    """

    items: np.ndarray
    categories: np.ndarray
    step: int
    seen: np.ndarray
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Recommendation:
    """A served slate (see the module docstring for each quantity).

    Attributes:
        items: Raw item ids, in slate order.
        actions: (k,) the policy's catalog actions of those items.
        categories: Raw category id of each item.
        scores: ``log pi(a | s)`` of each item.
        propensities: ``p(a)``, each item's probability as the first item shown.
        position_propensities: Probability of each position's item given the earlier ones,
            under the mode that chose it (1 for ``greedy``).
        unknown_items: Raw ids of the history the export does not know.
        history_steps: Steps of the history the policy read (after collapsing; <= L).
    """

    items: list[str]
    actions: np.ndarray
    categories: list[str]
    scores: list[float]
    propensities: list[float]
    position_propensities: list[float]
    unknown_items: list[str]
    history_steps: int


class Scorer:
    """An export's policy behind :meth:`recommend` (load once, score many).

    Build it with :meth:`load`. Instances are immutable after loading and safe to share
    between threads: scoring only reads them (torch releases the GIL inside its kernels).

    Args:
        policy: The trained agent behind the policy protocol.
        spec: The export's scoring settings.
        item_raw: (N,) raw id of each dataset item.
        item_category: (N,) dataset category of each item.
        category_raw: (C,) raw id of each category.
        model_version: The version reported with every answer.
        manifest: The export's manifest (for ``/metadata``).
    """

    def __init__(
        self,
        policy: AgentPolicy,
        spec: ServingSpec,
        item_raw: np.ndarray,
        item_category: np.ndarray,
        category_raw: np.ndarray,
        model_version: str,
        manifest: dict[str, Any],
    ) -> None:
        self.policy = policy
        self.spec = spec
        self.model_version = model_version
        self.manifest = manifest
        self.item_raw = item_raw
        self.index_of = {str(raw): i for i, raw in enumerate(item_raw.tolist())}
        self.category_token = np.asarray(item_category, dtype=np.int64) + 1
        self.catalog = np.asarray(spec.catalog, dtype=np.int64)
        self.n_actions = len(self.catalog)
        # Precomputed per-action answers: raw ids and categories of the catalog.
        self.action_raw = [str(item_raw[i]) for i in self.catalog]
        self.action_category_raw = [str(category_raw[int(item_category[i])]) for i in self.catalog]
        self.action_of_item = token_to_action_table(self.catalog, len(item_raw) + 1)[1:]
        self.history_length = spec.history_length
        # A planned agent's greedy first item is its factored mode (module docstring): each
        # action's category slot, read from the actor head itself so the two cannot disagree.
        self.mode_slots: np.ndarray | None = None
        if spec.planner:
            head = policy.model.policy.action_net
            assert isinstance(head, FactoredActorHead)  # planned agents have one (config check)
            slots: torch.Tensor = head.action_slot  # type: ignore[assignment]
            self.mode_slots = slots.cpu().numpy().astype(np.int64)
        self.actor: Actor | None = compile_actor(self)
        """The traced actor (None: the eager policy scores; see :func:`compile_actor`)."""
        self.frozen_actor: FrozenActor | None = compile_frozen_actor(self)
        """A frozen agent's traced path (see :func:`compile_frozen_actor`)."""

    @classmethod
    def load(cls, export_dir: str | os.PathLike[str]) -> Scorer:
        """Load and check an export written by :func:`rlrec.serving.export.export_run`.

        Raises:
            UserError: Naming the file that is missing, changed or inconsistent.
        """
        root = Path(export_dir)
        manifest = verify_export(root)
        spec, fingerprint = read_serving_spec(root)
        try:
            items = pd.read_parquet(root / ITEMS_FILE, columns=["item", "raw_id", "category"])
            categories = pd.read_parquet(root / CATEGORIES_FILE, columns=["category", "raw_id"])
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"{root}: unreadable vocabulary ({str(exc)[:80]}); export again"
            ) from None
        item_raw = items["raw_id"].astype(str).to_numpy()
        item_category = items["category"].to_numpy(dtype=np.int64)
        category_raw = categories["raw_id"].astype(str).to_numpy()
        if (
            not np.array_equal(items["item"].to_numpy(), np.arange(len(items)))
            or item_category.min(initial=0) < 0
            or item_category.max(initial=0) >= len(category_raw)
            or max(spec.catalog) >= len(items)
        ):
            raise UserError(f"{root / ITEMS_FILE}: indices out of range; export the run again")
        # The fingerprint of rlrec.models.checkpoint, computed from the exported tables (it
        # reads only these three attributes of a dataset).
        tables = SimpleNamespace(items=items, item_category=item_category, categories=categories)
        if vocabulary_fingerprint(cast(PreparedDataset, tables)) != fingerprint:
            raise UserError(f"{root}: vocabulary tables differ from serving.json; export again")
        encoder, ckpt = load_encoder(root / ENCODER_DIR)
        if (ckpt.n_items, ckpt.n_categories) != (len(items), len(categories)):
            raise UserError(f"{root / ENCODER_DIR}: vocabulary sizes differ; export again")
        model = load_policy(root / f"{POLICY_NAME}.json")
        if int(getattr(model.action_space, "n", -1)) != len(spec.catalog):
            raise UserError(f"{root}: the policy's actions differ from the catalog; export again")
        prior = None
        if spec.planner:
            plan = PlanTable.load(root / PLAN_FILE)
            prior = CategoryPrior.for_catalog(
                plan,
                encoder,
                np.asarray(spec.catalog),
                np.asarray(spec.category_of_dataset_category),
                spec.prior_temperature,
            )
        table = token_to_action_table(np.asarray(spec.catalog), len(items) + 1)
        policy = AgentPolicy(
            model,
            encoder=encoder if spec.encoder == "frozen" else None,
            token_to_action=table if spec.mask_recent > 0 else None,
            mask_recent=spec.mask_recent,
            batch_size=spec.encoder_batch_size,
            prior=prior,
        )
        model.policy.set_training_mode(False)
        return cls(
            policy,
            spec,
            item_raw,
            item_category,
            category_raw,
            str(manifest["model_version"]),
            manifest,
        )

    # ------------------------------------------------------------------ contexts

    def context(self, history: Sequence[tuple[str, float]]) -> Context:
        """The policy's view of one history (see the module docstring)."""
        events: Sequence[tuple[str, float]] = history
        times = [t for _, t in history]
        if any(later < earlier for earlier, later in itertools.pairwise(times)):
            events = sorted(history, key=lambda event: event[1])  # stable: ties keep order
        lookup = self.index_of.get
        known: list[int] = []
        unknown: dict[str, None] = {}
        for raw, _ in events:
            index = lookup(raw)
            if index is None:
                unknown.setdefault(raw)
            elif not known or known[-1] != index:
                # Steps: runs of one item collapsed, as rlrec.models.sequences.collapse_repeats
                # does for whole datasets (one short list needs no CSR arrays).
                known.append(index)
        recent = np.asarray(known[-self.history_length :], dtype=np.int64)
        items = np.zeros(self.history_length, dtype=np.int64)
        categories = np.zeros(self.history_length, dtype=np.int64)
        if len(recent):
            items[-len(recent) :] = recent + 1
            categories[-len(recent) :] = self.category_token[recent]
        return Context(
            items=items,
            categories=categories,
            step=len(known),
            seen=np.fromiter(set(known), dtype=np.int64, count=-1),
            unknown=list(unknown),
        )

    def probabilities(self, contexts: Sequence[Context]) -> np.ndarray:
        """(B, A) float64 pi(a | s) of the policy for each context."""
        if not contexts:
            return np.zeros((0, self.n_actions))
        obs = self._observations(contexts)
        if self.actor is not None:
            probs = self._actor_probabilities(self.actor, obs)
        elif self.frozen_actor is not None:
            probs = self._frozen_probabilities(self.frozen_actor, obs)
        else:
            probs = self.eager_probabilities(obs)
        probs = np.clip(probs, 0.0, None)
        return probs / probs.sum(axis=1, keepdims=True)

    @staticmethod
    def _observations(contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        return {
            "item_history": np.stack([c.items for c in contexts]),
            "category_history": np.stack([c.categories for c in contexts]),
            "step": np.array([[c.step] for c in contexts], dtype=np.int64),
        }

    @staticmethod
    def _actor_inputs(obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        # SB3 hands token observations to the policy as float32 (exact for token ids).
        return tuple(
            torch.from_numpy(np.asarray(obs[key], dtype=np.float32))
            for key in ("item_history", "category_history", "step")
        )

    def eager_probabilities(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, A) float64 the policy's distribution through the agent (SB3, eager)."""
        with torch.inference_mode():
            return np.asarray(self.policy.action_probabilities(obs), dtype=np.float64)

    def _frozen_inputs(self, obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        prior = self.policy.prior
        n = len(obs["item_history"])
        return (
            torch.as_tensor(np.asarray(obs["item_history"]), dtype=torch.long),
            torch.as_tensor(np.asarray(obs["category_history"]), dtype=torch.long),
            torch.as_tensor(np.asarray(obs["step"]).reshape(n, 1)),
            prior(obs).float() if prior is not None else torch.zeros((n, 0)),
        )

    def _frozen_probabilities(self, actor: FrozenActor, obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            logits = actor(*self._frozen_inputs(obs))
            return torch.softmax(logits, dim=1).numpy().astype(np.float64)

    def _actor_probabilities(self, actor: Actor, obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            logits = actor(*self._actor_inputs(obs))
            if self.policy.mask_recent > 0:
                assert self.policy.token_to_action is not None
                allowed = recent_item_mask(
                    obs["item_history"],
                    self.policy.token_to_action,
                    self.n_actions,
                    self.policy.mask_recent,
                )
                logits = torch.where(torch.from_numpy(allowed), logits, MASKED_LOGIT)
            return torch.softmax(logits, dim=1).numpy().astype(np.float64)

    def eligible(self, context: Context, exclude_seen: bool) -> np.ndarray:
        """(A,) bool: the actions a slate may hold."""
        mask = np.ones(self.n_actions, dtype=bool)
        if exclude_seen and len(context.seen):
            actions = self.action_of_item[context.seen]
            mask[actions[actions >= 0]] = False
        return mask

    def served_distribution(self, probs: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """(A,) the served distribution ``p``: ``probs`` on the eligible actions, renormalised.

        All zeros when no eligible action has positive probability.
        """
        p = np.where(eligible, probs, 0.0)
        total = p.sum()
        return p / total if total > 0 else p

    # ------------------------------------------------------------------ slates

    def recommend(
        self, requests: Sequence[SlateRequest], rng: np.random.Generator
    ) -> list[Recommendation]:
        """Score a batch of requests in one forward pass and choose each slate.

        The slates are chosen for the whole batch at once (one (B, A) pass for the eligible
        mask, the normalisation, the Gumbel keys and the top k): per-request Python work is
        only the history's parsing and the answer's lists.

        Args:
            requests: The requests.
            rng: The server's generator, for ``sample`` requests without their own seed.

        Returns:
            One recommendation per request, in order.
        """
        if not requests:
            return []
        contexts = [self.context(r.history) for r in requests]
        probs = self.probabilities(contexts)  # (B, A)
        n, n_actions = probs.shape
        eligible = np.ones((n, n_actions), dtype=bool)
        for i, (request, context) in enumerate(zip(requests, contexts, strict=True)):
            if request.exclude_seen and len(context.seen):
                actions = self.action_of_item[context.seen]
                eligible[i, actions[actions >= 0]] = False
        p = np.where(eligible, probs, 0.0)
        totals = p.sum(axis=1, keepdims=True)
        p = np.divide(p, totals, out=np.zeros_like(p), where=totals > 0)
        sizes = np.minimum([r.k for r in requests], np.count_nonzero(p, axis=1))
        with np.errstate(divide="ignore"):
            keys = np.log(p)  # (B, A); -inf where p = 0: never chosen
        sample = np.array([r.mode == "sample" for r in requests])
        shared = sample & np.array([r.seed is None for r in requests])
        if shared.any():
            keys[shared] += rng.gumbel(size=(int(shared.sum()), n_actions))
        for row in np.flatnonzero(sample & ~shared).tolist():
            keys[row] += np.random.default_rng(requests[row].seed).gumbel(size=n_actions)
        order = _top_k(keys, int(sizes.max()))  # (B, kmax) by key, ties to the lower index
        greedy = np.flatnonzero(~sample & (sizes > 0))
        if self.mode_slots is not None and len(greedy):
            modes = _factored_mode(p[greedy], self.mode_slots)
            order[greedy] = _first(order[greedy], modes, sizes[greedy])
        rows = np.arange(n)[:, None]
        chosen_p = p[rows, order]  # (B, kmax)
        taken = np.cumsum(chosen_p, axis=1) - chosen_p
        # Sample mode: p(a_j) / (1 - sum_{i<j} p(a_i)), the j-th draw given the earlier ones
        # (the remaining mass is > 0 while positive-probability draws remain); greedy: 1.
        position = np.where(
            sample[:, None],
            np.minimum(chosen_p / np.maximum(1.0 - taken, np.finfo(float).tiny), 1.0),
            1.0,
        )
        with np.errstate(divide="ignore"):
            scores = np.log(probs[rows, order])
        scores = np.where(np.isfinite(scores), scores, -1e30)
        out = []
        for i, context in enumerate(contexts):
            k = int(sizes[i])
            actions = order[i, :k]
            out.append(
                Recommendation(
                    items=[self.action_raw[a] for a in actions],
                    actions=actions.astype(np.int64),
                    categories=[self.action_category_raw[a] for a in actions],
                    scores=scores[i, :k].tolist(),
                    propensities=chosen_p[i, :k].tolist(),
                    position_propensities=position[i, :k].tolist(),
                    unknown_items=context.unknown,
                    history_steps=int(min(context.step, self.history_length)),
                )
            )
        return out


def compile_actor(scorer: Scorer) -> Actor | None:
    """The scorer's actor traced with TorchScript, or None where the eager policy must score.

    Why: a served batch is a handful of histories, so a forward pass costs what its ~100
    small operators cost to dispatch from Python (modules, hooks, SB3's distribution
    objects), not arithmetic. The traced and frozen graph runs the same operators without
    that overhead: 2-2.5x less CPU per batch of 1-8 on the bench model (docs/serving.md,
    Performance). ``torch.compile`` would need seconds to minutes of compilation per batch
    shape on a 2-core machine and ``torch.export``'s module runs slower than eager at these
    sizes; ``torch.jit.trace`` is deprecated in torch 2.13 but present (its warning is
    silenced here), and where it fails or is gone the eager path scores.

    Only agents whose policy reads tokens (``finetune``: the encoder inside the policy) are
    traced; ``frozen`` agents compute features in numpy first and stay eager. The traced
    actor is accepted only if its probabilities equal the eager policy's within
    :data:`COMPILED_TOLERANCE` on probe histories of several batch sizes (the batch
    dimension must not have been baked into the graph).
    """
    policy = scorer.policy
    if policy.encoder is not None or os.environ.get("RLREC_SERVE_EAGER") == "1":
        return None
    return cast(
        Actor | None,
        _trace_checked(
            scorer,
            lambda: _ActorLogits(policy.model.policy),
            scorer._actor_inputs,
            scorer._actor_probabilities,
        ),
    )


def compile_frozen_actor(scorer: Scorer) -> FrozenActor | None:
    """A frozen agent's path from tokens to logits traced with TorchScript, or None.

    Why: as for :func:`compile_actor`, a served batch of a few histories costs what the
    encoder's and the actor's small operators cost to dispatch from Python. The plan's prior
    stays an eager numpy lookup and enters as an input. Accepted only if its probabilities
    equal the eager agent's within :data:`COMPILED_TOLERANCE` on probe histories of several
    batch sizes; agents that mask recent items (none of the frozen presets) stay eager.
    """
    policy = scorer.policy
    if (
        policy.encoder is None
        or policy.mask_recent > 0
        or os.environ.get("RLREC_SERVE_EAGER") == "1"
    ):
        return None
    return cast(
        FrozenActor | None,
        _trace_checked(
            scorer,
            lambda: _FrozenActorLogits(policy),
            scorer._frozen_inputs,
            scorer._frozen_probabilities,
        ),
    )


def _trace_checked(
    scorer: Scorer,
    build: Callable[[], torch.nn.Module],
    inputs: Callable[[dict[str, np.ndarray]], tuple[torch.Tensor, ...]],
    probabilities: Callable[[Any, dict[str, np.ndarray]], np.ndarray],
) -> Any | None:
    """The module ``build`` makes, traced and frozen; None unless it scores as the eager agent.

    The trace is accepted only if ``probabilities(traced, obs)`` equals the eager policy's
    within :data:`COMPILED_TOLERANCE` on probe histories of several batch sizes (the batch
    dimension must not have been baked into the graph).
    """
    probes = _probe_contexts(scorer)
    try:
        module = build().eval()
        example = inputs(scorer._observations(probes[:2]))
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
            for size in (1, 3, len(probes)):
                obs = scorer._observations(probes[:size])
                got = probabilities(traced, obs)
                if not np.allclose(
                    got, scorer.eager_probabilities(obs), rtol=0.0, atol=COMPILED_TOLERANCE
                ):
                    return None
    except Exception:  # any failure to trace means scoring eagerly, never a refused export
        return None
    return traced


def _probe_contexts(scorer: Scorer) -> list[Context]:
    """Eight histories of different lengths over the catalog (deterministic)."""
    catalog = scorer.catalog
    out = []
    for i in range(8):
        length = 1 + (3 * i) % (scorer.history_length + 4)
        picks = catalog[(np.arange(length) * 7 + 13 * i) % len(catalog)]
        out.append(
            scorer.context([(str(scorer.item_raw[j]), float(t)) for t, j in enumerate(picks)])
        )
    return out


def _factored_mode(probs: np.ndarray, slots: np.ndarray, rtol: float = 1e-5) -> np.ndarray:
    """(B,) the most probable action of the most probable category slot, per row.

    The served twin of :meth:`rlrec.agents.policy.FactoredActorHead.mode`, from
    probabilities: a slot's mass is the sum of its actions' probabilities. Slots the plan
    merges into one category have the same mass up to rounding (within ``rtol``); among those
    the slot holding the most probable item wins, as in the head.

    Args:
        probs: (B, A) served probabilities (rows with positive mass).
        slots: (A,) category slot of each action (0..K-1, every slot used).
        rtol: Relative tolerance of equal slot masses.

    Returns:
        (B,) int64 actions; ties inside the slot go to the lower action index.
    """
    n_slots = int(slots.max()) + 1
    onehot = np.zeros((len(slots), n_slots))
    onehot[np.arange(len(slots)), slots] = 1.0
    mass = probs @ onehot  # (B, K)
    perm = np.argsort(slots, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(slots[perm]) != 0])
    top = np.maximum.reduceat(probs[:, perm], starts, axis=1)  # (B, K) best item per slot
    tied = mass >= mass.max(axis=1, keepdims=True) * (1.0 - rtol)
    slot = np.where(tied, top, -1.0).argmax(axis=1)  # (B,)
    inside = slots[None, :] == slot[:, None]
    return np.where(inside, probs, -1.0).argmax(axis=1).astype(np.int64)


def _first(order: np.ndarray, first: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(R, k) slates with ``first`` moved (or put) in front, the others in their order.

    A ``first`` already in the row's first ``sizes`` entries moves to the front; otherwise it
    takes the place of the last of them. Entries past ``sizes`` are left as they are.
    """
    k = order.shape[1]
    cols = np.arange(k)[None, :]
    hit = (order == first[:, None]) & (cols < sizes[:, None])
    at = np.where(hit.any(axis=1), hit.argmax(axis=1), sizes - 1)  # (R,) where it leaves
    src = np.where(cols <= at[:, None], cols - 1, cols)  # shift the ones before it right
    shifted = np.take_along_axis(order, np.maximum(src, 0), axis=1)
    return np.where(cols == 0, first[:, None], shifted)


def _top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """(B, k) indices of each row's k largest keys, largest first, ties to the lower index.

    With Gumbel-perturbed log-probabilities as keys, the top k in order are exactly k
    sequential draws without replacement (Plackett-Luce); with plain log-probabilities,
    the k most probable actions.
    """
    n, width = keys.shape
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    if 4 * k < width:
        # Partition first: O(A) per row instead of a full sort. Boundary ties are settled by
        # lexsort below only among the kept candidates, so keep a margin of equal keys.
        candidates = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        threshold = np.take_along_axis(keys, candidates, axis=1).min(axis=1, keepdims=True)
        if not np.any((keys == threshold).sum(axis=1) > 1):
            values = np.take_along_axis(keys, candidates, axis=1)
            order = np.lexsort((candidates, -values), axis=1)
            return np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    # Stable sort on -keys: equal keys keep the lower index first.
    return np.argsort(-keys, axis=1, kind="stable")[:, :k].astype(np.int64)
