"""Simulator fidelity: how closely a fitted SimModel reproduces held-out sessions.

:func:`validate_fidelity` simulates sessions under the organic policy (no recommender) and
compares them with the test split, step by step (a step is a maximal run of same-item events):

* ``js_category_transition``: Jensen-Shannon divergence (base 2, so in [0, 1]) between the
  joint distributions of consecutive step pairs ``(category_t, category_{t+1})``, with
  ``js_category_transition_floor``, what a perfect model would score against a test split of
  that size (small test splits over many category pairs are far from 0 by sampling alone);
* ``ks_session_length`` and ``ks_streak_length``: Kolmogorov-Smirnov distances (the largest
  gap between the two empirical CDFs) of session lengths and category-streak lengths in steps;
* ``event_mix``: the share of steps ending in a view, a cart and a buy, and the differences.

When the dataset came from the synthetic generator, a ``ground_truth`` block compares every
fitted parameter with the true one (see :func:`ground_truth_errors`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from rlrec.data.content import require_items
from rlrec.data.dataset import PreparedDataset
from rlrec.errors import UserError
from rlrec.models.calibration import streak_lengths
from rlrec.models.ground_truth import GroundTruth, load_ground_truth
from rlrec.models.sim_model import SimModel
from rlrec.models.transition import simulate_organic, step_log

__all__ = [
    "TOP_CATEGORIES",
    "fidelity_distributions",
    "format_fidelity",
    "ground_truth_errors",
    "js_divergence",
    "ks_distance",
    "migration_matrix",
    "streak_occupancy",
    "validate_fidelity",
]

TOP_CATEGORIES = 12
"""Categories shown in the report's transition and migration matrices (the most frequent)."""


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two (unnormalized) distributions of one shape.

    Returns:
        A value in [0, 1]; 0 iff the normalized distributions are equal.
    """
    # SciPy returns the Jensen-Shannon *distance*, the square root of the divergence.
    distance = jensenshannon(np.ravel(p).astype(float), np.ravel(q).astype(float), base=2.0)
    # Rounding can leave the divergence of (nearly) equal distributions a hair below 0,
    # whose square root is NaN; that is a divergence of 0.
    return float(distance**2) if np.isfinite(distance) else 0.0


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max |F_a(x) - F_b(x)| over all x."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(ks_2samp(np.asarray(a), np.asarray(b)).statistic)


def _pair_counts(offsets: np.ndarray, category: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts of consecutive step pairs inside sessions."""
    n = len(category)
    first = np.zeros(n, dtype=bool)
    first[offsets[:-1][offsets[:-1] < n]] = True
    has_next = np.flatnonzero(np.r_[~first[1:], False])
    flat = np.bincount(category[has_next] * k + category[has_next + 1], minlength=k * k)
    return flat.reshape(k, k).astype(float)


def _event_mix(cart: np.ndarray, buy: np.ndarray) -> dict[str, float]:
    n = max(len(cart), 1)
    return {
        "view": float(np.sum(~cart) / n),
        "cart": float(np.sum(cart & ~buy) / n),
        "buy": float(np.sum(buy) / n),
    }


