"""The simulator's dynamics: one vectorized numpy step of B users, shared by every env.

The single env is this with B = 1 and its own ``np_random``; the batched env is this with
B = N. Sharing one implementation is what makes their episode-return distributions equal by
construction (a test checks it anyway).

A step, for each user in hidden state (category ``c``, streak ``s``, session step ``t``) who is
recommended catalog item ``a`` of sim category ``k`` (see ``docs/architecture.md``):

1. engaged with ``engage_probability`` (the user model's response function);
2. engaged: the user moves to ``k`` (streak ``s + 1`` if ``k == c``, else 1); the funnel carts
   with ``p_cart[k]`` and buys with ``p_buy[k]`` (a buy only after a cart, as in the synthetic
   generator; the outcome is the strongest event); the reward is that outcome's weight;
3. missed: an organic step (stay with ``stay(s)``, else switch by ``switch_matrix[c]``; the
   item is drawn from the new category by popularity, over the whole SimModel catalog); no
   reward;
4. the user leaves with ``hazard(t + 1) * leave_engaged_factor * leave_streak_factor **
   max(0, s' - leave_streak_start)`` after an engaged step with new streak ``s'`` (boredom)
   and ``hazard(t + 1) * leave_miss_factor ** misses`` after ``misses`` consecutive missed ones
   (clipped to 1): a termination. Reaching ``max_steps`` recommendations is a truncation.

Observation tokens are DATASET indices + 1 (0 is padding), so an encoder trained on the
PreparedDataset reads the env's history directly: catalog item ``a`` is dataset item
``model.item_ids[a]``, and its category token is the dataset category of that item.

Speed notes (the batched env's target is millions of user-steps per second): categorical draws
are one ``searchsorted`` over a cumulative table where segment ``c`` spans ``[c, c + 1]``, so a
whole batch draws from per-row distributions in one call; the interest of each user in the
recommended item's category is computed directly (one gather) instead of building (B, K)
interest rows; every step allocates fresh state arrays instead of mutating, so observations
already handed out stay valid without a defensive copy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from rlrec.data.dataset import PreparedDataset
from rlrec.data.ragged import Ragged
from rlrec.envs.config import EnvConfig
from rlrec.envs.lifecycle import LifecycleState, ReturnProcess, session_covariates
from rlrec.errors import UserError
from rlrec.models.prior import RESPONSE_PARAMETERS, prior_draws, unidentified
from rlrec.models.sim_model import SimModel

__all__ = [
    "OUTCOMES",
    "InvalidActionError",
    "SegmentSampler",
    "SessionEnds",
    "StepResult",
    "UserDynamics",
    "UserState",
    "WarmStarts",
    "return_process_of",
]

OUTCOMES: tuple[str, ...] = ("miss", "engage", "cart", "buy")
"""Outcome of a recommendation; a step's ``outcome`` code is an index into this tuple."""

_N_UNIFORMS = 5  # engage and funnel, stay, switch, organic item, leave


def _by_name(response: np.ndarray) -> dict[str, np.ndarray]:
    """(B, P) per-user response parameters as name -> (B,) column."""
    return {name: response[:, j] for j, name in enumerate(RESPONSE_PARAMETERS)}


def return_process_of(model: SimModel, config: EnvConfig) -> ReturnProcess:
    """The return process of lifecycle episodes in ``model``'s world.

    In order: the env's ``return_process`` (set by the user), the SimModel's
    ``info["return_process"]`` (a truth world's), its fitted ``info["return_model"]`` (with
    ``info["session_carryover"]``, written by :func:`rlrec.models.transition.fit_sim_model`).
    A truth world always returns by its own process: a user's override describes the fitted
    world, not the one that produced the log.

    Raises:
        UserError: If there is none, naming why the fit has none when it says.
    """
    info = model.info
    truth = info.get("world") == "truth" and info.get("return_process") is not None
    if config.return_process and not truth:
        return ReturnProcess.from_mapping(config.return_process, "env.return_process")
    if info.get("return_process") is not None:
        return ReturnProcess.from_mapping(info["return_process"], "SimModel return_process")
    if info.get("return_model") is not None:
        from rlrec.models.lifecycle import ReturnModel

        try:
            fitted = ReturnModel.from_json(str(info["return_model"]))
            carryover = float(info.get("session_carryover", 0.0))
        except (TypeError, ValueError, KeyError) as err:
            raise UserError(
                f"SimModel return_model: {err}; fit the model again (rlrec fit --force)"
            ) from None
        return ReturnProcess.from_return_model(fitted, carryover)
    why = info.get("return_model_error")
    raise UserError(
        "env.episode: lifecycle needs a return process, and the SimModel has none"
        + (f" ({why})" if why else " (fit it again with this version of rlrec)")
        + "; or set env.return_process"
    )


