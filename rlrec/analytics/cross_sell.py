"""Cross-sell: which category users move into next, as pairs and as per-user predictions.

**Pairs.** For categories X and Y, ``support`` counts users whose first X came before their
first Y (basis ``engaged``: any event; ``bought``: first buy of X before first buy of Y);
``confidence = support / users with X``; ``lift = confidence / P(user has Y)``.

**Next new category.** Predict, for each user, the categories they enter for the first time
after a cut (the *new* categories: not in their history, ``__other__`` excluded as a fold of
many), and score the ranking with recall@k and NDCG@k (binary relevance, every new category
relevant). Methods, each fitted on the history before the cut only:

* ``association_rules`` (baseline): the classic rule recommender: a candidate's score is the
  highest confidence of a rule ``X -> Y`` with X in the user's history;
* ``markov`` (baseline): the switch matrix's row of the user's last category;
* ``popular`` (baseline): the share of users who engaged each category;
* ``migration`` (the model): a logistic ranker over features of the interest-migration model
  of :mod:`rlrec.models.transition`, fitted on an earlier cut. The features of a (user,
  candidate) pair are the expected visits of a switch walk from the user's interest state
  ``u`` (their category shares), ``u (I - beta S)^-1`` for a short (``beta = 0.5``) and a long
  (``beta = 0.9``) horizon with ``S`` the smoothed switch matrix; the candidate's share of
  session starts and of users; the switch probability from the user's last category; and the
  best rule confidence (the baseline's score, so the ranker learns how much to trust it). The
  coefficients are a statsmodels ``Logit`` of "entered the candidate" on the tuning cut
  (history before the valid split, targets inside it); the smoothing of ``S`` is chosen by the
  tuning window's switch likelihood (:func:`rlrec.models.transition.choose_smoothing`). Then
  every method is refitted on the history before the test split and evaluated after it.

**Hook for more models.** :func:`evaluate_next_category` takes ``extra_scorers``: name -> a
:class:`CrossSellScorer`, called with the :class:`CrossSellTask` (the users, the cut, their
history counts) and returning a (U, K) score matrix; each is evaluated on the same users and
reported beside the baselines. The encoder's ``next_new_category`` head plugs in here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from rlrec.analytics.periods import PeriodLog
from rlrec.models.transition import (
    FitConfig,
    choose_smoothing,
    smoothed_switch_matrix,
    switch_counts,
)

__all__ = [
    "BASELINES",
    "MODEL",
    "CrossSellResult",
    "CrossSellScorer",
    "CrossSellTask",
    "category_pairs",
    "evaluate_next_category",
    "first_times",
    "ranking_metrics",
]

MODEL = "migration"
BASELINES = ("association_rules", "markov", "popular")
_NEVER = np.iinfo(np.int64).max
FEATURES = (
    "log next-step probability (migration model)",
    "log walk visits from the user's interest",
    "log user share",
    "log best rule confidence",
)
"""Features of the model's logistic ranker, per (user, candidate category)."""


def first_times(
    user: np.ndarray, category: np.ndarray, time: np.ndarray, n_users: int, k: int
) -> np.ndarray:
    """(U, K) int64 first time each user met each category (``_NEVER`` if not).

    Args:
        user: (E,) user index of each event.
        category: (E,) category of each event.
        time: (E,) timestamps in ms.
        n_users: U.
        k: K.
    """
    out = np.full(n_users * k, _NEVER, dtype=np.int64)
    key = user * k + category
    order = np.lexsort((time, key))
    key, time = key[order], time[order]
    first = np.r_[True, key[1:] != key[:-1]]
    out[key[first]] = time[first]
    return out.reshape(n_users, k)


def _ordered_pair_counts(first: np.ndarray, skip: int | None) -> np.ndarray:
    """(K, K) users whose first X came strictly before their first Y."""
    k = first.shape[1]
    seen = first < _NEVER
    out = np.zeros((k, k), dtype=np.int64)
    for x in range(k):
        has = seen[:, x]
        if not has.any():
            continue
        sub = first[has]
        out[x] = ((sub[:, x, None] < sub) & seen[has]).sum(axis=0)
    if skip is not None:
        out[skip, :] = 0
        out[:, skip] = 0
    np.fill_diagonal(out, 0)
    return out


