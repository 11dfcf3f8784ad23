"""Choosing a policy that never loses to the baselines anywhere in the prior.

The response parameters that organic logs cannot identify decide what a long-term policy
should do: with boredom, leave a category before the user tires of it; without, stay. A plan
made for the prior's mean wins by 30% where users tire and loses by 25% where they do not
(``docs/agent.md`` has the measurements). A recommender that must never lose to the simple
baselines therefore cannot plan for one guess.

:func:`select_robust` makes the choice on *validation worlds*: the fitted SimModel with its
unidentified response parameters set to the prior's centre, to each parameter's low and high
end with the others at the centre (a one-at-a-time design that always contains the extremes,
such as no boredom at all), and to ``n_random`` draws from the prior. Every candidate policy
and every non-oracle baseline is rolled out on the same seeded users in each world; a
candidate's score in a world is its return divided by the best baseline's there. The rule:

* ``safe`` (the default): the highest mean ratio among the candidates whose worst ratio is at
  least ``1 - tolerance``; if none is, the one with the best worst ratio;
* ``mean``: the highest mean ratio (the Bayes choice: more on average, may lose somewhere).

The candidates are planners (:mod:`rlrec.agents.planner`): one for the centre, one for the whole
prior (bold), and hedges between the bold plan and the validation world where it loses most
(that world's own plan, points nearer the centre, and the prior with that world given a
share of the weight), so the family spans cautious to bold plans.

In lifecycle episodes a user's own sessions show how their world responds, so the family
also holds *adaptive* plans (:mod:`rlrec.agents.adaptive`): particles spanning the prior (the
same one-at-a-time design with draws of another seed, so that a particle is never a random
validation world, plus the hedges' world), each user's posterior over them starting with
most of its mass on that world. They start as a hedge and turn bold where the user's sessions
show that boldness pays; the safe rule treats them like any other candidate. Lifecycle plans
add a retention bonus (:func:`lifecycle_bonus`), a first-order estimate made at the centre
world's typical session, so the hedges' world's plan and the adaptive family come both with
and without it (``, one session``): which one keeps users is decided on lifecycle rollouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rlrec.agents.adaptive import AdaptivePlan, AdaptivePlanPolicy
from rlrec.agents.planner import Planner, PlannerConfig, PlannerPolicy
from rlrec.agents.retention import RetentionBonus, retention_bonus
from rlrec.data.dataset import PreparedDataset
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig
from rlrec.envs.dynamics import return_process_of
from rlrec.evaluation.rollout import rollout
from rlrec.models.prior import RESPONSE_PARAMETERS, RESPONSE_PRIOR, prior_draws, unidentified
from rlrec.models.sim_model import SimModel

__all__ = [
    "ADAPTIVE_PRIOR_MASS",
    "RobustChoice",
    "Selection",
    "lifecycle_bonus",
    "robust_planner",
    "select_robust",
    "validation_worlds",
    "world_model",
]

Selection = Literal["safe", "mean"]

ADAPTIVE_PRIOR_MASS: tuple[float, ...] = (0.6, 0.8, 0.9)
"""Prior mass on the hedges' world of the adaptive candidates (the rest spread evenly over
the other particles): how much evidence a user's sessions need before the plan turns bold."""


def _centre(model: SimModel) -> np.ndarray:
    """(P,) the model's own response parameters (RESPONSE_PARAMETERS): the prior's centre."""
    return np.array([float(getattr(model, p)) for p in RESPONSE_PARAMETERS])


