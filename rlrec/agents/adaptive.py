"""A plan that learns, from a user's own history, how that user's world responds.

One plan for the whole prior must hedge: with boredom, leave a category before the user tires
of it; without, stay. Logs cannot tell these worlds apart (boredom never shows in organic
behaviour), but a user's *responses to the recommendations* can: whether the recommended item
was taken, and when the session ended after which streak. Over a lifecycle episode (a user's
sessions over weeks) that is dozens of sessions of evidence about the same world.

:class:`AdaptivePlan` keeps a set of *particles*: response-parameter sets spanning the prior
(:func:`particles`), each with its own solved plan (a :class:`~rlrec.agents.planner.Planner`
value table, retention bonus included in lifecycle episodes) and the response it implies
(engagement probability by state and action, the hazard factors after engaged and missed
steps). :class:`AdaptivePlanPolicy` holds, per user, a posterior over the particles. Before
each recommendation it updates that posterior with the likelihood of what happened after the
previous one:

* the recommended (top) item appeared next: it was engaged with, or the user reached it on
  their own (the organic probability of that item is in the likelihood, so a coincidence does
  not count as full evidence);
* another item appeared: a miss;
* the user stayed (the session went on) or left (a new session started, ``session_index``
  grew): the hazard at that step times the particle's factor after an engaged step at that
  streak (boredom) or after that many consecutive misses.

It then recommends the category with the highest posterior-mean value (QMDP: it acts on what
it believes, and does not plan to learn). The prior weights come from the robust choice of
:mod:`rlrec.agents.robust`: most of the mass on the hedge that never loses, the rest spread
over the particles. A user starts on the hedge, whose streaks are long enough to show boredom
if there is any, and moves to the world their sessions point to.

The recommender observes the histories (items, categories), the session step and, in
lifecycle episodes, the session index; nothing hidden. The organic next step (a miss) has the
same probability in every particle (the migration model is fitted), so it cancels.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.agents.planner import Planner, PlannerConfig, plan_state
from rlrec.agents.retention import RetentionBonus
from rlrec.envs.config import RewardWeights
from rlrec.errors import UserError
from rlrec.models.sim_model import SimModel

__all__ = ["AdaptivePlan", "AdaptivePlanPolicy"]

_TINY = 1e-12


@dataclass(frozen=True)
class AdaptivePlan:
    """Particles' plans and responses, and how to read observations.

    Attributes:
        values: (J, T, K, S, K) float32 value of recommending each category at ``m = 0`` in
            each particle's own plan; 0 for a category without a catalog item (never
            recommended: ``top_item`` is -1 there).
        prior: (J,) prior weight of each particle (sums to 1).
        engage: (J, K, S, K) probability that the top item of category ``k`` is engaged with in
            state ``(c, s)``.
        boredom: (J, S) hazard factor after an engaged step with new streak ``s'`` (index
            ``s' - 1``).
        misses: (J, M) hazard factor after ``m`` consecutive misses (index ``m - 1``).
        hazard: (T,) the leave hazard after the recommendation made at session step ``t + 1``.
        stay: (S,) organic stay probability at streak ``s`` (index ``s - 1``).
        switch: (K, K) organic switch probabilities.
        top_share: (K,) probability that an organic step into category ``k`` picks its top item.
        top_item: (K,) the catalog action standing for each category (-1: none).
        top_token: (K,) the item token of that action in observations (-1: none).
        category_of_dataset_category: (C,) sim category of each dataset category.
        labels: (J,) a label per particle.
        thetas: (J, P) each particle's response parameters (columns
            :data:`rlrec.models.prior.RESPONSE_PARAMETERS`): with the model, the bonus and the
            planner settings they rebuild everything above (what :meth:`save` writes).
        bonus: The retention bonus the particles' plans add (None: one-session plans).
        planner: The particles' planner settings.
    """

    values: np.ndarray
    prior: np.ndarray
    engage: np.ndarray
    boredom: np.ndarray
    misses: np.ndarray
    hazard: np.ndarray
    stay: np.ndarray
    switch: np.ndarray
    top_share: np.ndarray
    top_item: np.ndarray
    top_token: np.ndarray
    category_of_dataset_category: np.ndarray
    labels: tuple[str, ...]
    thetas: np.ndarray
    bonus: RetentionBonus | None
    planner: PlannerConfig

    @property
    def n_particles(self) -> int:
        """J."""
        return int(self.values.shape[0])

    @property
    def max_streak(self) -> int:
        """S."""
        return int(self.values.shape[3])

    @classmethod
    def from_planners(
        cls,
        planners: list[Planner],
        prior: np.ndarray,
        item_token: np.ndarray,
        item_popularity: np.ndarray,
        item_category: np.ndarray,
        labels: list[str],
    ) -> AdaptivePlan:
        """Stack one single-draw planner per particle.

        Args:
            planners: J planners of the same model, each with exactly one draw.
            prior: (J,) non-negative prior weights.
            item_token: (A',) item token of each catalog item in observations (the env's).
            item_popularity: (A',) the model's item popularity (organic item choice).
            item_category: (A',) the model's item categories.
            labels: (J,) particle labels.

        Raises:
            UserError: If the planners disagree or a weight is negative.
        """
        if not planners or any(len(p.draws) != 1 for p in planners):
            raise UserError("adaptive plan: need one single-draw planner per particle")
        w = np.asarray(prior, dtype=np.float64)
        if w.shape != (len(planners),) or np.any(w < 0) or w.sum() <= 0:
            raise UserError("adaptive plan: need one non-negative prior weight per particle")
        first = planners[0]
        worlds = [p._draw(p.draws[0]) for p in planners]
        top = first.top_item
        safe_top = np.where(top >= 0, top, 0)
        cats = np.asarray(item_category, dtype=np.int64)
        pop = np.asarray(item_popularity, dtype=np.float64)
        per_category = np.bincount(cats, weights=pop, minlength=first.n_categories)
        share = np.where(top >= 0, pop[safe_top] / np.maximum(per_category, _TINY), 0.0)
        token = np.where(top >= 0, np.asarray(item_token)[safe_top], -1)
        return cls(
            values=_finite(np.stack([p.values for p in planners]).astype(np.float32)),
            prior=w / w.sum(),
            engage=np.stack([wd["engage"] for wd in worlds]),
            boredom=np.stack([wd["boredom"] for wd in worlds]),
            misses=np.stack([wd["misses"] for wd in worlds]),
            hazard=np.asarray(first.hazard, dtype=np.float64),
            stay=np.asarray(first.stay, dtype=np.float64),
            switch=np.asarray(first.switch, dtype=np.float64),
            top_share=share,
            top_item=np.asarray(top, dtype=np.int64),
            top_token=token.astype(np.int64),
            category_of_dataset_category=np.asarray(
                first.category_of_dataset_category, dtype=np.int64
            ),
            labels=tuple(labels),
            thetas=np.vstack([p.draws for p in planners]),
            bonus=first.bonus,
            planner=first.config,
        )

    def state(self, obs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t, c, s)`` indices (each (B,)) of batched observations, as the planner reads them."""
        return plan_state(
            obs, self.category_of_dataset_category, self.max_streak, self.values.shape[1]
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan's recipe as an ``.npz`` of numeric arrays (loading never unpickles).

        The particles' value tables are large (``J x T x K x S x K``: hundreds of MB for the
        synthetic preset), so the file keeps what rebuilds them exactly: the particles, the
        prior, the bonus and the planner settings, plus a checksum of the values that
        :meth:`load` compares against the rebuilt plan.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        bonus = self.bonus
        arrays: dict[str, np.ndarray] = {
            "thetas": self.thetas.astype(np.float64),
            "prior": self.prior.astype(np.float64),
            "labels": np.array(self.labels, dtype=np.str_),
            "bonus": np.array(
                []
                if bonus is None
                else [
                    bonus.event,
                    bonus.outcome.engage,
                    bonus.outcome.cart,
                    bonus.outcome.buy,
                    bonus.session_value,
                    bonus.further_sessions,
                    bonus.p_return,
                ],
                dtype=np.float64,
            ),
            "planner": np.array(
                [
                    self.planner.max_streak,
                    self.planner.max_misses,
                    self.planner.tail_tolerance,
                    self.planner.tail_max_iterations,
                    self.planner.seed,
                ],
                dtype=np.float64,
            ),
            "checksum": _checksum(self.values),
        }
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: SimModel,
        n_actions: int,
        weights: RewardWeights,
        item_token: np.ndarray,
    ) -> AdaptivePlan:
        """Rebuild a plan written by :meth:`save` for the run's model.

        Args:
            path: The file.
            model: The run's SimModel (the plan was made for it).
            n_actions: A.
            weights: The env's reward weights.
            item_token: (A',) item token of each catalog item (the env's).

        Raises:
            UserError: If the file is missing, unreadable, inconsistent, or its plan differs
                from the one the model rebuilds (another model, or another rlrec).
        """
        try:
            with np.load(path, allow_pickle=False) as npz:
                fields = {name: np.asarray(npz[name]) for name in npz.files}
            thetas = fields["thetas"].astype(np.float64)
            prior = fields["prior"].astype(np.float64)
            labels = [str(x) for x in fields["labels"]]
            b, c = fields["bonus"].astype(np.float64), fields["planner"].astype(np.float64)
            checksum = fields["checksum"].astype(np.float64)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(
                f"{path}: unreadable adaptive plan ({exc}); train the run again"
            ) from None
        j = len(thetas)
        if not (
            thetas.ndim == 2
            and j > 0
            and prior.shape == (j,)
            and len(labels) == j
            and b.shape in ((0,), (7,))
            and c.shape == (5,)
            and checksum.shape == (j,)
            and np.all(np.isfinite(thetas))
        ):
            raise UserError(f"{path}: an inconsistent adaptive plan; train the run again")
        bonus = None
        if len(b):
            bonus = RetentionBonus(
                event=float(b[0]),
                outcome=RewardWeights(float(b[1]), float(b[2]), float(b[3])),
                session_value=float(b[4]),
                further_sessions=float(b[5]),
                p_return=float(b[6]),
            )
        try:
            config = PlannerConfig(
                max_streak=int(c[0]),
                max_misses=int(c[1]),
                n_draws=1,
                iterations=0,
                tail_tolerance=float(c[2]),
                tail_max_iterations=int(c[3]),
                seed=int(c[4]),
            )
            planners = [
                Planner(model, n_actions, weights, config, theta[None, :], bonus=bonus)
                for theta in thetas
            ]
            plan = cls.from_planners(
                planners, prior, item_token, model.item_popularity, model.item_category, labels
            )
        except (UserError, ValueError, IndexError) as exc:
            raise UserError(
                f"{path}: an adaptive plan this run's model cannot rebuild ({exc}); "
                "train the run again"
            ) from None
        if not np.allclose(_checksum(plan.values), checksum, rtol=1e-5, atol=1e-6):
            raise UserError(
                f"{path}: the adaptive plan differs from the one it was saved as (another "
                "user model or another rlrec version); train the run again"
            )
        return plan


def _finite(values: np.ndarray) -> np.ndarray:
    """``values`` with the planner's ``-inf`` (no catalog item) set to 0, in place.

    The posterior mean then needs no mask per call; those categories are masked by
    ``top_item`` instead.
    """
    values[~np.isfinite(values)] = 0.0
    return values


def _checksum(values: np.ndarray) -> np.ndarray:
    """(J,) sum of each particle's finite values: a cheap check that a rebuilt plan matches."""
    flat = values.reshape(len(values), -1).astype(np.float64)
    return np.where(np.isfinite(flat), flat, 0.0).sum(axis=1)


@dataclass
class _Belief:
    """Per-user memory of :class:`AdaptivePlanPolicy` between calls (the SB3 ``state``)."""

    log_post: np.ndarray  # (B, J)
    action: np.ndarray  # (B,) last recommended category, -1: none yet
    t: np.ndarray  # (B,) its (t, c, s) indices
    c: np.ndarray
    s: np.ndarray
    misses: np.ndarray  # (B,) consecutive misses before it (as inferred)
    session: np.ndarray  # (B,) session index when it was made


class AdaptivePlanPolicy:
    """The particles' plans weighted by each user's posterior (module docstring).

    Args:
        plan: The adaptive plan.
        n_actions: A.
    """

    name = "adaptive_planner"
    uses_hidden_state = False

    def __init__(self, plan: AdaptivePlan, n_actions: int) -> None:
        self.plan = plan
        self.n_actions = n_actions
        self._log_prior = np.log(np.maximum(plan.prior, _TINY))
        self._n_misses = plan.misses.shape[1]

    def _fresh(self, n: int) -> _Belief:
        return _Belief(
            log_post=np.tile(self._log_prior, (n, 1)),
            action=np.full(n, -1, dtype=np.int64),
            t=np.zeros(n, dtype=np.int64),
            c=np.zeros(n, dtype=np.int64),
            s=np.zeros(n, dtype=np.int64),
            misses=np.zeros(n, dtype=np.int64),
            session=np.zeros(n, dtype=np.int64),
        )

    def _update(self, belief: _Belief, obs: dict[str, Any], session: np.ndarray) -> None:
        """Fold the outcome of each user's previous recommendation into their posterior."""
        p = self.plan
        rows = np.flatnonzero(belief.action >= 0)
        if not len(rows):
            return
        a, c, s, t = belief.action[rows], belief.c[rows], belief.s[rows], belief.t[rows]
        items = np.asarray(obs["item_history"], dtype=np.int64).reshape(len(session), -1)[rows]
        left = session[rows] > belief.session[rows]
        # A new session appends its first organic step: the step that followed the
        # recommendation is one further back.
        seen = np.where(left, items[:, -2], items[:, -1])
        hit = seen == p.top_token[a]
        engage = p.engage[:, c, s, a].T  # (R, J)
        new_streak = np.where(a == c, np.minimum(s + 1, p.max_streak - 1), 0)  # index s' - 1
        after_engaged = np.minimum(1.0, p.hazard[t][:, None] * p.boredom[:, new_streak].T)
        m = np.minimum(belief.misses[rows], self._n_misses - 1)  # index of m + 1
        after_missed = np.minimum(1.0, p.hazard[t][:, None] * p.misses[:, m].T)
        # (R,) chance that an organic step (a miss) lands on the recommended item anyway.
        organic_category = p.stay[s] * (a == c) + (1.0 - p.stay[s]) * p.switch[c, a]
        organic = organic_category * p.top_share[a]
        stay_engaged = np.where(left[:, None], after_engaged, 1.0 - after_engaged)
        stay_missed = np.where(left[:, None], after_missed, 1.0 - after_missed)
        like = np.where(
            hit[:, None],
            engage * stay_engaged + (1.0 - engage) * organic[:, None] * stay_missed,
            (1.0 - engage) * stay_missed,
        )
        log_post = belief.log_post[rows] + np.log(np.maximum(like, _TINY))
        belief.log_post[rows] = log_post - log_post.max(axis=1, keepdims=True)
        belief.misses[rows] = np.where(hit, 0, belief.misses[rows] + 1)
        belief.misses[rows[left]] = 0

    def posterior(self, state: _Belief) -> np.ndarray:
        """(B, J) each user's posterior over the particles."""
        w = np.exp(state.log_post - state.log_post.max(axis=1, keepdims=True))
        return w / w.sum(axis=1, keepdims=True)

    def predict(
        self,
        obs: dict[str, Any],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, _Belief]:
        """(B,) the category with the highest posterior-mean value, as its top catalog item."""
        step = np.asarray(obs["step"]).reshape(-1)
        n = len(step)
        session = np.asarray(obs.get("session_index", np.zeros((n, 1)))).reshape(-1)
        session = session.astype(np.int64)
        belief = state if isinstance(state, _Belief) and len(state.action) == n else self._fresh(n)
        if episode_start is not None:
            start = np.flatnonzero(np.asarray(episode_start, dtype=bool).reshape(-1))
            if len(start):
                belief.log_post[start] = self._log_prior
                belief.action[start] = -1
                belief.misses[start] = 0
        self._update(belief, obs, session)
        t, c, s = self.plan.state(obs)
        post = self.posterior(belief)  # (B, J)
        values = self.plan.values[:, t, c, s, :]  # (J, B, K)
        mean = np.einsum("bj,jbk->bk", post, values)
        mean = np.where(self.plan.top_item >= 0, mean, -np.inf)
        category = mean.argmax(axis=1)
        belief.action = category
        belief.t, belief.c, belief.s = t, c, s
        belief.session = session
        return self.plan.top_item[category], belief

    def action_probabilities(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) one-hot rows at the actions of users seen for the first time (prior only)."""
        actions, _ = self.predict(obs, None, np.ones(len(np.asarray(obs["step"])), dtype=bool))
        out = np.zeros((len(actions), self.n_actions))
        out[np.arange(len(actions)), actions] = 1.0
        return out