def category_pairs(log: PeriodLog, min_support: int = 5, basis: str = "engaged") -> pd.DataFrame:
    """Cross-sell pairs X -> Y with support, confidence and lift, highest lift first.

    Args:
        log: The period log.
        min_support: Pairs with fewer users are left out (their lift is noise).
        basis: ``engaged`` (any event) or ``bought`` (buy events only).
    """
    from rlrec.data.schema import EVENT_CODE

    mask = slice(None) if basis == "engaged" else log.event == EVENT_CODE["buy"]
    n_users = int(log.user.max()) + 1
    k = log.n_categories
    first = first_times(log.user[mask], log.category[mask], log.timestamp[mask], n_users, k)
    pairs = _ordered_pair_counts(first, log.other)
    with_x = (first < _NEVER).sum(axis=0)
    users = max(int((first < _NEVER).any(axis=1).sum()), 1)
    src, dst = np.nonzero(pairs >= max(min_support, 1))
    support = pairs[src, dst]
    confidence = support / with_x[src]
    lift = confidence / (with_x[dst] / users)
    ids = np.asarray(log.category_ids)
    table = pd.DataFrame(
        {
            "basis": basis,
            "antecedent": ids[src],
            "consequent": ids[dst],
            "support": support,
            "confidence": confidence,
            "lift": lift,
        }
    )
    return table.sort_values(["lift", "support"], ascending=False, ignore_index=True)


def ranking_metrics(scores: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """Mean recall@k and NDCG@k of score rows against sets of relevant columns.

    Args:
        scores: (U, K) scores; ``-inf`` for columns that may not be recommended.
        targets: (U, K) bool, the relevant columns (each row has at least one).
        k: Cut-off.

    Returns:
        ``recall@k`` (hits over relevant, averaged over rows) and ``ndcg@k`` (binary gains,
        ideal DCG over ``min(|relevant|, k)``).
    """
    n, width = scores.shape
    k_eff = min(k, width)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k_eff]  # (U, k)
    hit = np.take_along_axis(targets, top, axis=1) & np.isfinite(
        np.take_along_axis(scores, top, axis=1)
    )
    n_rel = targets.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(k_eff) + 2.0)
    dcg = (hit * discount).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(n_rel, k_eff) - 1]
    return {
        f"recall@{k}": float((hit.sum(axis=1) / n_rel).mean()) if n else float("nan"),
        f"ndcg@{k}": float((dcg / ideal).mean()) if n else float("nan"),
    }


@dataclass(frozen=True)
class CrossSellTask:
    """Next-new-category targets: each step where a user enters a category for the first time.

    Rows are targets: the first step of a user in a category, inside the target window, of a
    user with history before the cut.

    Attributes:
        user: (N,) dataset user index of each target.
        event_index: (N,) index (into the PeriodLog's events) of the target step's first event;
            everything before it is the context a model may read.
        previous: (N,) category of the user's step before the target.
        session_start: (N,) bool, the target is the first step of a session.
        interest: (N, K) the user's share of steps per category before the cut.
        seen: (N, K) bool, categories the user met before the target step.
        allowed: (N, K) bool, categories that may be recommended (unseen, not ``__other__``).
        targets: (N, K) bool, the category entered (one per row).
    """

    user: np.ndarray
    event_index: np.ndarray
    previous: np.ndarray
    session_start: np.ndarray
    interest: np.ndarray
    seen: np.ndarray
    allowed: np.ndarray
    targets: np.ndarray

    @property
    def n_users(self) -> int:
        """Distinct users among the targets."""
        return len(np.unique(self.user))


class CrossSellScorer(Protocol):
    """A next-new-category model: (N, K) scores for a task's targets (higher is likelier)."""

    def __call__(self, task: CrossSellTask) -> np.ndarray:
        """Scores of every category for every target of ``task``."""
        ...


@dataclass(frozen=True)
class _Steps:
    """The log's steps in user order, with each (user, category) pair's first step."""

    event: np.ndarray  # (S,) first event of each step
    user: np.ndarray  # (S,)
    category: np.ndarray  # (S,)
    time: np.ndarray  # (S,)
    session_start: np.ndarray  # (S,) bool
    first_step: np.ndarray  # (U, K) index of the user's first step in the category, or S


def _steps(log: PeriodLog) -> _Steps:
    start = log.step_start
    user = log.user[start]
    category = log.category[start]
    n_users, k, n = int(log.user.max()) + 1, log.n_categories, len(start)
    # Sessions are numbered in (user, session start) order, so steps are each user's history
    # in time order and the first index of a (user, category) key is the first entry.
    key = user * k + category
    keys, first_index = np.unique(key, return_index=True)
    first_step = np.full(n_users * k, n, dtype=np.int64)
    first_step[keys] = first_index
    session = log.session[start]
    return _Steps(
        event=start,
        user=user,
        category=category,
        time=log.timestamp[start],
        session_start=np.r_[True, session[1:] != session[:-1]],
        first_step=first_step.reshape(n_users, k),
    )