def validation_worlds(model: SimModel, n_random: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(W, P) response parameters of the validation worlds, and a label for each.

    The centre (the model's own values), each unidentified parameter at its low and high end
    (others at the centre), then ``n_random`` prior draws. With nothing unidentified there is
    one world: the model itself.
    """
    centre = _centre(model)
    rows, labels = [centre], ["centre"]
    names = unidentified(model)
    for name in names:
        j = RESPONSE_PARAMETERS.index(name)
        for value in (RESPONSE_PRIOR[name].low, RESPONSE_PRIOR[name].high):
            if value == centre[j]:
                continue
            row = centre.copy()
            row[j] = value
            rows.append(row)
            labels.append(f"{name}={value:g}")
    if names and n_random > 0:
        draws = prior_draws(model, n_random, np.random.default_rng(seed), names)
        rows.extend(draws)
        labels.extend(f"draw{i}" for i in range(n_random))
    return np.array(rows), labels


def world_model(model: SimModel, theta: np.ndarray) -> SimModel:
    """``model`` with its response parameters set to ``theta`` (columns RESPONSE_PARAMETERS).

    Provenance is left as it is: a validation world is the same fitted model under another
    value of what the fit could not tell.
    """
    values = dict(zip(RESPONSE_PARAMETERS, (float(v) for v in theta), strict=True))
    return dataclasses.replace(model, **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RobustChoice:
    """The outcome of :func:`select_robust`.

    Attributes:
        chosen: Name of the chosen candidate.
        rule: The selection rule applied (``safe`` or ``mean``), and whether the safe rule
            found a candidate within tolerance (``safe-fallback`` when none was).
        worlds: Validation world labels.
        returns: Policy name -> (W,) mean return per world (candidates and baselines); NaN in
            the worlds a candidate was not rolled out in (dropped early, see
            :func:`select_robust`).
        ratios: Candidate name -> (W,) ratio to the best baseline per world (NaN likewise).
        best_baseline: (W,) name of the best baseline in each world.
        adaptive: The chosen candidate's adaptive plan when an adaptive one was chosen (the
            returned planner is then its main particle's: the policy PPO starts from).
        start: The candidate whose plan PPO starts from (:func:`robust_planner`: the chosen
            one, or for an adaptive choice the plan of its main particle); empty otherwise.
    """

    chosen: str
    rule: str
    worlds: list[str]
    returns: dict[str, np.ndarray] = field(default_factory=dict)
    ratios: dict[str, np.ndarray] = field(default_factory=dict)
    best_baseline: list[str] = field(default_factory=list)
    adaptive: AdaptivePlan | None = None
    start: str = ""

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the choice, and each candidate's mean and worst ratio.

        A candidate dropped early gets these over the worlds it was rolled out in, and
        ``worlds_evaluated`` says how many those were.
        """
        out: dict[str, Any] = {}
        for name, r in self.ratios.items():
            done = np.flatnonzero(np.isfinite(r))
            out[name] = {
                "mean_ratio": float(np.mean(r[done])),
                "worst_ratio": float(np.min(r[done])),
                "worst_world": self.worlds[int(done[np.argmin(r[done])])],
            }
            if len(done) < len(r):
                out[name]["worlds_evaluated"] = len(done)
        return {
            "chosen": self.chosen,
            "rule": self.rule,
            "n_worlds": len(self.worlds),
            "candidates": out,
        }


def select_robust(
    model: SimModel,
    dataset: PreparedDataset | None,
    env: EnvConfig,
    candidates: Mapping[str, Any],
    baselines: Mapping[str, Any],
    thetas: np.ndarray,
    labels: list[str],
    episodes: int = 1000,
    seed: int = 0,
    rule: Selection = "safe",
    tolerance: float = 0.01,
    progress: Callable[[str], None] | None = None,
    known_returns: Mapping[str, np.ndarray] | None = None,
) -> RobustChoice:
    """Roll every candidate and baseline out in every validation world and choose.

    Under the safe rule, once a candidate is known to be safe (its worst ratio at least
    ``1 - tolerance``), a candidate that falls below that in some world can no longer be
    chosen (the rule picks among the safe ones), so it is not rolled out in the remaining
    worlds: the choice is the same as with every world rolled out. Without a known safe
    candidate the rule falls back to the best worst ratio, and the same holds below the best
    known worst ratio. The worlds are then visited in the order of the known candidates'
    lowest ratio there, where a weaker policy is likeliest to fall short first.

    Args:
        model: The fitted SimModel.
        dataset: Its PreparedDataset (warm starts).
        env: The env settings.
        candidates: Name -> policy to choose from.
        baselines: Name -> non-oracle baseline policy.
        thetas: (W, P) validation worlds (:func:`validation_worlds`).
        labels: (W,) their labels.
        episodes: Seeded users per policy and world (the same users for all).
        seed: Seed of the users.
        rule: ``safe`` or ``mean`` (see the module docstring).
        tolerance: The safe rule's allowance below a ratio of 1.
        progress: Called with each world's label.
        known_returns: Name -> (W,) returns of candidates or baselines from an earlier call on
            the same worlds, users and episodes (they are not rolled out again).

    Returns:
        The choice and everything it was based on.
    """
    n_worlds = len(thetas)
    known = {k: np.asarray(v, dtype=np.float64) for k, v in (known_returns or {}).items()}
    returns = {name: known[name] for name in [*candidates, *baselines] if name in known}
    todo = [b for b in baselines if b not in known] + [c for c in candidates if c not in known]
    for name in todo:
        returns[name] = np.full(n_worlds, np.nan)
    floor = 1.0 - tolerance
    order = np.arange(n_worlds)
    known_ratios: list[np.ndarray] = []
    if all(b in known for b in baselines):
        best = np.stack([known[b] for b in baselines]).max(axis=0)
        known_ratios = [known[c] / np.maximum(best, 1e-12) for c in candidates if c in known]
    # Below this ratio in one world a candidate can no longer be chosen: the floor when a
    # known candidate is safe; without one (the rule falls back to the best worst ratio), the
    # best known worst ratio, which is then below the floor.
    drop_below = (
        min(floor, max(float(np.min(r)) for r in known_ratios))
        if rule == "safe" and known_ratios
        else -np.inf
    )
    if known_ratios:
        order = np.argsort(np.min(np.stack(known_ratios), axis=0), kind="stable")
    dropped: set[str] = set()
    for w in order:
        live = [name for name in todo if name not in dropped]
        if not live:
            break
        if progress is not None:
            progress(labels[w])
        venv = BatchedInterestDrift(episodes, world_model(model, thetas[w]), dataset, env)
        for name in live:
            policy = candidates[name] if name in candidates else baselines[name]
            returns[name][w] = float(rollout(policy, venv, seed).returns.mean())
        best_w = max(returns[b][w] for b in baselines)
        for name in live:
            if name in candidates and returns[name][w] / max(best_w, 1e-12) < drop_below:
                dropped.add(name)
    base = np.stack([returns[b] for b in baselines])  # (B, W)
    best = base.max(axis=0)
    ratios = {c: returns[c] / np.maximum(best, 1e-12) for c in candidates}
    mean = {c: float(np.nanmean(r)) for c, r in ratios.items()}
    worst = {c: float(np.nanmin(r)) for c, r in ratios.items()}
    applied: str = rule
    if rule == "mean":
        chosen = max(mean, key=lambda c: mean[c])
    else:
        safe = [c for c in candidates if worst[c] >= floor]
        if safe:
            chosen = max(safe, key=lambda c: mean[c])
        else:
            chosen, applied = max(worst, key=lambda c: worst[c]), "safe-fallback"
    baseline_names = list(baselines)
    return RobustChoice(
        chosen=chosen,
        rule=applied,
        worlds=labels,
        returns=returns,
        ratios=ratios,
        best_baseline=[baseline_names[i] for i in base.argmax(axis=0)],
    )


def lifecycle_bonus(
    model: SimModel,
    dataset: PreparedDataset | None,
    env: EnvConfig,
    n_actions: int,
    seed: int = 0,
    episodes: int = 2000,
    rounds: int = 2,
) -> RetentionBonus:
    """The retention bonus of lifecycle episodes, at the sessions of the plan it shapes.

    The bonus is a first-order expansion around the typical session, and the typical session
    depends on the plan: each round plans the centre world with the current bonus (none at
    first), rolls one session of ``episodes`` users out in it and recomputes the bonus there.

    Raises:
        UserError: If the env is not in lifecycle mode or has no return process.
    """
    if env.episode != "lifecycle":
        from rlrec.errors import UserError

        raise UserError("a retention bonus needs env.episode: lifecycle and a return process")
    process = return_process_of(model, env)
    session_env = dataclasses.replace(env, episode="session")
    venv = BatchedInterestDrift(episodes, model, dataset, session_env)
    config = PlannerConfig(seed=seed, iterations=0)
    centre = _centre(model)[None, :]
    bonus: RetentionBonus | None = None
    for _ in range(rounds):
        planner = Planner(model, n_actions, env.reward_weights, config, centre, bonus=bonus)
        stats = rollout(PlannerPolicy(planner.table, n_actions), venv, seed)
        counts = np.array(
            [stats.lengths.mean(), stats.engaged.mean(), stats.carts.mean(), stats.buys.mean()]
        )
        bonus = retention_bonus(process, env, float(stats.returns.mean()), counts, seed)
    assert bonus is not None
    return bonus


def robust_planner(
    model: SimModel,
    dataset: PreparedDataset | None,
    env: EnvConfig,
    n_actions: int,
    baselines: Mapping[str, Any],
    n_random: int = 8,
    episodes: int = 1000,
    seed: int = 0,
    rule: Selection = "safe",
    progress: Callable[[str], None] | None = None,
) -> tuple[Planner, RobustChoice]:
    """Make the candidate plans (see the module docstring) and keep the robust choice.

    Args:
        model: The fitted SimModel.
        dataset: Its PreparedDataset (warm starts).
        env: The env settings.
        n_actions: A.
        baselines: Name -> non-oracle baseline policy.
        n_random: Random prior draws among the validation worlds.
        episodes: Seeded users per policy and world.
        seed: Seed of the draws and the users.
        rule: ``safe`` or ``mean``.
        progress: Called with each plan's and world's label.

    Lifecycle episodes: every plan adds the retention bonus of :func:`lifecycle_bonus`, so
    the candidates plan for users coming back; the choice is made on lifecycle returns.

    Returns:
        The chosen :class:`~rlrec.agents.planner.Planner` and the :class:`RobustChoice`.
    """
    thetas, labels = validation_worlds(model, n_random, seed)
    bonus = None
    if env.episode == "lifecycle":
        if progress is not None:
            progress("retention bonus")
        bonus = lifecycle_bonus(model, dataset, env, n_actions, seed)

    def plan(
        name: str,
        draws: np.ndarray | None,
        weights: np.ndarray | None = None,
        shaped: bool = True,
    ) -> None:
        if progress is not None:
            progress(name)
        config = PlannerConfig(
            seed=seed, iterations=0 if draws is not None and len(draws) == 1 else 2
        )
        planners[name] = Planner(
            model,
            n_actions,
            env.reward_weights,
            config,
            draws,
            weights,
            bonus=bonus if shaped else None,
        )

    planners: dict[str, Planner] = {}
    plan("plan[centre]", thetas[:1])
    if bonus is not None:
        # The one-session plan stays a candidate: the bonus is a first-order estimate, and
        # the choice between them is made on lifecycle rollouts.
        plan("plan[centre, one session]", thetas[:1], shaped=False)
    known_returns = None
    if len(labels) > 1:
        # The bold plan (for the prior's draws), then hedges between it and the world where
        # it loses most: that world's own plan, nearer points towards the centre, and the
        # prior's draws with that world given a share of the weight.
        plan("plan[prior]", None)
        first = select_robust(
            model,
            dataset,
            env,
            {"plan[prior]": PlannerPolicy(planners["plan[prior]"].table, n_actions)},
            baselines,
            thetas,
            labels,
            episodes,
            seed,
            rule,
        )
        known_returns = {b: first.returns[b] for b in baselines}
        worst = int(np.argmin(first.ratios["plan[prior]"]))
        if worst != 0:
            plan(f"plan[{labels[worst]}]", thetas[worst][None, :])
            if bonus is not None:
                plan(f"plan[{labels[worst]}, one session]", thetas[worst][None, :], shaped=False)
            for step in (0.1, 0.25, 0.5):
                theta = thetas[worst] + step * (thetas[0] - thetas[worst])
                plan(f"plan[{labels[worst]} +{step:g} to centre]", theta[None, :])
        prior = planners["plan[prior]"].draws
        draws = np.vstack([thetas[worst][None, :], prior])
        for share in (0.5, 0.75, 0.9):
            weights = np.r_[share, np.full(len(prior), (1.0 - share) / len(prior))]
            plan(f"plan[prior+{share:g} {labels[worst]}]", draws, weights)
    candidates: dict[str, Any] = {
        name: PlannerPolicy(p.table, n_actions) for name, p in planners.items()
    }
    adaptive: dict[str, AdaptivePlan] = {}
    starts: dict[str, str] = {}
    if bonus is not None and len(labels) > 1:
        particles, names = validation_worlds(model, n_random, seed + 1)
        particles = np.vstack([particles, thetas[worst][None, :]])
        names = [*names, f"hedge:{labels[worst]}"]
        if progress is not None:
            progress(f"adaptive plans ({len(particles)} particles)")
        single = PlannerConfig(seed=seed, iterations=0)
        tokens = BatchedInterestDrift(1, model, dataset, env).dynamics.item_token
        # Two families: particles planned with the retention bonus and without it. The bonus
        # is a first-order expansion at the centre world's typical session; in a world whose
        # sessions differ it can trade engagement for buys that do not bring users back
        # sooner (measured: -5% in one validation world), so the choice between the two
        # families, like that between the shaped and one-session centre plans, is made on
        # lifecycle rollouts.
        for shaped in (True, False):
            suffix = "" if shaped else ", one session"
            # The main particle's plan is the hedges' world's own plan, already a candidate
            # (that world's single-draw plan; the centre's when the bold plan lost most there).
            main = (f"plan[{labels[worst]}" if worst != 0 else "plan[centre") + suffix + "]"
            own = [
                Planner(
                    model,
                    n_actions,
                    env.reward_weights,
                    single,
                    theta[None, :],
                    bonus=bonus if shaped else None,
                )
                for theta in particles[:-1]
            ] + [planners[main]]
            for mass in ADAPTIVE_PRIOR_MASS:
                share = (1.0 - mass) / (len(particles) - 1)
                weights = np.r_[np.full(len(particles) - 1, share), mass]
                name = f"adaptive[{mass:g} {labels[worst]}{suffix}]"
                adaptive[name] = AdaptivePlan.from_planners(
                    own, weights, tokens, model.item_popularity, model.item_category, names
                )
                candidates[name] = AdaptivePlanPolicy(adaptive[name], n_actions)
                planners[name] = planners[main]  # PPO's start: the prior's main mass
                starts[name] = main
    choice = select_robust(
        model,
        dataset,
        env,
        candidates,
        baselines,
        thetas,
        labels,
        episodes,
        seed,
        rule,
        progress=progress,
        known_returns=known_returns,
    )
    if choice.chosen in adaptive:
        choice = dataclasses.replace(
            choice, adaptive=adaptive[choice.chosen], start=starts[choice.chosen]
        )
    else:
        choice = dataclasses.replace(choice, start=choice.chosen)
    return planners[choice.chosen], choice
