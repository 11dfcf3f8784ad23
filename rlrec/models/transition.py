"""Fit the user model (interest migration, saturation, leave, response) from a PreparedDataset.

The fit recovers exactly the parameters of the user model in ``docs/architecture.md`` (the one
the synthetic generator draws from): sessions are collapsed into **steps** (maximal runs of
consecutive same-item events); consecutive steps either stay in the current category or
switch. Switches and staying are separate parameters, as in the generator:

* ``switch_matrix[c, c']``: counts of switches ``c -> c'`` (``c' != c``) in the train split,
  smoothed toward the overall switch-destination distribution with a pseudo-count ``alpha``
  chosen by the held-out log-likelihood of the valid split's switches;
* ``stay_by_streak[s]``: #(streak continues at s) / #(streak reached s and a step followed),
  pooled beyond the last bin;
* ``leave_hazard[t]``: the discrete hazard of the session length in steps, pooled beyond the
  last bin;
* ``initial_category``, the within-category ``item_popularity`` of the top-N catalog, and the
  funnel ``p_cart`` / ``p_buy`` per category (smoothed toward the global rates);
* the response scalars: the engagement base rate is fitted as a click-through rate where the
  log holds impressions without clicks (``reward == 0``); otherwise it is the configured base
  rate and its provenance says so.

Categories beyond the top-K by train frequency are folded into one ``__other__`` category.
Only numpy: models never import the envs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rlrec.data.content import require_categories
from rlrec.data.dataset import PreparedDataset
from rlrec.data.ragged import Ragged
from rlrec.errors import UserError
from rlrec.models.calibration import collapse_steps
from rlrec.models.session_draw import simulate_organic_categories
from rlrec.models.sim_model import Provenance, SimModel

__all__ = [
    "DEFAULT_ENGAGE_BASE_RATE",
    "OTHER_CATEGORY",
    "FitConfig",
    "OrganicSessions",
    "StepLog",
    "choose_smoothing",
    "fit_leave_hazard",
    "fit_sim_model",
    "fold_categories",
    "simulate_organic",
    "smoothed_switch_matrix",
    "step_log",
    "switch_counts",
]

OTHER_CATEGORY = "__other__"
"""Raw id of the sim category that holds every category beyond the top-K."""

DEFAULT_ENGAGE_BASE_RATE = 0.1
"""Engagement base rate used for logs with only positive events (no impressions)."""


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_sim_model`.

    Attributes:
        top_k_categories: Categories kept by train frequency; the rest fold into
            ``__other__``.
        catalog_size: N, the top-N items by train frequency that form the env's catalog.
        max_streak: Most streak bins S of ``stay_by_streak``; the last bin pools s >= S.
        max_steps: Most hazard bins T of ``leave_hazard``; the last bin pools t >= T.
        min_bin_count: A streak or step bin needs this many observations at risk; the curve
            is pooled from the first bin with fewer (so sparse tails do not add noise).
        smoothing_candidates: Pseudo-counts tried for the switch rows; the one with the
            highest valid-split log-likelihood wins.
        funnel_prior_steps: Pseudo-steps pulling each category's funnel rates toward the
            global rates.
        engage_base_rate: Engagement base rate for logs with only positive events; None uses
            :data:`DEFAULT_ENGAGE_BASE_RATE` (provenance ``default``), a number is recorded
            as set by the ``user``.
        response: Response parameters set by the user (name -> value, names from
            :data:`rlrec.models.prior.RESPONSE_PARAMETERS`): recorded with provenance
            ``user``, so they are points rather than ranges of the prior (an env preset's
            ``fit.response``, e.g. ``envs/synthetic_noboredom.yaml``).
        returns: Also fit the return process of lifecycle episodes from the train split
            (:func:`rlrec.models.lifecycle.fit_return_model` on the covariates a simulator
            produces, and how often a session starts in the previous one's category), into
            ``info["return_model"]`` and ``info["session_carryover"]``; a log whose users
            never come back gets ``info["return_model_error"]`` instead.
    """

    top_k_categories: int = 50
    catalog_size: int = 1000
    max_streak: int = 20
    max_steps: int = 50
    min_bin_count: int = 30
    smoothing_candidates: tuple[float, ...] = (
        0.0,
        0.5,
        1.0,
        2.0,
        5.0,
        10.0,
        20.0,
        50.0,
        100.0,
        200.0,
        500.0,
    )
    funnel_prior_steps: float = 50.0
    engage_base_rate: float | None = None
    response: dict[str, float] = field(default_factory=dict)
    returns: bool = True

    def __post_init__(self) -> None:
        if self.top_k_categories < 1:
            raise ValueError("top_k_categories must be >= 1")
        if self.catalog_size < 1:
            raise ValueError("catalog_size must be >= 1")
        if self.max_streak < 1 or self.max_steps < 1 or self.min_bin_count < 1:
            raise ValueError("max_streak, max_steps and min_bin_count must be >= 1")
        if not self.smoothing_candidates or min(self.smoothing_candidates) < 0:
            raise ValueError("smoothing_candidates must be non-empty and >= 0")
        if self.funnel_prior_steps < 0:
            raise ValueError("funnel_prior_steps must be >= 0")
        if self.engage_base_rate is not None and not 0 < self.engage_base_rate < 1:
            raise ValueError("engage_base_rate must be in (0, 1)")
        from rlrec.models.prior import RESPONSE_PARAMETERS

        unknown = sorted(set(self.response) - set(RESPONSE_PARAMETERS))
        if unknown:
            raise ValueError(
                f"response: {unknown[0]!r} is not one of {', '.join(RESPONSE_PARAMETERS)}"
            )


