from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from rlrec.data.dataset import PreparedDataset, load_dataset
from rlrec.data.prepare import prepare
from rlrec.errors import UserError
from rlrec.evaluation.fidelity import (
    format_fidelity,
    js_divergence,
    ks_distance,
    streak_occupancy,
    validate_fidelity,
)
from rlrec.models.ground_truth import GROUND_TRUTH_JSON, GROUND_TRUTH_NPZ
from rlrec.models.sim_model import SimModel
from rlrec.models.synthetic import SyntheticConfig, generate_dataset
from rlrec.models.transition import fit_sim_model


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return load_dataset(generate_dataset(out, SyntheticConfig(n_events=100_000, seed=11)))


@pytest.fixture(scope="module")
def fitted(synthetic: PreparedDataset) -> SimModel:
    return fit_sim_model(synthetic)


def test_js_divergence_bounds() -> None:
    p = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert js_divergence(p, 10 * p) == pytest.approx(0.0)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert 0 < js_divergence(np.array([0.5, 0.5]), np.array([0.9, 0.1])) < 1


def test_js_divergence_is_the_divergence_not_scipys_distance() -> None:
    # By hand: m = (0.7, 0.3); JS = (KL(p || m) + KL(q || m)) / 2 in bits.
    kl_p = 0.5 * np.log2(0.5 / 0.7) + 0.5 * np.log2(0.5 / 0.3)
    kl_q = 0.9 * np.log2(0.9 / 0.7) + 0.1 * np.log2(0.1 / 0.3)
    got = js_divergence(np.array([5.0, 5.0]), np.array([0.9, 0.1]))
    assert got == pytest.approx((kl_p + kl_q) / 2, rel=1e-12)


def test_ks_distance_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.geometric(0.2, 300), rng.geometric(0.25, 500)
    assert ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic)
    assert ks_distance(a, a) == 0.0


def test_ks_distance_is_the_largest_gap_between_empirical_cdfs() -> None:
    # F_a = 1/3, 2/3, 1, 1 and F_b = 0, 1/2, 1/2, 1 at 1, 2, 3, 4: the gap is 1/2 at 3.
    assert ks_distance(np.array([1, 2, 3]), np.array([2, 4])) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    a, b = rng.geometric(0.2, 200), rng.geometric(0.3, 150)  # many ties
    grid = np.union1d(a, b)
    gaps = [abs(np.mean(a <= x) - np.mean(b <= x)) for x in grid]
    assert ks_distance(a, b) == pytest.approx(max(gaps), abs=1e-12)
    assert np.isnan(ks_distance(np.array([]), b))


def test_streak_occupancy_counts_every_decision(fitted: SimModel) -> None:
    # Decisions per session = expected length - 1, whatever the stay curve.
    w = streak_occupancy(fitted)
    t = np.arange(1, 5000)
    survival = np.cumprod(np.r_[1.0, 1.0 - fitted.hazard(t[:-1])])
    assert w.sum() == pytest.approx(survival.sum() - 1.0, rel=1e-6)


def test_validate_on_synthetic_data(fitted: SimModel, synthetic: PreparedDataset) -> None:
    report = validate_fidelity(fitted, synthetic, n_sessions=5000, seed=0)
    for key in ("js_category_transition", "ks_session_length", "ks_streak_length"):
        assert 0 <= report[key] < 0.1, key
    # A well-fitted model scores near what a perfect one would on a test split this size.
    floor = report["js_category_transition_floor"]
    assert floor > 0 and report["js_category_transition"] < 2 * floor
    assert report["event_mix_max_abs_diff"] < 0.02
    assert report["ground_truth"]["transition_tv"] < 0.06
    assert report == validate_fidelity(fitted, synthetic, n_sessions=5000, seed=0)
    table = format_fidelity(report)
    assert "js_category_transition" in table and "transition_tv" in table


def test_a_wrong_model_fails_fidelity(fitted: SimModel, synthetic: PreparedDataset) -> None:
    good = validate_fidelity(fitted, synthetic, n_sessions=5000, seed=0)
    k = fitted.n_categories
    sticky = dataclasses.replace(
        fitted,
        switch_matrix=(np.ones((k, k)) - np.eye(k)) / (k - 1),
        stay_by_streak=np.array([0.9]),
    )
    bad = validate_fidelity(sticky, synthetic, n_sessions=5000, seed=0)
    for key in ("js_category_transition", "ks_streak_length"):
        assert bad[key] > good[key] + 0.1, key
    assert bad["js_category_transition"] > 3 * bad["js_category_transition_floor"]
    short = dataclasses.replace(fitted, leave_hazard=np.array([0.5]))
    bad = validate_fidelity(short, synthetic, n_sessions=5000, seed=0)
    assert bad["ks_session_length"] > good["ks_session_length"] + 0.1


def test_no_ground_truth_block_for_other_data(
    synthetic: PreparedDataset, fitted: SimModel, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(synthetic.path, copy)
    (copy / GROUND_TRUTH_JSON).unlink()
    (copy / GROUND_TRUTH_NPZ).unlink()
    report = validate_fidelity(fitted, load_dataset(copy), n_sessions=1000)
    assert "ground_truth" not in report


def test_model_of_another_dataset_is_a_clear_error(fitted: SimModel, tmp_path: Path) -> None:
    other = load_dataset(
        generate_dataset(
            tmp_path / "other", SyntheticConfig(n_users=50, n_categories=5, n_items=100)
        )
    )
    with pytest.raises(UserError, match="fitted on a dataset with 50 categories"):
        validate_fidelity(fitted, other, n_sessions=100)


def test_taobao_sample_fidelity(taobao_csv: Path, tmp_path: Path) -> None:
    ds = load_dataset(prepare([taobao_csv], preset="taobao", out=tmp_path / "taobao"))
    model = fit_sim_model(ds)
    assert model.category_ids[-1] == "__other__"  # 1,096 categories: the tail is folded
    report = validate_fidelity(model, ds, n_sessions=5000, seed=0)
    assert "ground_truth" not in report
    # A loose sanity bound: 177 test sessions make these noisy (see the closing note).
    assert report["ks_session_length"] < 0.2
    assert report["ks_streak_length"] < 0.2
    assert report["js_category_transition"] < 0.5