def validate_fidelity(
    model: SimModel, ds: PreparedDataset, n_sessions: int = 20_000, seed: int = 0
) -> dict[str, Any]:
    """Compare organic sessions simulated from ``model`` with the test split of ``ds``.

    Args:
        model: A SimModel fitted on ``ds`` (its ``category_of_dataset_category`` must cover
            the dataset's categories).
        ds: The PreparedDataset.
        n_sessions: Sessions to simulate.
        seed: Seed of the simulation.

    Returns:
        A JSON-ready dict: ``js_category_transition``, ``js_category_transition_floor``,
        ``ks_session_length``,
        ``ks_streak_length``, ``event_mix`` (``simulated``, ``test``, ``difference``),
        ``event_mix_max_abs_diff``, ``test_sessions``, ``simulated_sessions``, and
        ``ground_truth`` when the dataset has one.

    Raises:
        UserError: If the model does not match the dataset or the test split is empty.
    """
    require_items(ds, "fidelity validation")
    fold = np.asarray(model.category_of_dataset_category)
    if len(fold) != ds.n_categories:
        raise UserError(
            f"{ds.path}: the model was fitted on a dataset with {len(fold)} categories, this one "
            f"has {ds.n_categories}; validate against the dataset the model was fitted on"
        )
    if len(model.item_ids) and int(np.max(model.item_ids)) >= ds.n_items:
        raise UserError(
            f"{ds.path}: the model's catalog refers to item {int(np.max(model.item_ids))}, this "
            f"dataset has {ds.n_items} items; validate against the dataset the model was fitted on"
        )
    test = step_log(ds, "test", fold)
    if test.n_sessions == 0:
        raise UserError(f"{ds.path}: the test split is empty; prepare the data with a test share")
    sim = simulate_organic(model, n_sessions, seed)
    k = model.n_categories
    test_pairs = _pair_counts(test.offsets, test.category, k)
    sim_pairs = _pair_counts(sim.offsets, sim.category, k)
    js = js_divergence(sim_pairs, test_pairs) if test_pairs.sum() > 0 else float("nan")
    # What a perfect model would score with this few test pairs: the JS divergence between the
    # simulated distribution and a sample of the test's size drawn from it.
    rng = np.random.default_rng([seed, 1])
    n_pairs = int(test_pairs.sum())
    floor = (
        js_divergence(sim_pairs, rng.multinomial(n_pairs, (sim_pairs / sim_pairs.sum()).ravel()))
        if n_pairs > 0 and sim_pairs.sum() > 0
        else float("nan")
    )
    mix_sim, mix_test = _event_mix(sim.cart, sim.buy), _event_mix(test.cart, test.buy)
    diff = {name: mix_sim[name] - mix_test[name] for name in mix_sim}
    result: dict[str, Any] = {
        "js_category_transition": js,
        "js_category_transition_floor": floor,
        "ks_session_length": ks_distance(sim.lengths, test.lengths),
        "ks_streak_length": ks_distance(
            streak_lengths(sim.offsets, sim.category), streak_lengths(test.offsets, test.category)
        ),
        "event_mix": {"simulated": mix_sim, "test": mix_test, "difference": diff},
        "event_mix_max_abs_diff": float(max(abs(v) for v in diff.values())),
        "mean_session_length": {
            "simulated": float(sim.lengths.mean()),
            "test": float(test.lengths.mean()),
        },
        "test_sessions": test.n_sessions,
        "simulated_sessions": sim.n_sessions,
        "seed": seed,
    }
    truth = load_ground_truth(ds.path)
    if truth is not None:
        result["ground_truth"] = ground_truth_errors(model, ds, truth)
    return result


def streak_occupancy(model: SimModel, n_streak: int = 256, tol: float = 1e-12) -> np.ndarray:
    """How often a stay-or-switch decision is taken at each streak length, under ``model``.

    Exact dynamic programming over (step, streak): a session reaches step ``t`` with streak
    ``s``; with probability ``1 - hazard(t)`` a decision follows, counted at ``s``; then the
    streak grows with ``stay(s)`` or restarts at 1.

    Args:
        model: The model whose hazard and stay curves drive the dynamics.
        n_streak: Streak lengths tracked; longer ones are pooled in the last.
        tol: Stop once the mass still alive is below this.

    Returns:
        (n_streak,) expected decisions per session at streak s = 1..n_streak.
    """
    stay = model.stay_probability(np.arange(1, n_streak + 1))
    alive = np.zeros(n_streak)
    alive[0] = 1.0
    weights = np.zeros(n_streak)
    t = 1
    while alive.sum() > tol and t < 100_000:
        going_on = alive * (1.0 - float(model.hazard(np.array([t]))[0]))
        weights += going_on
        alive = np.zeros(n_streak)
        alive[1:] = going_on[:-1] * stay[:-1]
        alive[-1] += going_on[-1] * stay[-1]
        alive[0] = float(np.sum(going_on * (1.0 - stay)))
        t += 1
    return weights