class InvalidActionError(UserError, ValueError):
    """An action outside the action space (a ValueError, and a UserError for the CLI)."""


@dataclass
class UserState:
    """Hidden and observable state of B users; arrays are replaced, never mutated, by a step.

    Attributes:
        category: (B,) int64 current sim category ``c``.
        streak: (B,) int64 steps spent in ``c`` so far, >= 1.
        step: (B,) int64 session step ``t`` of the last step taken (1-based; a warm start's
            prefix counts).
        misses: (B,) int64 consecutive missed recommendations.
        episode_steps: (B,) int64 recommendations made in this episode.
        history: (2, B, L) int32 tokens of the last L steps, oldest first: row 0 items
            (dataset item + 1), row 1 categories (dataset category + 1); 0 pads. One buffer
            so that a step shifts both with one copy.
        focus: (B,) float64 each session's own stay probability, in a world whose sessions
            differ in focus (the synthetic truth, see :func:`rlrec.envs.truth.truth_world`);
            None where the stay probability is the model's curve by streak.
        response: (B, P) float64 each user's response parameters (columns
            :data:`rlrec.models.prior.RESPONSE_PARAMETERS`) under domain randomisation;
            None where every user has the SimModel's.
        lifecycle: Day, session index, activity and session counters of lifecycle episodes
            (``env.episode: lifecycle``); None for one-session episodes.
    """

    category: np.ndarray
    streak: np.ndarray
    step: np.ndarray
    misses: np.ndarray
    episode_steps: np.ndarray
    history: np.ndarray
    focus: np.ndarray | None = None
    response: np.ndarray | None = None
    lifecycle: LifecycleState | None = None

    @property
    def size(self) -> int:
        """B, the number of users."""
        return len(self.category)

    @property
    def items(self) -> np.ndarray:
        """(B, L) int32 item tokens (a view of ``history``)."""
        return self.history[0]

    @property
    def categories(self) -> np.ndarray:
        """(B, L) int32 category tokens (a view of ``history``)."""
        return self.history[1]


@dataclass(frozen=True)
class StepResult:
    """What happened in one step of B users.

    Attributes:
        reward: (B,) float64.
        engaged: (B,) bool, the recommendation was engaged with.
        outcome: (B,) int8 code into :data:`OUTCOMES`.
        item: (B,) int64 catalog item of the step (the recommendation if engaged, else the
            organic item; -1 when the user's category has no catalog item).
        terminated: (B,) bool, the user left.
        truncated: (B,) bool, the episode hit ``max_steps`` (and the user did not leave).
    """

    reward: np.ndarray
    engaged: np.ndarray
    outcome: np.ndarray
    item: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


@dataclass(frozen=True)
class SessionEnds:
    """What happened between sessions in one lifecycle step of B users.

    Attributes:
        ended: (B,) bool, a session ended this step (the user left or hit ``max_steps``).
        returned: (B,) bool, the user comes back: a new session of the same episode started.
        gap_days: (B,) float64 days to the next session where one ended (``inf``: dropped
            out), NaN elsewhere.
        day: (B,) float64 start day of the session the step belonged to.
    """

    ended: np.ndarray
    returned: np.ndarray
    gap_days: np.ndarray
    day: np.ndarray