def _task(log: PeriodLog, steps: _Steps, cut: int, end: int) -> CrossSellTask:
    """The targets in ``[cut, end)``, with their context."""
    k = log.n_categories
    before = steps.time < cut
    n_users = steps.first_step.shape[0]
    history = np.bincount(
        steps.user[before] * k + steps.category[before], minlength=n_users * k
    ).reshape(n_users, k)
    idx = np.arange(len(steps.user))
    entry = steps.first_step[steps.user, steps.category] == idx
    window = (steps.time >= cut) & (steps.time < end)
    has_history = history.sum(axis=1)[steps.user] > 0
    same_user = np.r_[False, steps.user[1:] == steps.user[:-1]]
    rows = np.flatnonzero(entry & window & has_history & same_user)
    if log.other is not None:
        rows = rows[steps.category[rows] != log.other]
    user = steps.user[rows]
    seen = steps.first_step[user] < rows[:, None]
    allowed = ~seen
    if log.other is not None:
        allowed[:, log.other] = False
    targets = np.zeros((len(rows), k), dtype=bool)
    targets[np.arange(len(rows)), steps.category[rows]] = True
    interest = history[user] / np.maximum(history[user].sum(axis=1, keepdims=True), 1)
    return CrossSellTask(
        user=user,
        event_index=steps.event[rows],
        previous=steps.category[rows - 1],
        session_start=steps.session_start[rows],
        interest=interest,
        seen=seen,
        allowed=allowed,
        targets=targets,
    )


def _task_after(log: PeriodLog, steps: _Steps) -> CrossSellTask:
    """Every user's context after their last step (for predictions; no targets)."""
    k = log.n_categories
    n_users = steps.first_step.shape[0]
    last = np.flatnonzero(np.r_[steps.user[1:] != steps.user[:-1], True])
    user = steps.user[last]
    history = np.bincount(steps.user * k + steps.category, minlength=n_users * k).reshape(-1, k)
    seen = steps.first_step[user] < len(steps.user)
    allowed = ~seen
    if log.other is not None:
        allowed[:, log.other] = False
    return CrossSellTask(
        user=user,
        event_index=steps.event[last],
        previous=steps.category[last],
        session_start=np.zeros(len(last), dtype=bool),
        interest=history[user] / np.maximum(history[user].sum(axis=1, keepdims=True), 1),
        seen=seen,
        allowed=allowed,
        targets=np.zeros_like(allowed),
    )


@dataclass(frozen=True)
class _Fitted:
    """What the methods learn from the history before a cut."""

    switch_counts: np.ndarray  # (K, K)
    initial: np.ndarray  # (K,) first-step category of sessions
    confidence: np.ndarray  # (K, K) association-rule confidence X -> Y
    popularity: np.ndarray  # (K,) share of users with the category


def _fit(log: PeriodLog, steps: _Steps, cut: int) -> _Fitted:
    k = log.n_categories
    index, cur, nxt = log.switches()
    before = log.timestamp[index] < cut
    counts = switch_counts(cur[before], nxt[before], k)
    starts = steps.session_start & (steps.time < cut)
    initial = np.bincount(steps.category[starts], minlength=k).astype(float) + 1e-9
    if log.other is not None:
        initial[log.other] = 0.0
    n_users = steps.first_step.shape[0]
    first = first_times(
        steps.user[steps.time < cut],
        steps.category[steps.time < cut],
        steps.time[steps.time < cut],
        n_users,
        k,
    )
    pairs = _ordered_pair_counts(first, log.other).astype(float)
    with_x = (first < _NEVER).sum(axis=0).astype(float)
    confidence = pairs / np.maximum(with_x, 1.0)[:, None]
    popularity = with_x / max(float((first < _NEVER).any(axis=1).sum()), 1.0)
    return _Fitted(counts, initial / initial.sum(), confidence, popularity)


def _next_step(task: CrossSellTask, fitted: _Fitted, switch: np.ndarray) -> np.ndarray:
    """(N, K) the migration model's next category given a switch.

    The switch row of the previous category inside a session; the session-start distribution
    at a session's start.
    """
    return np.where(task.session_start[:, None], fitted.initial[None, :], switch[task.previous])