def ground_truth_errors(model: SimModel, ds: PreparedDataset, truth: GroundTruth) -> dict[str, Any]:
    """Errors of every fitted parameter against the generator's true ones.

    The true model lives in the generator's raw ids; it is mapped into the fitted model's
    categories through the dataset's vocabulary (true categories folded into ``__other__``
    are merged, weighted by their frequency in the dataset). Weights: ``pi[c]`` is the share
    of the dataset's steps in category ``c``; ``w[s]`` the true streak occupancy
    (:func:`streak_occupancy` of the true model); ``survival[t]`` the true probability that a
    session reaches step ``t``.

    ``transition_tv`` is ``sum_c pi[c] * TV(A_fit[c], A_true[c])``, with the migration
    matrices ``A = stay_bar * I + (1 - stay_bar) * switch_matrix``, each model's own
    ``stay_bar = sum_s w[s] stay(s) / sum_s w[s]`` taken with the same true weights ``w``: so it
    measures how far the fitted stay curve and switch rows move the next-category distribution
    of an average step, and is 0 iff both are exact.

    Returns:
        ``transition_tv``, ``switch_tv`` (the same on switch rows), ``stay_by_streak_mae``
        (weighted by ``w``), ``mean_stay_error``, ``leave_hazard_mae`` (weighted by
        ``survival``), ``initial_category_tv``, ``p_cart_mae``, ``p_buy_mae`` (weighted by
        ``pi``), ``item_popularity_tv`` (per category over the catalog items, weighted by
        ``pi``), and ``categories_compared``.
    """
    true = truth.model
    k = model.n_categories
    raw = ds.categories["raw_id"].astype(str).to_numpy()
    dataset_of_raw = {r: i for i, r in enumerate(raw)}
    fold = np.asarray(model.category_of_dataset_category)
    # g[c]: fitted category of true category c (-1 when the category never occurs).
    true_ids = list(true.category_ids)
    g = np.array([fold[dataset_of_raw[c]] if c in dataset_of_raw else -1 for c in true_ids])
    steps = step_log(ds, None, np.arange(ds.n_categories))
    counts = np.bincount(steps.category, minlength=ds.n_categories).astype(float)
    pi_true = np.array(
        [counts[dataset_of_raw[c]] if c in dataset_of_raw else 0.0 for c in true_ids]
    )
    seen = g >= 0
    # merge[c, h] = share of fitted category h's steps that are true category c.
    merge = np.zeros((len(true_ids), k))
    merge[np.flatnonzero(seen), g[seen]] = pi_true[seen]
    pi = merge.sum(axis=0)  # (K,) steps per fitted category
    merge = merge / np.where(pi > 0, pi, 1.0)
    pi = pi / pi.sum()
    to_fit = np.zeros((len(true_ids), k))  # column map: true destination -> fitted category
    to_fit[np.flatnonzero(seen), g[seen]] = 1.0

    def fold_rows(matrix: np.ndarray) -> np.ndarray:
        return merge.T @ matrix @ to_fit  # (K, K)

    n_streak = max(len(true.stay_by_streak), len(model.stay_by_streak), 64)
    w = streak_occupancy(true, n_streak)
    streaks = np.arange(1, n_streak + 1)
    stay_true, stay_fit = true.stay_probability(streaks), model.stay_probability(streaks)
    bar_true = float(np.dot(w, stay_true) / w.sum())
    bar_fit = float(np.dot(w, stay_fit) / w.sum())
    a_true = fold_rows(bar_true * np.eye(len(true_ids)) + (1 - bar_true) * true.switch_matrix)
    a_fit = bar_fit * np.eye(k) + (1 - bar_fit) * model.switch_matrix
    row_tv = 0.5 * np.abs(a_fit - a_true).sum(axis=1)

    s_true = fold_rows(true.switch_matrix)
    np.fill_diagonal(s_true, 0.0)  # a switch between two folded categories looks like a stay
    s_true /= np.where(s_true.sum(axis=1, keepdims=True) > 0, s_true.sum(axis=1, keepdims=True), 1)
    switch_tv = 0.5 * np.abs(model.switch_matrix - s_true).sum(axis=1)

    n_steps = max(len(true.leave_hazard), len(model.leave_hazard))
    t = np.arange(1, n_steps + 1)
    h_true, h_fit = true.hazard(t), model.hazard(t)
    survival = np.cumprod(np.r_[1.0, 1.0 - h_true[:-1]])

    init_true = true.initial_category @ to_fit
    cart_true = merge.T @ true.p_cart
    buy_true = merge.T @ true.p_buy

    # Item popularity over the fitted catalog, category by category.
    raw_items = ds.items["raw_id"].astype(str).to_numpy()[model.item_ids]
    true_index = {str(r): i for i, r in enumerate(np.asarray(true.item_ids))}
    idx = np.array([true_index.get(r, -1) for r in raw_items])
    known = idx >= 0
    true_cat = np.where(known, np.asarray(true.item_category)[np.maximum(idx, 0)], 0)
    # P(item | fitted category) under the truth: category share times within-category share.
    share = np.where(
        known, pi_true[true_cat] * np.asarray(true.item_popularity)[np.maximum(idx, 0)], 0.0
    )
    item_cat = np.asarray(model.item_category)
    norm = np.bincount(item_cat, weights=share, minlength=k)
    pop_true = share / np.where(norm[item_cat] > 0, norm[item_cat], 1.0)
    pop_tv = 0.5 * np.bincount(
        item_cat, weights=np.abs(np.asarray(model.item_popularity) - pop_true), minlength=k
    )
    has_items = np.bincount(item_cat, minlength=k) > 0

    return {
        "transition_tv": float(np.dot(pi, row_tv)),
        "switch_tv": float(np.dot(pi, switch_tv)),
        "stay_by_streak_mae": float(np.dot(w, np.abs(stay_fit - stay_true)) / w.sum()),
        "mean_stay_error": bar_fit - bar_true,
        "leave_hazard_mae": float(np.dot(survival, np.abs(h_fit - h_true)) / survival.sum()),
        "initial_category_tv": float(0.5 * np.abs(model.initial_category - init_true).sum()),
        "p_cart_mae": float(np.dot(pi, np.abs(model.p_cart - cart_true))),
        "p_buy_mae": float(np.dot(pi, np.abs(model.p_buy - buy_true))),
        "item_popularity_tv": float(np.dot(pi[has_items], pop_tv[has_items]) / pi[has_items].sum()),
        "catalog_items_unknown": int((~known).sum()),
        "categories_compared": int(seen.sum()),
    }