@dataclass(frozen=True)
class StepLog(Ragged):
    """Steps of one split, with categories folded into sim categories.

    Attributes:
        offsets: (S + 1,) CSR offsets of each session's steps.
        category: (n_steps,) sim category of each step.
        item: (n_steps,) dataset item index of each step.
        cart: (n_steps,) bool, the step reached the cart (a cart or a buy event).
        buy: (n_steps,) bool, the step has a buy.
    """

    category: np.ndarray
    item: np.ndarray
    cart: np.ndarray
    buy: np.ndarray

    def transitions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Consecutive step pairs inside sessions.

        Returns:
            ``current`` and ``following`` categories, and ``streak`` (steps already spent in
            ``current`` at the current step, >= 1), each (n_pairs,).
        """
        n = len(self.category)
        first = np.zeros(n, dtype=bool)
        first[self.offsets[:-1][self.offsets[:-1] < n]] = True
        new_run = first | np.r_[True, self.category[1:] != self.category[:-1]]
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
        streak = np.arange(n) - run_start + 1
        has_next = np.r_[~first[1:], False]
        idx = np.flatnonzero(has_next)
        return self.category[idx], self.category[idx + 1], streak[idx]


def step_log(ds: PreparedDataset, split: str | None, fold: np.ndarray) -> StepLog:
    """Collapse one split's events into steps with folded categories.

    Args:
        ds: The dataset.
        split: ``train``, ``valid``, ``test``, or None for all events.
        fold: (C,) sim category of each dataset category.
    """
    frame = ds.events if split is None else ds.split_events(split)
    steps = collapse_steps(
        frame["session"].to_numpy(np.int64),
        frame["item"].to_numpy(np.int64),
        frame["category"].to_numpy(np.int64),
        frame["event"].to_numpy(np.int8),
    )
    return StepLog(
        offsets=steps["offsets"],
        category=fold[steps["category"]],
        item=steps["item"],
        cart=steps["cart"],
        buy=steps["buy"],
    )


def _binned_rate(
    index: np.ndarray, hit: np.ndarray, n_bins: int, min_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rate of ``hit`` per 1-based ``index`` bin, pooling the tail into the last bin.

    The curve is cut at the first bin with fewer than ``min_count`` observations (or at
    ``n_bins``) and that last bin pools every index at or beyond it.

    Returns:
        ``rate`` (B,) and ``count`` (B,) observations per bin, B <= n_bins.
    """
    counts = np.bincount(np.minimum(index, n_bins), minlength=n_bins + 1)[1:]
    sparse = np.flatnonzero(counts < min_count)
    n_kept = max(1, min(n_bins, int(sparse[0]) + 1 if len(sparse) else n_bins))
    binned = np.minimum(index, n_kept)
    count = np.bincount(binned, minlength=n_kept + 1)[1:].astype(float)
    hits = np.bincount(binned, weights=hit.astype(float), minlength=n_kept + 1)[1:]
    rate = np.divide(hits, count, out=np.zeros(n_kept), where=count > 0)
    # An empty bin (only when there is no data at all) takes its neighbour's value.
    for b in range(1, n_kept):
        if count[b] == 0:
            rate[b] = rate[b - 1]
    return rate, count