def _walk(task: CrossSellTask, switch: np.ndarray, beta: float) -> np.ndarray:
    """(N, K) expected visits of a switch walk from the user's interest: ``u (I - beta S)^-1``."""
    return task.interest @ np.linalg.inv(np.eye(len(switch)) - beta * switch)


def _features(
    task: CrossSellTask, fitted: _Fitted, switch: np.ndarray, rules: np.ndarray | None = None
) -> np.ndarray:
    """(N, K, F) features of every (target, candidate) pair, in the order of FEATURES."""
    n, k = task.allowed.shape
    eps = 1e-6
    cols = [
        np.log(_next_step(task, fitted, switch) + eps),
        np.log(_walk(task, switch, 0.9) + eps),
        np.broadcast_to(np.log(fitted.popularity + eps), (n, k)),
        np.log((_rule_scores(task.seen, fitted.confidence) if rules is None else rules) + eps),
    ]
    return np.stack(cols, axis=2)


def _fit_ranker(
    task: CrossSellTask, fitted: _Fitted, switch: np.ndarray, seed: int, max_rows: int = 200_000
) -> np.ndarray | None:
    """Logistic-regression coefficients of "enters the candidate" on the features.

    Fitted (statsmodels ``Logit``) on the recommendable (target, candidate) pairs of the
    tuning cut, at most ``max_rows`` of them (a seeded subsample). None when the cut has no
    targets or the fit fails; the scores then fall back to the next-step model alone.
    """
    import warnings

    import statsmodels.api as sm

    if not task.targets.any():
        return None
    x = _features(task, fitted, switch)[task.allowed]  # (n, F)
    y = task.targets[task.allowed].astype(float)
    if len(y) > max_rows:
        pick = np.random.default_rng(seed).choice(len(y), max_rows, replace=False)
        x, y = x[pick], y[pick]
    if y.min() == y.max():
        return None
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
    design = np.column_stack([np.ones(len(y)), (x - mean) / scale])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and separation warnings: checked below
        try:
            coef = sm.Logit(y, design).fit(disp=0, method="newton", maxiter=100).params
        except (np.linalg.LinAlgError, ValueError):
            return None
    if not np.all(np.isfinite(coef)):
        return None
    # Fold the standardisation into the coefficients: score = x @ w (+ a constant).
    return np.asarray(coef[1:] / scale)


def _ranker_scores(
    ranker: np.ndarray | None,
    task: CrossSellTask,
    fitted: _Fitted,
    switch: np.ndarray,
    rules: np.ndarray | None = None,
) -> np.ndarray:
    """(N, K) ranker scores (a monotone map of the fitted probabilities)."""
    if ranker is None:
        return _next_step(task, fitted, switch)
    return _features(task, fitted, switch, rules) @ ranker