def format_fidelity(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`validate_fidelity`'s result."""
    lines = [
        f"{'metric':<28}{'value':>12}",
        f"{'js_category_transition':<28}{report['js_category_transition']:>12.4f}",
        f"{'  (perfect-model floor)':<28}{report['js_category_transition_floor']:>12.4f}",
        f"{'ks_session_length':<28}{report['ks_session_length']:>12.4f}",
        f"{'ks_streak_length':<28}{report['ks_streak_length']:>12.4f}",
        f"{'event_mix_max_abs_diff':<28}{report['event_mix_max_abs_diff']:>12.4f}",
    ]
    mean = report["mean_session_length"]
    lines.append(f"{'mean session (sim / test)':<28}{mean['simulated']:>6.2f} / {mean['test']:.2f}")
    lines.append(
        f"{'sessions (sim / test)':<28}{report['simulated_sessions']} / {report['test_sessions']}"
    )
    mix = report["event_mix"]
    lines.append("")
    lines.append(f"{'step outcome':<14}{'simulated':>11}{'test':>9}")
    for name in mix["simulated"]:
        lines.append(f"{name:<14}{mix['simulated'][name]:>11.4f}{mix['test'][name]:>9.4f}")
    truth = report.get("ground_truth")
    if truth:
        lines.append("")
        lines.append("ground truth (synthetic data)")
        for name, value in truth.items():
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {name:<26}{text:>12}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report data
# What the report draws is computed here, beside the fidelity metrics it illustrates; the
# report only renders.


def fidelity_distributions(
    model: SimModel,
    dataset: PreparedDataset,
    n_sessions: int = 20_000,
    seed: int = 0,
    top: int = TOP_CATEGORIES,
) -> dict[str, Any]:
    """The distributions behind the fidelity plot: simulated organic sessions against test.

    Args:
        model: A :class:`rlrec.models.sim_model.SimModel` fitted on ``dataset``.
        dataset: The :class:`rlrec.data.dataset.PreparedDataset`.
        n_sessions: Organic sessions to simulate.
        seed: Seed of the simulation.
        top: Categories in the transition matrices (the most frequent in the test split).

    Returns:
        ``session_length``: ``lengths`` (1..L, the last pooling longer sessions),
        ``simulated`` and ``test`` shares; ``transitions``: ``labels`` (raw category ids),
        ``simulated`` and ``test`` (top, top) row-normalised next-category probabilities
        among consecutive steps within the top categories.
    """
    fold = np.asarray(model.category_of_dataset_category)
    test = step_log(dataset, "test", fold)
    sim = simulate_organic(model, n_sessions, seed)
    test_len, sim_len = np.diff(test.offsets), np.diff(sim.offsets)
    cap = int(max(5, min(30, np.percentile(test_len, 95) if len(test_len) else 5)))
    lengths = np.arange(1, cap + 1)

    def shares(x: np.ndarray) -> list[float]:
        counts = np.bincount(np.minimum(x, cap), minlength=cap + 1)[1:].astype(float)
        return (counts / max(counts.sum(), 1.0)).tolist()

    k = model.n_categories
    freq = np.bincount(test.category, minlength=k)
    keep = np.argsort(-freq, kind="stable")[: min(top, k)]

    def transitions(offsets: np.ndarray, category: np.ndarray) -> list[list[float]]:
        same = np.ones(len(category), dtype=bool)
        same[offsets[1:-1] - 1] = False  # the last step of a session has no successor
        if len(category):
            same[-1] = False
        src = category[:-1][same[:-1]] if len(category) > 1 else np.zeros(0, np.int64)
        dst = category[1:][same[:-1]] if len(category) > 1 else np.zeros(0, np.int64)
        counts = np.zeros((k, k))
        np.add.at(counts, (src, dst), 1.0)
        sub = counts[np.ix_(keep, keep)]
        return (sub / np.maximum(sub.sum(axis=1, keepdims=True), 1.0)).tolist()

    return {
        "session_length": {
            "lengths": lengths.tolist(),
            "simulated": shares(sim_len),
            "test": shares(test_len),
        },
        "transitions": {
            "labels": [str(model.category_ids[c]) for c in keep],
            "simulated": transitions(sim.offsets, sim.category),
            "test": transitions(test.offsets, test.category),
        },
    }


def migration_matrix(
    model: SimModel, top: int = TOP_CATEGORIES
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The fitted migration matrix ``A = stay_bar I + (1 - stay_bar) S`` over the top categories.

    ``stay_bar`` averages the stay curve over the streak occupancy of the model's own
    sessions (as in the fidelity's ground-truth errors); the top categories are those with
    the largest stationary share of ``A``; rows are renormalised within them.

    Returns:
        (top, top) matrix, the categories' raw ids, and (top,) stationary shares.
    """
    w = streak_occupancy(model, 64)
    stay = model.stay_probability(np.arange(1, 65))
    stay_bar = float(np.dot(w, stay) / max(w.sum(), 1e-12))
    k = model.n_categories
    full = stay_bar * np.eye(k) + (1.0 - stay_bar) * np.asarray(model.switch_matrix)
    pi = np.asarray(model.initial_category, dtype=np.float64)
    for _ in range(500):  # power iteration: where an average long session spends its time
        pi = pi @ full
    keep = np.argsort(-pi, kind="stable")[: min(top, k)]
    sub = full[np.ix_(keep, keep)]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    return sub, [str(model.category_ids[c]) for c in keep], pi[keep]