def fit_leave_hazard(lengths: np.ndarray, max_steps: int, min_count: int) -> np.ndarray:
    """Discrete hazard of session lengths: P(length == t | length >= t), tail pooled.

    Args:
        lengths: (S,) session lengths in steps (>= 1).
        max_steps: Most bins T.
        min_count: Sessions at risk a bin needs; the tail is pooled from the first that has
            fewer.

    Returns:
        (T',) hazards, T' <= max_steps; the last applies to every t >= T'.
    """
    at_risk = np.cumsum(np.bincount(lengths, minlength=max_steps + 2)[::-1])[::-1][1:]
    sparse = np.flatnonzero(at_risk[:max_steps] < min_count)
    n_bins = max(1, int(sparse[0]) if len(sparse) else max_steps)
    ended = np.bincount(np.minimum(lengths, n_bins + 1), minlength=n_bins + 2)[1 : n_bins + 1]
    hazard = ended[:-1] / np.maximum(at_risk[: n_bins - 1], 1)
    # Last bin: a geometric tail, events over exposure of the sessions that reach it.
    tail = lengths[lengths >= n_bins]
    exposure = float((tail - n_bins + 1).sum())
    last = len(tail) / exposure if exposure > 0 else 1.0
    return np.clip(np.r_[hazard, last], 0.0, 1.0)