def _rule_scores(had: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(N, K) best confidence of a rule X -> Y over the X each row had.

    One pass per antecedent X over (N, K) rows (no (N, K, K) intermediate), in float32.

    Args:
        had: (N, K) bool, the categories met before.
        confidence: (K, K) rule confidences.
    """
    out = np.zeros(had.shape, dtype=np.float32)
    conf = confidence.astype(np.float32)
    for x in np.flatnonzero(had.any(axis=0)):
        np.maximum(out, np.where(had[:, x, None], conf[x][None, :], np.float32(0.0)), out=out)
    return out.astype(float)


def _masked(scores: np.ndarray, task: CrossSellTask, popularity: np.ndarray) -> np.ndarray:
    """Scores with popularity as a tie-break and the non-recommendable columns at -inf."""
    # The tie-break is far below any real score difference (scores are probabilities or
    # log-odds, popularity is in [0, 1]).
    out = scores + 1e-9 * popularity[None, :]
    return np.where(task.allowed, out, -np.inf)


@dataclass(frozen=True)
class CrossSellResult:
    """The next-new-category evaluation.

    Attributes:
        metrics: Method -> ``recall@k``, ``ndcg@k``, ``targets`` and ``users`` on the test
            cut.
        params: The ranker's ``features`` and ``coefficients`` (per unit of each feature;
            None when the tuning cut had no targets and the next-step model alone scores),
            the switch ``smoothing``, the cuts and the tuning targets.
        predictions: One row per (user, rank): ``user`` (dataset index), ``rank``,
            ``category``, ``score``: the model's next new categories after the whole log.
    """

    metrics: dict[str, dict[str, float]]
    params: dict[str, Any]
    predictions: pd.DataFrame


def _cuts(log: PeriodLog, cutoffs: tuple[int, int] | None) -> tuple[int, int, int]:
    """(tune cut, test cut, end) in ms.

    The dataset's valid and test cut-offs when usable, else the 80% and 90% time quantiles
    (so that both folds have targets).
    """
    end = int(log.timestamp.max()) + 1
    if cutoffs is not None:
        valid, test = cutoffs
        if log.timestamp.min() < valid < test < end:
            return int(valid), int(test), end
    q80, q90 = np.quantile(log.timestamp, [0.8, 0.9])
    return int(q80), int(q90), end


def evaluate_next_category(
    log: PeriodLog,
    k: int = 10,
    cutoffs: tuple[int, int] | None = None,
    extra_scorers: Mapping[str, CrossSellScorer] | None = None,
    top_n: int = 10,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> CrossSellResult:
    """Evaluate the model and the baselines on the users' next new categories.

    Args:
        log: The period log.
        k: Cut-off of recall@k and NDCG@k.
        cutoffs: ``(valid_start, test_start)`` in ms (the dataset's split); None or unusable
            cut-offs fall back to the 80% and 90% time quantiles.
        extra_scorers: More models to evaluate beside the baselines (see the module doc).
        top_n: Predictions kept per user in ``predictions``.
        progress: Called with a label after each stage.
        seed: Seed of the subsample of candidate rows the ranker is fitted on.
    """
    kk = log.n_categories
    steps = _steps(log)
    tune_cut, test_cut, end = _cuts(log, cutoffs)
    candidates = FitConfig().smoothing_candidates

    # Tuning cut: history before the valid split, targets inside it. The switch smoothing is
    # chosen by the likelihood of the tuning window's switches, as the transition fit does.
    tune = _task(log, steps, tune_cut, test_cut)
    fit_tune = _fit(log, steps, tune_cut)
    index, cur, nxt = log.switches()
    t = log.timestamp[index]
    window = (t >= tune_cut) & (t < test_cut)
    alpha, _ = choose_smoothing(
        fit_tune.switch_counts, switch_counts(cur[window], nxt[window], kk), candidates
    )
    switch_tune = smoothed_switch_matrix(fit_tune.switch_counts, alpha)
    ranker = _fit_ranker(tune, fit_tune, switch_tune, seed)
    if progress:
        progress("cross-sell: tuned")

    # Test cut: everything before the test split is history; every method refits on it.
    task = _task(log, steps, test_cut, end)
    fitted = _fit(log, steps, test_cut)
    switch = smoothed_switch_matrix(fitted.switch_counts, alpha)
    rules = _rule_scores(task.seen, fitted.confidence)  # a baseline and a model feature
    methods: dict[str, np.ndarray] = {
        MODEL: _ranker_scores(ranker, task, fitted, switch, rules),
        "association_rules": rules,
        "markov": switch[task.previous],
        "popular": np.broadcast_to(fitted.popularity, task.allowed.shape).copy(),
    }
    for name, scorer in (extra_scorers or {}).items():
        methods[name] = np.asarray(scorer(task), dtype=float)
    metrics: dict[str, dict[str, float]] = {}
    n_targets = len(task.user)
    for name, raw in methods.items():
        tie = fitted.popularity if name != "popular" else np.zeros(kk)
        result = (
            ranking_metrics(_masked(raw, task, tie), task.targets, k)
            if n_targets
            else {f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan")}
        )
        metrics[name] = {**result, "targets": n_targets, "users": task.n_users}
    if progress:
        progress("cross-sell: evaluated")

    # Predictions after the whole log: each user's next new category from their last step.
    fitted_all = _fit(log, steps, end)
    switch_all = smoothed_switch_matrix(fitted_all.switch_counts, alpha)
    whole = _task_after(log, steps)
    scores = _masked(
        _ranker_scores(ranker, whole, fitted_all, switch_all), whole, fitted_all.popularity
    )
    n_top = min(top_n, kk)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n_top]
    top_scores = np.take_along_axis(scores, top, axis=1)
    rows, ranks = np.nonzero(np.isfinite(top_scores))
    predictions = pd.DataFrame(
        {
            "user": whole.user[rows],
            "rank": ranks + 1,
            "category": np.asarray(log.category_ids)[top[rows, ranks]],
            "score": top_scores[rows, ranks],
        }
    )
    params: dict[str, Any] = {
        "features": list(FEATURES),
        "coefficients": None if ranker is None else [float(c) for c in ranker],
        "smoothing": float(alpha),
        "tune_cut_ms": tune_cut,
        "test_cut_ms": test_cut,
        "tuning_targets": len(tune.user),
    }
    return CrossSellResult(metrics=metrics, params=params, predictions=predictions)
