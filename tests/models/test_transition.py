from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.data.dataset import PreparedDataset, load_dataset
from rlrec.data.prepare import prepare
from rlrec.errors import UserError
from rlrec.evaluation.fidelity import ground_truth_errors
from rlrec.models.ground_truth import load_ground_truth
from rlrec.models.sim_model import (
    ARRAY_FIELDS,
    ARRAYS_FILE,
    PARAMS_FILE,
    SCALAR_FIELDS,
    SimModel,
    load_sim_model,
)
from rlrec.models.synthetic import SyntheticConfig, generate_dataset
from rlrec.models.transition import (
    OTHER_CATEGORY,
    FitConfig,
    choose_smoothing,
    fit_leave_hazard,
    fit_sim_model,
    simulate_organic,
    smoothed_switch_matrix,
    step_log,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return load_dataset(generate_dataset(out, SyntheticConfig(n_events=150_000, seed=7)))


@pytest.fixture(scope="module")
def fitted(synthetic: PreparedDataset) -> SimModel:
    return fit_sim_model(synthetic)


def test_recovers_the_ground_truth(synthetic: PreparedDataset, fitted: SimModel) -> None:
    truth = load_ground_truth(synthetic.path)
    assert truth is not None
    errors = ground_truth_errors(fitted, synthetic, truth)
    assert errors["categories_compared"] == 50
    # Tolerances for ~120k train events (1M events reach transition_tv ~0.013).
    assert errors["transition_tv"] < 0.05
    assert errors["stay_by_streak_mae"] < 0.01
    assert abs(errors["mean_stay_error"]) < 0.01
    assert errors["leave_hazard_mae"] < 0.01
    assert errors["p_cart_mae"] < 0.01
    assert errors["p_buy_mae"] < 0.005
    assert errors["initial_category_tv"] < 0.05
    assert errors["item_popularity_tv"] < 0.08


def test_a_wrong_model_is_far_from_the_truth(synthetic: PreparedDataset, fitted: SimModel) -> None:
    # The recovery metric must be able to fail: a uniform switch matrix and flat stay curve.
    k = fitted.n_categories
    wrong = dataclasses.replace(
        fitted,
        switch_matrix=(np.ones((k, k)) - np.eye(k)) / (k - 1),
        stay_by_streak=np.full(3, 0.8),
    )
    truth = load_ground_truth(synthetic.path)
    assert truth is not None
    errors = ground_truth_errors(wrong, synthetic, truth)
    assert errors["transition_tv"] > 0.2
    assert errors["stay_by_streak_mae"] > 0.3


def test_every_parameter_has_provenance(fitted: SimModel) -> None:
    for name in (*ARRAY_FIELDS, *SCALAR_FIELDS):
        assert name in fitted.provenance, name
    assert fitted.provenance["switch_matrix"].source == "fitted"
    assert "alpha=" in fitted.provenance["switch_matrix"].detail
    # A log of positive events only: the base rate is the default, and says so.
    assert fitted.provenance["engage_base_rate"].source == "default"
    assert fitted.engage_base_rate == 0.1
    assert fitted.provenance["leave_miss_factor"].source == "default"
    for name in ("engage_ceiling", "leave_streak_factor", "leave_streak_start"):
        assert fitted.provenance[name].source == "default"
        assert "not identifiable from organic logs" in fitted.provenance[name].detail


def test_user_base_rate_and_fitted_ctr(synthetic: PreparedDataset) -> None:
    model = fit_sim_model(synthetic, FitConfig(engage_base_rate=0.2))
    assert model.engage_base_rate == 0.2
    assert model.provenance["engage_base_rate"].source == "user"
    # Impressions with non-clicks (as in OBD): the base rate becomes the click-through rate.
    events = synthetic.events.copy()
    events["reward"] = (np.arange(len(events)) % 4 == 0).astype(np.float32)
    with_clicks = dataclasses.replace(synthetic, events=events)
    model = fit_sim_model(with_clicks, FitConfig(engage_base_rate=0.2))
    assert model.provenance["engage_base_rate"].source == "fitted"
    assert model.engage_base_rate == pytest.approx(0.25, abs=0.01)


def test_shapes_and_catalog(synthetic: PreparedDataset, fitted: SimModel) -> None:
    assert fitted.n_categories == 50
    assert OTHER_CATEGORY not in fitted.category_ids
    assert fitted.n_items == 1000
    steps = step_log(synthetic, "train", np.arange(synthetic.n_categories))
    counts = np.bincount(steps.item, minlength=synthetic.n_items)
    # The catalog is the items with the most train steps, most popular first.
    assert np.all(np.diff(counts[fitted.item_ids]) <= 0)
    assert counts[fitted.item_ids].min() >= np.sort(counts)[-1000]
    np.testing.assert_array_equal(
        fitted.item_category,
        fitted.category_of_dataset_category[synthetic.item_category[fitted.item_ids]],
    )


def test_top_k_folds_the_rest_into_other(synthetic: PreparedDataset) -> None:
    model = fit_sim_model(synthetic, FitConfig(top_k_categories=10, catalog_size=200))
    assert model.n_categories == 11 and model.category_ids[-1] == OTHER_CATEGORY
    assert np.sum(model.category_of_dataset_category == 10) == synthetic.n_categories - 10
    truth = load_ground_truth(synthetic.path)
    assert truth is not None
    errors = ground_truth_errors(model, synthetic, truth)
    # Folding makes the model approximate (switches inside __other__ look like stays, and one
    # stay curve serves all categories), so the bound is looser than without folding.
    assert errors["categories_compared"] == 50
    assert np.isfinite(errors["transition_tv"]) and errors["transition_tv"] < 0.2


def test_save_load_round_trip(fitted: SimModel, tmp_path: Path) -> None:
    loaded = load_sim_model(fitted.save(tmp_path / "sim"))
    for name in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
    for name in SCALAR_FIELDS:
        assert getattr(loaded, name) == getattr(fitted, name)
    assert loaded.category_ids == fitted.category_ids
    assert loaded.provenance == fitted.provenance
    assert loaded.info["switch_smoothing"] == fitted.info["switch_smoothing"]
    # Saved JSON is strict (no NaN or Infinity).
    json.loads((tmp_path / "sim" / PARAMS_FILE).read_text(), parse_constant=_reject)


def _reject(value: str) -> None:
    raise AssertionError(f"non-strict JSON constant {value}")


def test_bad_sim_model_dirs(fitted: SimModel, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing sim_model\.json"):
        load_sim_model(tmp_path / "nowhere")
    path = fitted.save(tmp_path / "sim")
    (path / ARRAYS_FILE).unlink()
    with pytest.raises(UserError, match=r"missing arrays\.npz"):
        load_sim_model(path)

    path = fitted.save(tmp_path / "shapes")
    arrays = {name: np.asarray(getattr(fitted, name)) for name in ARRAY_FIELDS}
    arrays["p_cart"] = arrays["p_cart"][:-1]
    np.savez(path / ARRAYS_FILE, **arrays)
    with pytest.raises(UserError, match="p_cart has shape"):
        load_sim_model(path)

    path = fitted.save(tmp_path / "json")
    (path / PARAMS_FILE).write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        load_sim_model(path)

    # A model saved before the engagement ceiling and boredom (schema 1) is refused.
    path = fitted.save(tmp_path / "stale")
    params = json.loads((path / PARAMS_FILE).read_text())
    params["schema_version"] = 1
    for name in ("engage_ceiling", "leave_streak_factor", "leave_streak_start"):
        del params[name]
    (path / PARAMS_FILE).write_text(json.dumps(params))
    with pytest.raises(UserError, match="schema_version 1, expected 2; fit the model again"):
        load_sim_model(path)


def test_single_category_is_a_clear_error(tmp_path: Path) -> None:
    n = 400
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "user": np.repeat(np.arange(20), n // 20),
            "item": rng.integers(0, 50, n),
            "time": np.arange(n, dtype=np.int64) * 60_000,
            "category": "only",
            "event": "view",
        }
    )
    raw = tmp_path / "raw.parquet"
    frame.to_parquet(raw, index=False)
    ds = load_dataset(prepare([raw], preset="canonical", out=tmp_path / "ds"))
    with pytest.raises(UserError, match="--derive-categories"):
        fit_sim_model(ds)


def test_log_without_categories_points_to_derive_categories(
    diginetica_csv: Path, tmp_path: Path
) -> None:
    ds = load_dataset(prepare([diginetica_csv], preset="diginetica", out=tmp_path / "dg"))
    # Refused at the fit's entry (rlrec.data.content.require_categories), before any counting.
    with pytest.raises(UserError, match=r"has no category column: fit needs categories.*--derive"):
        fit_sim_model(ds)


def test_leave_hazard_of_geometric_sessions() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.geometric(0.25, size=50_000)
    hazard = fit_leave_hazard(lengths, max_steps=10, min_count=30)
    assert len(hazard) == 10
    np.testing.assert_allclose(hazard, 0.25, atol=0.02)
    # A sparse tail is pooled into fewer bins.
    assert len(fit_leave_hazard(lengths[:100], max_steps=50, min_count=30)) < 10


def test_smoothing_is_chosen_on_held_out_switches() -> None:
    rng = np.random.default_rng(0)
    k = 6
    true = rng.dirichlet(np.ones(k), size=k)
    np.fill_diagonal(true, 0)
    true /= true.sum(axis=1, keepdims=True)

    def draw(n: int) -> np.ndarray:
        counts = np.stack([rng.multinomial(n, row) for row in true]).astype(float)
        return counts

    alpha, scores = choose_smoothing(draw(5), draw(2000), (0.0, 1.0, 5.0, 1e6))
    assert scores["0.0"] == -np.inf  # an unseen valid switch has probability 0 without smoothing
    assert alpha in (1.0, 5.0)
    smoothed = smoothed_switch_matrix(draw(5), alpha)
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0)
    assert np.all(np.diag(smoothed) == 0)


def test_simulate_organic_is_seeded(fitted: SimModel) -> None:
    a = simulate_organic(fitted, 500, seed=1)
    b = simulate_organic(fitted, 500, seed=1)
    c = simulate_organic(fitted, 500, seed=2)
    np.testing.assert_array_equal(a.category, b.category)
    np.testing.assert_array_equal(a.item, b.item)
    assert not np.array_equal(a.offsets, c.offsets)
    assert a.n_sessions == 500
    # Items are catalog indices of the step's category.
    assert np.all(fitted.item_category[a.item] == a.category)