def smoothed_switch_matrix(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Switch rows smoothed toward the overall switch-destination distribution.

    ``S[c] = (N[c] + alpha * m_c) / (N_c + alpha)``, where ``m_c`` is the distribution of
    switch destinations over all rows with ``c`` removed. A row without data is ``m_c``.

    Args:
        counts: (K, K) switch counts, zero diagonal.
        alpha: Pseudo-count >= 0.

    Returns:
        (K, K) row-stochastic with a zero diagonal.
    """
    k = len(counts)
    dest = counts.sum(axis=0) + 1e-12  # a floor so that m_c is defined with no switches
    prior = np.broadcast_to(dest, (k, k)).copy()
    np.fill_diagonal(prior, 0.0)
    prior /= prior.sum(axis=1, keepdims=True)  # (K, K) m_c per row
    rows = counts.sum(axis=1, keepdims=True)
    out = counts + alpha * prior
    total = rows + alpha
    out = np.where(total > 0, out / np.where(total > 0, total, 1.0), prior)
    np.fill_diagonal(out, 0.0)
    return out / out.sum(axis=1, keepdims=True)


def switch_counts(current: np.ndarray, following: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts of switches ``current -> following`` with ``current != following``."""
    moved = current != following
    flat = np.bincount(current[moved] * k + following[moved], minlength=k * k)
    return flat.reshape(k, k).astype(float)


def choose_smoothing(
    train_counts: np.ndarray, valid_counts: np.ndarray, candidates: tuple[float, ...]
) -> tuple[float, dict[str, float]]:
    """The pseudo-count with the highest mean log-likelihood of the valid switches.

    Returns:
        The chosen alpha and each candidate's mean valid log-likelihood (``-inf`` when it
        gives a valid switch probability zero). With no valid switches, the median candidate.
    """
    n_valid = valid_counts.sum()
    if n_valid == 0:
        ordered = sorted(candidates)
        return ordered[len(ordered) // 2], {}
    scores: dict[str, float] = {}
    for alpha in candidates:
        probs = smoothed_switch_matrix(train_counts, alpha)
        used = valid_counts > 0
        if np.any(probs[used] <= 0):
            scores[str(alpha)] = -np.inf
            continue
        scores[str(alpha)] = float((valid_counts[used] * np.log(probs[used])).sum() / n_valid)
    best = max(candidates, key=lambda a: scores[str(a)])
    return best, scores


def fold_categories(
    ds: PreparedDataset, train: np.ndarray, top_k: int
) -> tuple[np.ndarray, list[str]]:
    """Map dataset categories to sim categories: top-K by train steps, the rest to other.

    ``__other__`` exists only when some dataset category is beyond the top-K or unseen in
    train.

    Args:
        ds: The dataset.
        train: (n_steps,) dataset category of each train step.
        top_k: Categories kept.

    Returns:
        ``fold`` (C,) sim category of each dataset category, and the sim categories' raw ids.
    """
    n_cat = ds.n_categories
    counts = np.bincount(train, minlength=n_cat)
    order = np.argsort(-counts, kind="stable")
    present = order[counts[order] > 0]
    raw = ds.categories["raw_id"].astype(str).to_numpy()
    if len(present) < 2:
        only = f" ({raw[present[0]]})" if len(present) else ""
        raise UserError(
            f"{ds.path}: the train split has {len(present)} category{only}; the interest-"
            "migration model needs at least 2; for a log without categories prepare it again "
            "with --derive-categories"
        )
    kept = present[:top_k]
    fold = np.full(n_cat, len(kept), dtype=np.int64)
    fold[kept] = np.arange(len(kept))
    ids = [str(raw[c]) for c in kept]
    if len(kept) < n_cat:
        # Beyond the top-K, and categories never seen in train, share one category.
        ids.append(OTHER_CATEGORY)
    return fold, ids


def fit_sim_model(ds: PreparedDataset, config: FitConfig | None = None) -> SimModel:
    """Fit the user model from the train split of ``ds`` (smoothing chosen on valid).

    Args:
        ds: The PreparedDataset.
        config: Fit settings; defaults when None.

    Returns:
        The SimModel, with a :class:`Provenance` for every parameter and fit facts in
        ``info``.

    Raises:
        UserError: If the log has no items or categories, or the train split has fewer than 2
            categories or no consecutive steps.
    """
    require_categories(ds, "fit")
    config = config or FitConfig()
    train_frame = ds.split_events("train")
    if len(train_frame) == 0:
        raise UserError(f"{ds.path}: the train split is empty; prepare the data with a train share")
    identity = np.arange(ds.n_categories, dtype=np.int64)
    raw_train = step_log(ds, "train", identity)
    fold, category_ids = fold_categories(ds, raw_train.category, config.top_k_categories)
    k = len(category_ids)
    train = StepLog(
        raw_train.offsets, fold[raw_train.category], raw_train.item, raw_train.cart, raw_train.buy
    )
    valid = step_log(ds, "valid", fold)
    current, following, streak = train.transitions()
    if len(current) == 0:
        raise UserError(
            f"{ds.path}: no train session has two steps; the migration model needs sessions "
            "of several steps (check the session gap at prepare time)"
        )
    n_train_steps = len(train.category)
    where = f"train split of {ds.path.name}"

    # Stay vs switch: two parameters, as the generator draws them.
    stayed = following == current
    stay, stay_count = _binned_rate(streak, stayed, config.max_streak, config.min_bin_count)
    counts = switch_counts(current, following, k)
    v_cur, v_next, _ = valid.transitions()
    alpha, scores = choose_smoothing(
        counts, switch_counts(v_cur, v_next, k), config.smoothing_candidates
    )
    switch = smoothed_switch_matrix(counts, alpha)

    hazard = fit_leave_hazard(train.lengths, config.max_steps, config.min_bin_count)
    first = train.category[train.offsets[:-1]]
    initial = np.bincount(first, minlength=k).astype(float)
    initial /= initial.sum()

    # Catalog: top-N items by train steps; popularity renormalized within each category.
    item_counts = np.bincount(train.item, minlength=ds.n_items)
    order = np.argsort(-item_counts, kind="stable")
    catalog = order[item_counts[order] > 0][: config.catalog_size]
    item_category = fold[ds.item_category[catalog]]
    weight = item_counts[catalog].astype(float)
    per_cat = np.bincount(item_category, weights=weight, minlength=k)
    popularity = weight / per_cat[item_category]
    covered = float(weight.sum() / max(item_counts.sum(), 1))

    # Funnel per category, shrunk toward the global rates (rare categories borrow strength).
    n_c = np.bincount(train.category, minlength=k).astype(float)
    rates = {}
    for name, flag in (("p_cart", train.cart), ("p_buy", train.buy)):
        hits = np.bincount(train.category, weights=flag.astype(float), minlength=k)
        overall = hits.sum() / n_train_steps
        rates[name] = (hits + config.funnel_prior_steps * overall) / (
            n_c + config.funnel_prior_steps
        )

    base_rate, base_prov = _engage_base_rate(train_frame, config)
    provenance = {
        "switch_matrix": Provenance(
            "fitted",
            f"{int(counts.sum())} switches in the {where}; additive smoothing alpha={alpha:g} "
            "toward the overall switch destinations, chosen by valid log-likelihood",
        ),
        "stay_by_streak": Provenance(
            "fitted",
            f"{len(current)} consecutive step pairs in the {where}; {len(stay)} streak bins, "
            "the last pooling longer streaks",
        ),
        "initial_category": Provenance("fitted", f"first steps of {train.n_sessions} sessions"),
        "leave_hazard": Provenance(
            "fitted",
            f"session lengths in steps of {train.n_sessions} sessions; {len(hazard)} bins, the "
            "last pooling longer sessions",
        ),
        "item_ids": Provenance("fitted", f"top {len(catalog)} items by train steps"),
        "item_category": Provenance("fitted", "the items' categories, folded"),
        "item_popularity": Provenance(
            "fitted",
            f"train step counts within each category; the catalog covers {covered:.1%} of "
            "train steps",
        ),
        "p_cart": Provenance(
            "fitted",
            f"share of steps with a cart or buy per category, {config.funnel_prior_steps:g} "
            "pseudo-steps toward the global rate",
        ),
        "p_buy": Provenance(
            "fitted",
            f"share of steps with a buy per category, {config.funnel_prior_steps:g} "
            "pseudo-steps toward the global rate",
        ),
        "category_of_dataset_category": Provenance(
            "fitted",
            f"top {min(config.top_k_categories, k)} categories by train steps"
            + (
                f", the rest folded into {OTHER_CATEGORY}" if OTHER_CATEGORY in category_ids else ""
            ),
        ),
        "engage_base_rate": base_prov,
        "engage_interest_exponent": Provenance("default", "not identifiable from organic logs"),
        "engage_popularity_exponent": Provenance("default", "not identifiable from organic logs"),
        "leave_engaged_factor": Provenance(
            "default", "needs recommendation outcomes; organic logs cannot separate it"
        ),
        "leave_miss_factor": Provenance(
            "default", "needs recommendation outcomes; organic logs cannot separate it"
        ),
        **{
            name: Provenance(
                "default", "not identifiable from organic logs; an assumption of the simulator"
            )
            for name in ("engage_ceiling", "leave_streak_factor", "leave_streak_start")
        },
    }
    streak_weights = np.bincount(np.minimum(streak, len(stay)), minlength=len(stay) + 1)[1:].astype(
        float
    )
    # How the organic leave rate depends on the step's outcome: a fact for the user (the env's
    # engagement factors concern recommendations, which organic logs do not show).
    last = np.zeros(n_train_steps, dtype=bool)
    last[train.offsets[1:] - 1] = True
    engaged = train.cart
    leave_ratio = (
        float(last[engaged].mean() / last[~engaged].mean())
        if engaged.any() and (~engaged).any() and last[~engaged].any()
        else None
    )
    info = {
        "dataset": str(ds.path),
        "leave_rate_ratio_after_cart": leave_ratio,
        "train_events": len(train_frame),
        "train_steps": n_train_steps,
        "train_sessions": train.n_sessions,
        "switch_smoothing": alpha,
        # -inf (a valid switch the candidate gives probability 0) is saved as null.
        "switch_smoothing_valid_loglik": {
            a: (v if np.isfinite(v) else None) for a, v in scores.items()
        },
        "stay_bin_counts": stay_count.astype(int).tolist(),
        "streak_weights": streak_weights.tolist(),
        "catalog_coverage": covered,
        "folded_categories": int(np.sum(fold == k - 1))
        if category_ids[-1] == OTHER_CATEGORY
        else 0,
        "config": {
            "top_k_categories": config.top_k_categories,
            "catalog_size": config.catalog_size,
            "max_streak": config.max_streak,
            "max_steps": config.max_steps,
            "min_bin_count": config.min_bin_count,
            "funnel_prior_steps": config.funnel_prior_steps,
        },
    }
    if config.returns:
        info.update(_fit_returns(train_frame, fold, initial))
    model = SimModel(
        category_ids=tuple(category_ids),
        switch_matrix=switch,
        stay_by_streak=stay,
        initial_category=initial,
        leave_hazard=hazard,
        item_ids=catalog.astype(np.int64),
        item_category=item_category.astype(np.int64),
        item_popularity=popularity,
        p_cart=rates["p_cart"],
        p_buy=rates["p_buy"],
        category_of_dataset_category=fold,
        engage_base_rate=base_rate,
        provenance=provenance,
        info=info,
    )
    if config.response:
        from rlrec.models.prior import with_response

        # with_response validates through the SimModel: an out-of-domain value is one line.
        model = with_response(model, config.response, "user", "set in the fit settings")
    return model


def _engage_base_rate(frame: pd.DataFrame, config: FitConfig) -> tuple[float, Provenance]:
    """The engagement base rate: a CTR where the log has non-clicks, else the configured one."""
    if "reward" in frame.columns:
        reward = frame["reward"].to_numpy(float)
        reward = reward[np.isfinite(reward)]
        if len(reward) and np.any(reward <= 0):
            ctr = float(np.mean(reward > 0))
            ctr = min(max(ctr, 1e-6), 1 - 1e-6)
            return ctr, Provenance(
                "fitted", f"click-through rate of {len(reward)} logged impressions"
            )
    if config.engage_base_rate is not None:
        return config.engage_base_rate, Provenance(
            "user", "set by the user; the log has only positive events"
        )
    return DEFAULT_ENGAGE_BASE_RATE, Provenance(
        "default",
        f"the log has only positive events (no impressions without a click), so the base rate "
        f"is the configured default {DEFAULT_ENGAGE_BASE_RATE}",
    )


@dataclass(frozen=True)
class OrganicSessions(Ragged):
    """Sessions simulated under the organic policy (no recommender), one row per step.

    Attributes:
        offsets: (S + 1,) CSR offsets of each session's steps.
        category: (n_steps,) sim category of each step.
        item: (n_steps,) catalog index of each step's item (-1 if the category has no
            catalog item).
        cart: (n_steps,) bool, the step reached the cart.
        buy: (n_steps,) bool, the step ended in a buy.
    """

    category: np.ndarray
    item: np.ndarray
    cart: np.ndarray
    buy: np.ndarray


def simulate_organic(model: SimModel, n_sessions: int, seed: int = 0) -> OrganicSessions:
    """Simulate sessions of the user model with no recommender (vectorized over sessions).

    Args:
        model: The SimModel.
        n_sessions: Number of sessions.
        seed: Seed of every draw; the same seed gives the same sessions.
    """
    if n_sessions < 1:
        raise ValueError("n_sessions must be >= 1")
    rng = np.random.default_rng(seed)
    lengths, category = simulate_organic_categories(model, n_sessions, rng)
    n = len(category)
    k = model.n_categories
    # Items: within-category popularity over the catalog.
    item_cat = np.asarray(model.item_category)
    order = np.argsort(item_cat, kind="stable")
    sizes = np.bincount(item_cat, minlength=k)
    start = np.r_[0, np.cumsum(sizes)]
    csum = np.cumsum(model.item_popularity[order])
    before = np.r_[0.0, csum][start[:-1]]
    cum = item_cat[order] + csum - np.repeat(before, sizes)
    u = rng.random(n)
    pos = np.clip(
        np.searchsorted(cum, category + u, side="right"), start[category], start[category + 1] - 1
    )
    item = np.where(sizes[category] > 0, order[np.minimum(pos, len(order) - 1)], -1)
    cart = rng.random(n) < model.p_cart[category]
    buy = cart & (rng.random(n) * model.p_cart[category] < model.p_buy[category])
    return OrganicSessions(
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        category=category,
        item=item,
        cart=cart,
        buy=buy,
    )


# The covariates a simulator produces per session (rlrec.envs.lifecycle.SESSION_COVARIATES):
# the return process for lifecycle episodes is fitted on these only, so nothing is held fixed.
_SIMULATED_FEATURES = ("log_events", "carted", "bought", "satisfaction")
_MIN_RETURNS = 20  # returns (observed gaps) below which the return model is not fitted


def _fit_returns(train: pd.DataFrame, fold: np.ndarray, initial: np.ndarray) -> dict[str, object]:
    """The return model and the category carry-over between sessions, as ``info`` entries.

    Args:
        train: Train-split events (``user``, ``session``, ``timestamp`` ms, ``event``,
            ``item``, ``category``), sorted by (session, step).
        fold: (C,) sim category of each dataset category.
        initial: (K,) fitted first-category distribution of a session.
    """
    from rlrec.models.lifecycle import (
        ReturnModelConfig,
        fit_return_model,
        session_table,
        timelines_from_sessions,
    )

    if train.empty:
        return {"return_model_error": "the train split is empty"}
    end_ms = int(train["timestamp"].max()) + 1
    timelines = timelines_from_sessions(session_table(train), end_ms)
    # Keep the covariates a simulator produces, among those the log supports.
    keep = [j for j, n in enumerate(timelines.feature_names) if n in _SIMULATED_FEATURES]
    timelines = dataclasses.replace(
        timelines,
        features=timelines.features[:, keep],
        feature_names=tuple(timelines.feature_names[j] for j in keep),
    )
    if int(timelines.observed.sum()) < _MIN_RETURNS:
        return {
            "return_model_error": f"{int(timelines.observed.sum())} returns in the train split "
            f"(need {_MIN_RETURNS}): users rarely come back in this log"
        }
    # Homogeneous dropout: the simulator's ReturnProcess (rlrec.envs.lifecycle) has no
    # per-user dropout effect, so a fitted one would be silently dropped there.
    model = fit_return_model(timelines, ReturnModelConfig(dropout_heterogeneity=False))
    # Carry-over: P(a session starts in the previous one's category) beyond chance, where
    # chance is the fitted first-category distribution at the previous session's category.
    firsts = train.groupby("session", sort=False).agg(
        user=("user", "first"),
        start=("timestamp", "first"),
        first=("category", "first"),
        last=("category", "last"),
    )
    firsts = firsts.sort_values(["user", "start"], kind="stable")
    same_user = firsts["user"].to_numpy()[1:] == firsts["user"].to_numpy()[:-1]
    prev_last = fold[firsts["last"].to_numpy(np.int64)[:-1][same_user]]
    next_first = fold[firsts["first"].to_numpy(np.int64)[1:][same_user]]
    carryover = 0.0
    if len(prev_last):
        observed = float(np.mean(prev_last == next_first))
        chance = float(np.mean(initial[prev_last]))
        carryover = float(np.clip((observed - chance) / max(1.0 - chance, 1e-9), 0.0, 1.0))
    return {"return_model": model.to_json(), "session_carryover": carryover}