class SegmentSampler:
    """Draw from many categorical distributions at once with Walker's alias method.

    Distribution ``g`` is over the ``members`` (flat indices) in segment ``g``. Each segment
    has an alias table (Vose's construction), so a batch of users with different segments
    draws in O(1) numpy operations: a bucket ``floor(u * n_g)``, then the bucket's member or
    its alias depending on the fractional part of ``u * n_g``. Exact, and cheaper than a
    per-row inverse-CDF search.
    """

    def __init__(
        self,
        probs: np.ndarray,
        segment: np.ndarray,
        n_segments: int,
        labels: np.ndarray | None = None,
    ) -> None:
        """Build the tables.

        Args:
            probs: (M,) non-negative weights of the members.
            segment: (M,) segment of each member, in 0..n_segments - 1.
            n_segments: G.
            labels: (M,) what :meth:`sample` returns for each member; the member's index
                when None.
        """
        segment = np.asarray(segment, dtype=np.int64)
        order = np.argsort(segment, kind="stable")  # table position -> member
        p = np.asarray(probs, dtype=np.float64)[order]
        counts = np.bincount(segment, minlength=n_segments)
        totals = np.bincount(segment, weights=np.asarray(probs, np.float64), minlength=n_segments)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        threshold = np.ones(len(p) + 1)  # one spare slot: an empty segment points there
        alias = np.append(np.arange(len(p)), len(p))
        for g in range(n_segments):
            lo, n = int(starts[g]), int(counts[g])
            if n == 0 or totals[g] <= 0:
                continue
            q = p[lo : lo + n] * (n / totals[g])  # mean 1
            small = [i for i in range(n) if q[i] < 1.0]
            large = [i for i in range(n) if q[i] >= 1.0]
            while small and large:
                s, big = small.pop(), large.pop()
                threshold[lo + s] = q[s]
                alias[lo + s] = lo + big
                q[big] -= 1.0 - q[s]
                (small if q[big] < 1.0 else large).append(big)
            # Leftovers are 1 up to rounding: they keep themselves.
            for i in small + large:
                threshold[lo + i] = 1.0
        label = np.arange(len(p)) if labels is None else np.asarray(labels)
        member = np.append(np.asarray(label)[order], -1).astype(np.int64)
        local = np.append(np.arange(len(p)) - np.repeat(starts, counts), 0)
        self.count = counts.astype(np.float64)  # (G,)
        self.start = starts  # (G,)
        # Bucket j of a segment keeps its own member when u * n < j + threshold[j]: the
        # bucket index is folded in so that the draw needs no subtraction.
        self.threshold = local + threshold  # (M + 1,)
        self.member = member  # (M + 1,) bucket -> member's label
        self.alias_member = member[alias]  # (M + 1,) bucket -> its alias's label
        self.has_members = (counts > 0) & (totals > 0)  # (G,)
        self.all_nonempty = bool(self.has_members.all())

    def sample(self, segment: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Draw one member per user.

        Args:
            segment: (B,) int segment of each user.
            u: (B,) uniforms in [0, 1).

        Returns:
            (B,) int64 member labels; -1 where the segment is empty.
        """
        x = u * self.count[segment]
        # floor(u * n) <= n - 1 for u < 1 in float64, so the bucket stays in its segment.
        pos = x.astype(np.int64) + self.start[segment]
        drawn = np.where(x < self.threshold[pos], self.member[pos], self.alias_member[pos])
        if not self.all_nonempty:
            drawn = np.where(self.has_members[segment], drawn, -1)
        return drawn


@dataclass(frozen=True)
class WarmStarts(Ragged):
    """Logged session prefixes to start users from, as step-level CSR arrays.

    Steps are maximal runs of consecutive events on one item (the user model's step), so a
    logged view followed by a cart of the same item is one step, as in the env.

    Attributes:
        offsets: (S + 1,) int64 session boundaries over the step arrays (only sessions with
            at least ``warm_prefix[0]`` steps).
        tokens: (2, E) int32 dataset item + 1 (row 0) and dataset category + 1 (row 1) of
            each step.
        sim_category: (E,) int64 sim category of each step.
        streak: (E,) int64 length of the run of equal sim categories ending at each step.
        stays: (E,) int64 steps of the session up to and including this one that stayed in
            the previous step's sim category (the evidence on a session's focus).
    """

    tokens: np.ndarray
    sim_category: np.ndarray
    streak: np.ndarray
    stays: np.ndarray

    @classmethod
    def from_dataset(
        cls, dataset: PreparedDataset, model: SimModel, split: str, min_steps: int
    ) -> WarmStarts:
        """Collect the sessions of ``split`` that have at least ``min_steps`` steps.

        Raises:
            UserError: If the split has no such session.
        """
        sessions = dataset.sessions(split)
        items = sessions.items.astype(np.int64)
        cats = sessions.categories.astype(np.int64)
        n = len(items)
        first = np.zeros(n, dtype=bool)
        first[sessions.offsets[:-1][sessions.lengths > 0]] = True
        # A new step starts at a session start or where the item changes.
        new_step = first.copy()
        if n > 1:
            new_step[1:] |= items[1:] != items[:-1]
        keep = np.flatnonzero(new_step)
        step_items, step_cats = items[keep], cats[keep]
        step_first = first[keep]
        session_starts = np.flatnonzero(step_first)
        lengths = np.diff(np.append(session_starts, len(keep)))
        usable = lengths >= min_steps
        if not usable.any():
            raise UserError(
                f"{dataset.path}: no session of split {split!r} has {min_steps} steps for a "
                "warm start; lower env.warm_prefix, pick another env.warm_split, or use "
                "env.start: stationary"
            )
        sim_cat = model.category_of_dataset_category[step_cats].astype(np.int64)
        # Run length of equal sim categories, restarting at each session start.
        run_start = step_first.copy()
        if len(sim_cat) > 1:
            run_start[1:] |= sim_cat[1:] != sim_cat[:-1]
        idx = np.arange(len(sim_cat))
        streak = idx - np.maximum.accumulate(np.where(run_start, idx, 0)) + 1
        # Stays so far, restarting at each session start.
        stayed = np.cumsum(~run_start)
        stays = stayed - np.repeat(stayed[session_starts], lengths)
        # Keep only usable sessions, re-packed.
        sel = np.repeat(usable, lengths)
        new_lengths = lengths[usable]
        return cls(
            offsets=np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64),
            tokens=np.stack([step_items[sel], step_cats[sel]]).astype(np.int32) + 1,
            sim_category=sim_cat[sel],
            streak=streak[sel].astype(np.int64),
            stays=stays[sel].astype(np.int64),
        )


class UserDynamics:
    """The user model with a recommender, for batches of users; see the module docstring.

    Args:
        model: The SimModel.
        config: The env settings.
        dataset: The PreparedDataset the model was fitted on (warm starts and exact item
            categories); None for stationary starts only.

    Raises:
        UserError: If the dataset does not match the model, or a warm start is asked for
            without a dataset.
    """

    def __init__(
        self, model: SimModel, config: EnvConfig, dataset: PreparedDataset | None = None
    ) -> None:
        self.model = model
        self.config = config
        k = model.n_categories
        self.n_categories = k
        self.n_actions = min(config.catalog_size, model.n_items)
        self.history_length = config.history_length

        n_dataset_categories = len(model.category_of_dataset_category)
        item_ids = np.asarray(model.item_ids, dtype=np.int64)
        if item_ids.min() < 0:
            raise UserError("SimModel: item_ids holds a negative dataset item index")
        if dataset is not None:
            if dataset.n_categories != n_dataset_categories:
                raise UserError(
                    f"{dataset.path}: {dataset.n_categories} categories but the SimModel maps "
                    f"{n_dataset_categories}; pass the dataset the SimModel was fitted on"
                )
            if item_ids.max() >= dataset.n_items:
                raise UserError(
                    f"{dataset.path}: {dataset.n_items} items but the SimModel's catalog "
                    f"names item {int(item_ids.max())}; pass the dataset it was fitted on"
                )
            item_dataset_category = dataset.item_category[item_ids].astype(np.int64)
            self.n_item_tokens = dataset.n_items + 1
        else:
            item_dataset_category = self._first_dataset_category(model)[model.item_category]
            self.n_item_tokens = int(item_ids.max()) + 2
        self.n_category_tokens = n_dataset_categories + 1

        # Token tables with one extra trailing 0: index -1 (no item) reads the padding token.
        self.item_token = np.append(item_ids + 1, 0).astype(np.int32)  # (N + 1,)
        self.item_category_token = np.append(item_dataset_category + 1, 0).astype(np.int32)
        self.sim_category_token = (self._first_dataset_category(model) + 1).astype(np.int32)

        item_category = np.asarray(model.item_category, dtype=np.int64)
        self.item_category = item_category
        self.switch_matrix = np.asarray(model.switch_matrix, dtype=np.float64)  # (K, K)
        self.switch_flat = self.switch_matrix.ravel()  # (K*K,)
        # Engagement: z = base * (K * interest_k)^a * (n_k * pop_i)^b, p = m * z / (m + z) with
        # m = engage_ceiling. The item factor of z (all but the interest term) is per item, so
        # it is precomputed.
        n_in_category = np.bincount(item_category, minlength=k)[item_category]
        rel_pop = np.maximum(n_in_category * model.item_popularity, 1e-12)
        self.interest_exponent = float(model.engage_interest_exponent)
        item_factor = model.engage_base_rate * np.power(rel_pop, model.engage_popularity_exponent)
        if self.interest_exponent == 1.0:
            item_factor = item_factor * k  # fold K in: p = factor * interest_k
        self.item_factor = item_factor.astype(np.float64)
        # Funnel thresholds on one uniform, as the generator and the fit count them: a step is
        # carted with p_cart and bought with p_buy, a buy only after a cart (p_buy <= p_cart),
        # so the strongest outcome is buy below p_buy, cart below p_cart.
        p_cart = np.asarray(model.p_cart, dtype=np.float64)
        p_buy = np.asarray(model.p_buy, dtype=np.float64)
        self.buy_threshold = p_buy[item_category]  # (N,)
        self.cart_threshold = np.maximum(p_cart, p_buy)[item_category]
        w = config.reward_weights
        self.reward_table = np.array([0.0, w.engage, w.cart, w.buy])  # by outcome code
        self.engage_ceiling = float(model.engage_ceiling)
        self.leave_engaged_factor = float(model.leave_engaged_factor)
        # miss factor ** misses, misses never exceed max_steps within an episode.
        self.miss_power = float(model.leave_miss_factor) ** np.arange(config.max_steps + 2)

        # Labels are destination categories, so a draw is the new category directly.
        self._switch = SegmentSampler(
            model.switch_matrix.ravel(), np.repeat(np.arange(k), k), k, np.tile(np.arange(k), k)
        )
        self._items = SegmentSampler(model.item_popularity, item_category, k)
        self._initial = SegmentSampler(model.initial_category, np.zeros(k, dtype=np.int64), 1)

        start = config.start
        if start == "auto":
            start = "warm" if dataset is not None else "stationary"
        if start == "warm" and dataset is None:
            raise UserError(
                "env.start: warm needs the dataset the SimModel was fitted on; pass dataset= "
                "or set env.start: stationary"
            )
        self.start_mode = start
        self.warm: WarmStarts | None = None
        if start == "warm":
            assert dataset is not None
            self.warm = WarmStarts.from_dataset(
                dataset, model, config.warm_split, config.warm_prefix[0]
            )
        self.max_session_step = (config.warm_prefix[1] if start == "warm" else 1) + config.max_steps
        # Streaks and session steps never exceed max_session_step, so tables indexed by them
        # directly replace the clip-then-index of SimModel.stay_probability/hazard.
        span = np.maximum(np.arange(self.max_session_step + 2), 1)
        self.stay_table = model.stay_probability(span).astype(np.float64)
        self.hazard_table = model.hazard(span).astype(np.float64)
        # Hazard factor after an engaged step, by new streak s' (at most max_session_step + 1):
        # leave_engaged_factor * leave_streak_factor ** max(0, s' - leave_streak_start).
        excess = np.maximum(np.arange(self.max_session_step + 2) - model.leave_streak_start, 0)
        self.engaged_factor_table = (
            float(model.leave_engaged_factor) * float(model.leave_streak_factor) ** excess
        ).astype(np.float64)

        # Sessions that differ in focus (the synthetic truth): Beta(alpha, beta) stay
        # probabilities, drawn per session; a warm start draws from the posterior given its
        # logged prefix (conjugate: the prefix's stays and switches are Bernoulli draws).
        focus = model.info.get("session_focus")
        self.focus_prior: tuple[float, float] | None = (
            (float(focus[0]), float(focus[1])) if focus is not None else None
        )
        # Domain randomisation: each new user draws the unidentified response parameters.
        self.rel_pop = rel_pop.astype(np.float64)  # (N,) n_k * popularity, for per-user draws
        self.randomized: tuple[str, ...] = ()
        if config.randomize_response:
            self.randomized = unidentified(model)
        # Lifecycle episodes: the return process (the env's override, else the SimModel's).
        self.returns: ReturnProcess | None = None
        if config.episode == "lifecycle":
            self.returns = return_process_of(model, config)

    @staticmethod
    def _first_dataset_category(model: SimModel) -> np.ndarray:
        """(K,) a dataset category of each sim category (the first that maps to it).

        Exact for unfolded categories; for the folded ``other`` category it stands for all.
        """
        cdc = np.asarray(model.category_of_dataset_category, dtype=np.int64)
        first = np.full(model.n_categories, -1, dtype=np.int64)
        mapped, index = np.unique(cdc, return_index=True)  # index of each first occurrence
        first[mapped] = index
        return first

    # -- starting states -------------------------------------------------------------------

    def start(self, n: int, rng: np.random.Generator) -> UserState:
        """Starting states of ``n`` new users (warm or stationary, per the config)."""
        if self.warm is not None:
            state, stays, switches = self._start_warm(n, rng)
        else:
            state = self._start_stationary(n, rng)
            stays = switches = np.zeros(n)
        if self.focus_prior is not None:
            a, b = self.focus_prior
            state.focus = rng.beta(a + stays, b + switches)
        if self.randomized:
            state.response = prior_draws(self.model, n, rng, self.randomized)
        if self.returns is not None:
            state.lifecycle = LifecycleState.start(self.returns.user_rates(n, rng))
        return state

    def _start_stationary(self, n: int, rng: np.random.Generator) -> UserState:
        u = rng.random((2, n))
        category = self._initial.sample(np.zeros(n, dtype=np.int64), u[0])
        item = self._items.sample(category, u[1])
        history = np.zeros((2, n, self.history_length), dtype=np.int32)
        history[0, :, -1] = self.item_token[item]
        history[1, :, -1] = np.where(
            item >= 0, self.item_category_token[item], self.sim_category_token[category]
        )
        return UserState(
            category=category,
            streak=np.ones(n, dtype=np.int64),
            step=np.ones(n, dtype=np.int64),
            misses=np.zeros(n, dtype=np.int64),
            episode_steps=np.zeros(n, dtype=np.int64),
            history=history,
        )

    def _start_warm(
        self, n: int, rng: np.random.Generator
    ) -> tuple[UserState, np.ndarray, np.ndarray]:
        """Warm starting states, and each prefix's stays and switches (focus evidence)."""
        warm = self.warm
        assert warm is not None
        lo, hi = self.config.warm_prefix
        session = rng.integers(warm.n_sessions, size=n)
        begin = warm.offsets[session]  # (n,)
        longest = np.minimum(hi, warm.offsets[session + 1] - begin)
        prefix = lo + np.floor(rng.random(n) * (longest - lo + 1)).astype(np.int64)
        end = begin + prefix  # exclusive
        # A prefix has at most hi steps, so only the last min(L, hi) columns can be non-zero.
        width = min(self.history_length, hi)
        pos = end[:, None] - width + np.arange(width)  # (n, width)
        valid = pos >= begin[:, None]
        # take() along an axis is several times faster than fancy indexing tokens[:, pos].
        window = warm.tokens.take(np.maximum(pos, 0), axis=1)  # (2, n, width)
        window *= valid
        if width == self.history_length:
            history = window
        else:
            history = np.zeros((2, n, self.history_length), dtype=np.int32)
            history[:, :, -width:] = window
        last = end - 1
        stays = warm.stays[last]
        state = UserState(
            category=warm.sim_category[last],
            streak=warm.streak[last],
            step=prefix,
            misses=np.zeros(n, dtype=np.int64),
            episode_steps=np.zeros(n, dtype=np.int64),
            history=history,
        )
        return state, stays, prefix - 1 - stays

    def restart(self, state: UserState, users: np.ndarray, rng: np.random.Generator) -> None:
        """Replace, IN PLACE, the rows ``users`` of ``state`` by new users' starting states.

        Only for a state returned by :meth:`step` whose arrays have not been handed out yet.

        Args:
            state: The state to modify.
            users: (n,) int row indices.
            rng: The generator.
        """
        if len(users) == 0:
            return
        fresh = self.start(len(users), rng)
        state.category[users] = fresh.category
        state.streak[users] = fresh.streak
        state.step[users] = fresh.step
        state.misses[users] = fresh.misses
        state.episode_steps[users] = fresh.episode_steps
        state.history[:, users] = fresh.history
        if state.focus is not None and fresh.focus is not None:
            state.focus[users] = fresh.focus
        if state.response is not None and fresh.response is not None:
            state.response[users] = fresh.response
        if state.lifecycle is not None and fresh.lifecycle is not None:
            state.lifecycle.assign(users, fresh.lifecycle)

    # -- the step --------------------------------------------------------------------------

    def check_actions(self, actions: np.ndarray, n: int) -> np.ndarray:
        """Validate a batch of actions and return them as int64.

        Raises:
            InvalidActionError: Naming the offending action and the valid range.
        """
        a = np.asarray(actions)
        if a.shape != (n,):
            a = a.reshape(-1) if a.size == n else a
        if a.shape != (n,):
            raise InvalidActionError(
                f"actions of shape {np.shape(actions)}, expected ({n},): one catalog item per user"
            )
        if a.dtype != np.int64:
            if a.dtype.kind in "iu" or (a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0)):
                a = a.astype(np.int64)
            else:
                raise InvalidActionError(
                    f"actions of dtype {a.dtype}, expected integers in 0..{self.n_actions - 1}"
                )
        # Seen as unsigned, a negative action is huge: one max() checks both ends.
        if a.view(np.uint64).max() >= self.n_actions:
            bad = a[(a < 0) | (a >= self.n_actions)][0]
            raise InvalidActionError(
                f"action {int(bad)} is outside the action space Discrete({self.n_actions}): "
                f"expected a catalog item in 0..{self.n_actions - 1}"
            )
        return a

    def engage_probability(self, state: UserState, actions: np.ndarray) -> np.ndarray:
        """(B,) P(engage) of each user with its recommended catalog item.

        Equals :func:`rlrec.models.sim_model.engage_probability` on the users' interest rows,
        computed from the one interest entry that matters.
        """
        k = self.item_category[actions]
        return self._engage_probability(state, actions, k, self._stay(state))

    def _stay(self, state: UserState) -> np.ndarray:
        """(B,) P(stay) of each user: the session's focus, else the model's curve by streak."""
        return state.focus if state.focus is not None else self.stay_table[state.streak]

    def _engage_probability(
        self, state: UserState, actions: np.ndarray, k: np.ndarray, stay: np.ndarray
    ) -> np.ndarray:
        switch = self.switch_flat[state.category * self.n_categories + k]
        interest_k = switch + stay * ((k == state.category) - switch)  # (1-stay)*sw + stay*eq
        if state.response is not None:
            return self._engage_randomized(state.response, actions, interest_k)
        if self.interest_exponent == 1.0:
            z = self.item_factor[actions] * interest_k
        else:
            z = self.item_factor[actions] * np.power(
                self.n_categories * interest_k, self.interest_exponent
            )
        # The saturating response of rlrec.models.sim_model.saturate, below engage_ceiling <= 1.
        m = self.engage_ceiling
        return m * z / (m + z)

    def _engage_randomized(
        self, response: np.ndarray, actions: np.ndarray, interest_k: np.ndarray
    ) -> np.ndarray:
        """(B,) P(engage) with each user's own response parameters (domain randomisation)."""
        r = _by_name(response)
        z = (
            r["engage_base_rate"]
            * np.power(self.rel_pop[actions], r["engage_popularity_exponent"])
            * np.power(self.n_categories * interest_k, r["engage_interest_exponent"])
        )
        m = r["engage_ceiling"]
        return m * z / (m + z)

    def _leave_factor(
        self, state: UserState, engaged: np.ndarray, new_streak: np.ndarray, misses: np.ndarray
    ) -> np.ndarray:
        """(B,) the leave hazard's multiplier after this step (engaged: boredom, else misses)."""
        if state.response is None:
            return np.where(engaged, self.engaged_factor_table[new_streak], self.miss_power[misses])
        r = _by_name(state.response)
        boredom = r["leave_engaged_factor"] * np.power(
            r["leave_streak_factor"], np.maximum(new_streak - r["leave_streak_start"], 0)
        )
        return np.where(engaged, boredom, np.power(r["leave_miss_factor"], misses))

    def step(
        self, state: UserState, actions: np.ndarray, rng: np.random.Generator
    ) -> tuple[UserState, StepResult]:
        """Advance B users by one recommendation.

        Args:
            state: Current state (not modified).
            actions: (B,) int64 catalog items, already checked by :meth:`check_actions`.
            rng: The generator; this draws exactly (5, B) uniforms.

        Returns:
            The new state (fresh arrays) and what happened.
        """
        cat, streak = state.category, state.streak
        u = rng.random((_N_UNIFORMS, state.size))
        k = self.item_category[actions]
        stay = self._stay(state)
        # p < engage_ceiling <= 1 (saturating response), so the funnel below, which scales p by
        # the cart/buy thresholds, never inflates the cart and buy rates.
        p = self._engage_probability(state, actions, k, stay)
        # One uniform for engagement and funnel: given u0 < p, u0 / p is uniform on [0, 1),
        # so u0 < p * threshold draws the funnel (buy <= cart thresholds nest).
        u0 = u[0]
        engaged = u0 < p
        outcome = (
            engaged.view(np.int8)
            + (u0 < p * self.cart_threshold[actions]).view(np.int8)
            + (u0 < p * self.buy_threshold[actions]).view(np.int8)
        )
        reward = self.reward_table[outcome]

        # Organic step, computed for everyone and used where the recommendation was missed:
        # cheaper than indexing the missed subset for batches of a few thousand.
        organic_category = np.where(u[1] < stay, cat, self._switch.sample(cat, u[2]))
        organic_item = self._items.sample(organic_category, u[3])

        new_cat = np.where(engaged, k, organic_category)
        new_streak = np.where(new_cat == cat, streak + 1, 1)
        item = np.where(engaged, actions, organic_item)

        step = state.step + 1
        misses = np.where(engaged, 0, state.misses + 1)
        factor = self._leave_factor(state, engaged, new_streak, misses)
        terminated = u[4] < self.hazard_table[step] * factor
        episode_steps = state.episode_steps + 1
        # For booleans a > b is a & ~b: truncated only if the user did not leave.
        truncated = (episode_steps >= self.config.max_steps) > terminated

        history = np.empty_like(state.history)  # (2, B, L)
        history[:, :, :-1] = state.history[:, :, 1:]
        history[0, :, -1] = self.item_token[item]
        if self._items.all_nonempty:
            history[1, :, -1] = self.item_category_token[item]
        else:
            history[1, :, -1] = np.where(
                item >= 0, self.item_category_token[item], self.sim_category_token[new_cat]
            )
        lifecycle = state.lifecycle
        if lifecycle is not None:
            # Fresh arrays, as for the rest of the state: observations handed out stay valid.
            counted = np.stack(
                [np.ones_like(outcome), engaged, outcome >= 2, outcome == 3], axis=1
            ).astype(np.int64)
            lifecycle = replace(
                lifecycle,
                counts=lifecycle.counts + counted,
                day=lifecycle.day.copy(),
                since_last=lifecycle.since_last.copy(),
                session_index=lifecycle.session_index.copy(),
            )
        new_state = UserState(
            category=new_cat,
            streak=new_streak,
            step=step,
            misses=misses,
            episode_steps=episode_steps,
            history=history,
            focus=state.focus,
            response=state.response,
            lifecycle=lifecycle,
        )
        return new_state, StepResult(
            reward=reward,
            engaged=engaged,
            outcome=outcome,
            item=item,
            terminated=terminated,
            truncated=truncated,
        )

    def end_sessions(
        self, state: UserState, result: StepResult, rng: np.random.Generator
    ) -> tuple[StepResult, SessionEnds]:
        """Lifecycle episodes: send users whose session ended to their next session, IN PLACE.

        A session that ended (the user left, or ``max_steps`` was reached) is followed by a
        gap drawn from the return process given the session's counters; the user comes back
        (a new session starts in the same row, the episode goes on) unless they dropped out
        (the episode terminates) or the next session would start at or after
        ``horizon_days`` or exceed ``max_sessions`` (the episode is truncated). Rewards are
        discounted by ``day_discount ** day``.

        Only for a state returned by :meth:`step` whose arrays have not been handed out yet.

        Args:
            state: The state after the step; rows that return are modified in place.
            result: The step's result (session-level ends).
            rng: The generator; this draws (2, B) uniforms for the gaps, then (2, R) for the
                R returning users' first steps.

        Returns:
            The step result with episode-level ``terminated``/``truncated`` and discounted
            rewards, and what happened between sessions.
        """
        life = state.lifecycle
        returns = self.returns
        assert life is not None and returns is not None
        n = state.size
        day = life.day.copy()
        ended = result.terminated | result.truncated
        u = rng.random((2, n))
        gap = np.full(n, np.nan)
        rows = np.flatnonzero(ended)
        if len(rows):
            x = session_covariates(life.counts[rows], returns.covariates)
            gap[rows] = returns.sample_gap(x, life.rate[rows], u[:, rows])
        next_day = day + np.where(ended, gap, 0.0)
        dropped = ended & np.isinf(gap)
        out_of_time = (
            ended
            & ~dropped
            & (
                (next_day >= self.config.horizon_days)
                | (life.session_index + 1 >= self.config.max_sessions)
            )
        )
        returned = ended & ~dropped & ~out_of_time
        back = np.flatnonzero(returned)
        if len(back):
            self._next_session(state, back, gap[back], rng)
        reward = result.reward
        if self.config.day_discount < 1.0:
            reward = reward * np.power(self.config.day_discount, day)
        episode = replace(result, reward=reward, terminated=dropped, truncated=out_of_time)
        return episode, SessionEnds(ended=ended, returned=returned, gap_days=gap, day=day)

    def _next_session(
        self, state: UserState, rows: np.ndarray, gap: np.ndarray, rng: np.random.Generator
    ) -> None:
        """Start the next session of users ``rows`` after ``gap`` (R,) days, in place.

        Interest carries over: the session starts in the last session's category with
        probability ``carryover``, else in one drawn from the fitted first-category
        distribution; its first step is an organic item of that category by popularity,
        appended to the history (which keeps the earlier sessions' steps, as an encoder over
        the user's history would see them).
        """
        returns = self.returns
        life = state.lifecycle
        assert returns is not None and life is not None
        m = len(rows)
        u = rng.random((3, m))
        fresh = self._initial.sample(np.zeros(m, dtype=np.int64), u[0])
        category = np.where(u[1] < returns.carryover, state.category[rows], fresh)
        item = self._items.sample(category, u[2])
        history = state.history[:, rows]  # (2, R, L) copy (fancy indexing)
        history[:, :, :-1] = history[:, :, 1:]
        history[0, :, -1] = self.item_token[item]
        history[1, :, -1] = np.where(
            item >= 0, self.item_category_token[item], self.sim_category_token[category]
        )
        state.history[:, rows] = history
        state.category[rows] = category
        state.streak[rows] = 1
        state.step[rows] = 1
        state.misses[rows] = 0
        state.episode_steps[rows] = 0
        if state.focus is not None and self.focus_prior is not None:
            a, b = self.focus_prior
            state.focus[rows] = rng.beta(a, b, size=m)
        life.day[rows] += gap
        life.since_last[rows] = gap
        life.session_index[rows] += 1
        life.counts[rows] = 0

    def interest(self, state: UserState) -> np.ndarray:
        """(B, K) interest distributions (the hidden state oracles may see).

        :meth:`SimModel.interest` with the precomputed stay table (no clipping per call).
        """
        stay = self._stay(state)  # (B,)
        out = (1.0 - stay)[:, None] * self.switch_matrix[state.category]  # (B, K)
        out[np.arange(state.size), state.category] += stay
        return out
