"""The truth world: the synthetic log's own generator as a simulator, for sim-to-real checks.

An agent is trained in the simulator *fitted* from a log. Whether its gain is real is decided
in the world that *produced* the log. For the synthetic default that world is known: the
generator's true parameters (:class:`rlrec.models.ground_truth.GroundTruth`). :func:`truth_world`
turns them into a SimModel in the dataset's index space, with the fitted model's action
space (catalog action ``a`` is the same dataset item in both worlds), so every policy trained
or fitted on the log runs there unchanged.

What the truth has and the fit does not:

* **sessions differ in focus**: each session stays in its category with its own probability
  drawn from ``Beta(focus_alpha, focus_beta)`` (the fit sees only the average by streak); a
  user started from a logged prefix draws it from the posterior given the prefix's stays and
  switches (``info['session_focus']``, read by :class:`rlrec.envs.dynamics.UserDynamics`);
* the true switch matrix, item popularity and funnel over all categories, not estimates;
* the true response parameters (the generator's ``response`` settings, the SimModel defaults
  when none), where the fitted model holds defaults or the prior.

Left out: the generator's in-streak revisits (they change which item an organic step shows,
never the category, the funnel or the reward), and items that never appear in the log (they
have no token; their popularity mass is spread over the category's logged items).
"""

from __future__ import annotations

import numpy as np

from rlrec.data.dataset import PreparedDataset
from rlrec.envs.lifecycle import ReturnProcess
from rlrec.errors import UserError
from rlrec.models.ground_truth import GroundTruth, load_ground_truth
from rlrec.models.sim_model import ARRAY_FIELDS, Provenance, SimModel

__all__ = ["load_truth_world", "truth_world"]


def truth_world(dataset: PreparedDataset, fitted: SimModel, truth: GroundTruth) -> SimModel:
    """The true user model of ``dataset`` in its index space, with ``fitted``'s catalog order.

    Args:
        dataset: The PreparedDataset made from the synthetic log.
        fitted: The SimModel fitted on it (its catalog order becomes the truth's, so that
            actions mean the same items).
        truth: The ground truth written beside the dataset.

    Raises:
        UserError: If the dataset's vocabularies do not come from this ground truth.
    """
    model = truth.model
    item_of_raw = {str(int(r)): j for j, r in enumerate(np.asarray(model.item_ids))}
    category_of_raw = {str(c): j for j, c in enumerate(model.category_ids)}
    raw_items = dataset.items.sort_values("item")["raw_id"].astype(str).to_numpy()
    raw_cats = dataset.categories.sort_values("category")["raw_id"].astype(str).to_numpy()
    try:
        truth_item = np.array([item_of_raw[r] for r in raw_items], dtype=np.int64)
        truth_category = np.array([category_of_raw[r] for r in raw_cats], dtype=np.int64)
    except KeyError as exc:
        raise UserError(
            f"{dataset.path}: item or category {exc.args[0]!r} is not in the dataset's ground "
            "truth; the truth world needs the synthetic dataset the truth was written with"
        ) from None
    catalog = np.asarray(fitted.item_ids, dtype=np.int64)
    rest = np.setdiff1d(np.arange(dataset.n_items), catalog)
    item_ids = np.concatenate([catalog, rest])
    item_category = model.item_category[truth_item[item_ids]].astype(np.int64)
    popularity = np.asarray(model.item_popularity, dtype=np.float64)[truth_item[item_ids]]
    k = model.n_categories
    mass = np.bincount(item_category, weights=popularity, minlength=k)
    popularity = popularity / np.maximum(mass, 1e-300)[item_category]
    config = truth.config
    source = Provenance("user", "synthetic ground truth")
    return SimModel(
        category_ids=model.category_ids,
        switch_matrix=model.switch_matrix,
        stay_by_streak=model.stay_by_streak,
        initial_category=model.initial_category,
        leave_hazard=model.leave_hazard,
        item_ids=item_ids,
        item_category=item_category,
        item_popularity=popularity,
        p_cart=model.p_cart,
        p_buy=model.p_buy,
        category_of_dataset_category=truth_category,
        engage_base_rate=model.engage_base_rate,
        engage_interest_exponent=model.engage_interest_exponent,
        engage_popularity_exponent=model.engage_popularity_exponent,
        leave_engaged_factor=model.leave_engaged_factor,
        leave_miss_factor=model.leave_miss_factor,
        engage_ceiling=model.engage_ceiling,
        leave_streak_factor=model.leave_streak_factor,
        leave_streak_start=model.leave_streak_start,
        provenance={name: source for name in ARRAY_FIELDS},
        info={
            "world": "truth",
            "session_focus": [float(config.focus_alpha), float(config.focus_beta)],
            # Lifecycle episodes in the truth world return by the generator's own process.
            **(
                {"return_process": ReturnProcess.from_truth(config.returns).to_dict()}
                if config.returns.enabled
                else {}
            ),
        },
    )


def load_truth_world(dataset: PreparedDataset, fitted: SimModel) -> SimModel:
    """:func:`truth_world` of a dataset directory's ground truth.

    Raises:
        UserError: If the dataset has no ground truth (a real log).
    """
    truth = load_ground_truth(dataset.path)
    if truth is None:
        raise UserError(
            f"{dataset.path}: no ground truth (a real log): --world truth needs a synthetic "
            "dataset ('rlrec data synth' or an env preset with 'source: synthetic')"
        )
    return truth_world(dataset, fitted, truth)
