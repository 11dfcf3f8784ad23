"""A trained rlrec run as a bandit evaluation policy (``rlrec ope bandit --policy RUN_DIR``).

What the run's policy is asked, and why:

* **Observation.** A logged bandit round (an Open Bandit Dataset impression) carries hashed
  user features but no session history, and a run's policy reads only session histories. So
  every round is shown to it as a session's first recommendation: an empty (all-padding)
  history at step 0. Its distribution is therefore the same in every round (shape
  ``(1, n_actions, len_list)``, which the estimators broadcast); the round's user features
  are not used, because the policy was never trained on them.
* **Actions.** The run's action space (its catalog) must have exactly the log's number of
  actions. Log action ``a`` is the catalog item whose dataset raw id is the integer ``a``
  when the catalog's raw ids are exactly ``0 .. n_actions - 1`` (a run trained on the log's
  own items, e.g. an OBD-prepared dataset); otherwise it is catalog action ``a`` (the run's
  ``a``-th most popular item), a pairing that means something only for a run trained on
  the log's items.
* **Slate.** A slate of ``len_list`` positions is the policy's ranking: items drawn without
  replacement in proportion to its probabilities (Plackett-Luce, by Gumbel top-k), position
  ``k`` holding the ``k``-th draw. Its per-position marginals are computed by seeded Monte
  Carlo, as for the Bernoulli Thompson Sampling policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlrec.data.bandit import BanditFeedback
from rlrec.errors import UserError

__all__ = [
    "log_action_of_catalog",
    "plackett_luce_slate_dist",
    "run_action_dist",
]

_MAX_CHUNK_ELEMENTS = 1 << 24  # bounds the (draws, n_actions) Gumbel block in memory


def plackett_luce_slate_dist(
    probabilities: np.ndarray, len_list: int, n_sim: int, seed: int
) -> np.ndarray:
    """Per-position marginals of slates drawn without replacement from ``probabilities``.

    Args:
        probabilities: (n_actions,) a distribution over actions.
        len_list: Positions per slate (<= number of actions with positive probability).
        n_sim: Monte Carlo slates.
        seed: Seed of the draws.

    Returns:
        (1, n_actions, len_list) float64; each position's column sums to 1.

    Raises:
        UserError: If fewer than ``len_list`` actions have positive probability, or
            ``n_sim`` < 1.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    n_actions = len(p)
    if n_sim < 1:
        raise UserError(f"--n-sim: expected >= 1 Monte Carlo slates, got {n_sim}")
    if int(np.sum(p > 0)) < len_list:
        raise UserError(
            f"policy: only {int(np.sum(p > 0))} actions have positive probability, fewer than "
            f"the {len_list} slate positions"
        )
    with np.errstate(divide="ignore"):
        log_p = np.log(p)  # -inf for impossible actions: never drawn
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_actions, len_list), dtype=np.int64)
    per_chunk = max(1, _MAX_CHUNK_ELEMENTS // max(n_actions, 1))
    for start in range(0, n_sim, per_chunk):
        b = min(per_chunk, n_sim - start)
        keys = log_p[None, :] + rng.gumbel(size=(b, n_actions))  # (b, A)
        top = np.argpartition(-keys, len_list - 1, axis=1)[:, :len_list]  # (b, L) unordered
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        ranked = np.take_along_axis(top, order, axis=1)  # (b, L) position k = k-th draw
        for k in range(len_list):
            counts[:, k] += np.bincount(ranked[:, k], minlength=n_actions)
    return (counts / float(n_sim))[None, :, :]


def log_action_of_catalog(raw_ids: np.ndarray) -> np.ndarray:
    """(n_actions,) the log action of each catalog action, given the catalog's raw item ids.

    The raw id read as an integer when the raw ids are exactly ``0 .. n_actions - 1`` in
    some order (the log's own items), else the catalog index.
    """
    n_actions = len(raw_ids)
    try:
        as_int = np.array([int(str(r)) for r in raw_ids], dtype=np.int64)
    except ValueError:
        return np.arange(n_actions)
    if np.array_equal(np.sort(as_int), np.arange(n_actions)):
        return as_int
    return np.arange(n_actions)


def run_action_dist(
    run_dir: Path, feedback: BanditFeedback, n_sim: int = 100_000, seed: int = 12345
) -> np.ndarray:
    """The slate distribution of a trained run's policy over a bandit log's actions.

    See the module docstring for the observation, the action matching and the slate.

    Args:
        run_dir: A run directory written by ``rlrec train``.
        feedback: The logged bandit feedback (its action count and slate length).
        n_sim: Monte Carlo slates.
        seed: Seed of the Monte Carlo.

    Returns:
        (1, n_actions, len_list) float64 per-position action probabilities.

    Raises:
        UserError: If the run's catalog size differs from the log's action count, or the run
            cannot be loaded.
    """
    from rlrec.agents.train import load_run, require_stateless

    run = load_run(run_dir)
    require_stateless(run, f"bandit OPE of {run_dir}")
    n_catalog = int(getattr(run.policy, "n_actions", 0)) or int(
        min(run.config.env.catalog_size, run.sim_model.n_items)
    )
    if n_catalog != feedback.n_actions:
        raise UserError(
            f"{run_dir}: the run's catalog has {n_catalog} items and {feedback.source} has "
            f"{feedback.n_actions} actions; evaluate a run whose action space is the log's items"
        )
    history = run.config.env.history_length
    empty: dict[str, np.ndarray] = {
        "item_history": np.zeros((1, history), dtype=np.int32),
        "category_history": np.zeros((1, history), dtype=np.int32),
        "step": np.zeros((1, 1), dtype=np.int64),
    }
    catalog_p = np.asarray(run.policy.action_probabilities(empty), dtype=np.float64)[0]
    if catalog_p.shape != (n_catalog,) or not np.all(np.isfinite(catalog_p)):
        raise UserError(f"{run_dir}: the run's policy gave no finite distribution over its catalog")
    catalog_p = np.clip(catalog_p, 0.0, None)
    catalog_p /= catalog_p.sum()  # float32 policies sum to 1 only up to ~1e-7
    item_ids = np.asarray(run.sim_model.item_ids[:n_catalog], dtype=np.int64)
    log_action = log_action_of_catalog(run.dataset.items["raw_id"].to_numpy()[item_ids])
    p = np.empty(n_catalog)
    p[log_action] = catalog_p
    return plackett_luce_slate_dist(p, feedback.len_list, n_sim, seed)
