"""The truth world and per-user response draws."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlrec.data.dataset import load_dataset
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.envs.config import EnvConfig
from rlrec.envs.dynamics import UserDynamics
from rlrec.envs.truth import load_truth_world
from rlrec.errors import UserError
from rlrec.models.ground_truth import ReturnTruthConfig, load_ground_truth
from rlrec.models.prior import RESPONSE_PARAMETERS, with_response
from rlrec.models.synthetic import SyntheticConfig, generate_dataset
from rlrec.models.transition import FitConfig, fit_sim_model
from tests.envs.conftest import make_sim_model

ENV = EnvConfig(history_length=8, max_steps=20, catalog_size=40, start="warm")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("truth")
    config = SyntheticConfig(
        n_users=80,
        n_categories=6,
        n_items=240,
        returns=ReturnTruthConfig(observation_days=2.2),  # about 4 sessions per user
        seed=3,
        response={"leave_streak_factor": 1.35},
    )
    generate_dataset(root / "data", config)
    dataset = load_dataset(root / "data")
    fitted = fit_sim_model(dataset, FitConfig(top_k_categories=6, catalog_size=60))
    return dataset, fitted


def test_truth_keeps_the_action_space_and_the_true_parameters(world) -> None:
    dataset, fitted = world
    truth = load_truth_world(dataset, fitted)
    a = min(ENV.catalog_size, fitted.n_items)
    # Action a is the same dataset item in both worlds.
    np.testing.assert_array_equal(truth.item_ids[:a], fitted.item_ids[:a])
    gt = load_ground_truth(dataset.path)
    assert truth.leave_streak_factor == 1.35  # the world's, not the fit's default
    assert fitted.leave_streak_factor == 1.2
    np.testing.assert_allclose(truth.switch_matrix, gt.model.switch_matrix)
    # The true categories of the dataset's items.
    raw_cat = dataset.categories.sort_values("category")["raw_id"].to_numpy()
    mapped = np.array([truth.category_ids[c] for c in truth.category_of_dataset_category])
    np.testing.assert_array_equal(mapped, raw_cat)


def test_sessions_draw_their_focus_from_the_prefix_posterior(world) -> None:
    dataset, fitted = world
    truth = load_truth_world(dataset, fitted)
    dyn = UserDynamics(truth, ENV, dataset)
    state = dyn.start(4000, np.random.default_rng(0))
    assert state.focus is not None and np.all((state.focus > 0) & (state.focus < 1))
    warm = dyn.warm
    assert warm is not None
    # A prefix that stayed more has a more focused posterior on average.
    stays = state.streak - 1  # within the trailing run every step stayed
    long_run = state.focus[stays >= 2].mean()
    switched = state.focus[(state.streak == 1) & (state.step >= 3)].mean()
    assert long_run > switched
    # The fitted world has no per-session focus.
    assert UserDynamics(fitted, ENV, dataset).start(10, np.random.default_rng(0)).focus is None


def test_a_real_log_has_no_truth(tiny_dataset) -> None:
    model = make_sim_model()
    with pytest.raises(UserError, match="no ground truth"):
        load_truth_world(tiny_dataset, model)


def test_domain_randomisation_draws_per_user_and_is_seeded() -> None:
    model = with_response(make_sim_model(), {"leave_miss_factor": 1.1})
    config = dataclasses.replace(ENV, start="stationary", randomize_response=True)
    dyn = UserDynamics(model, config)
    a = dyn.start(500, np.random.default_rng(1))
    b = dyn.start(500, np.random.default_rng(1))
    assert a.response is not None and b.response is not None
    np.testing.assert_array_equal(a.response, b.response)
    j = RESPONSE_PARAMETERS.index("leave_streak_factor")
    assert a.response[:, j].std() > 0.05  # drawn per user
    assert np.all(a.response[:, RESPONSE_PARAMETERS.index("leave_miss_factor")] == 1.1)
    # Same seed, same episodes; the randomised world differs from the point one.
    env = BatchedInterestDrift(200, model, None, config)
    point = BatchedInterestDrift(
        200, model, None, dataclasses.replace(config, randomize_response=False)
    )
    env.reset(seed=5)
    point.reset(seed=5)
    actions = np.zeros(200, dtype=np.int64)
    _, r1, *_ = env.step(actions)
    env2 = BatchedInterestDrift(200, model, None, config)
    env2.reset(seed=5)
    _, r2, *_ = env2.step(actions)
    np.testing.assert_array_equal(r1, r2)
