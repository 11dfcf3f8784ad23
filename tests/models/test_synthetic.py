from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.config import from_mapping
from rlrec.data.dataset import load_dataset
from rlrec.errors import UserError
from rlrec.models.calibration import log_statistics, read_taobao_frame
from rlrec.models.ground_truth import GROUND_TRUTH_JSON, GROUND_TRUTH_NPZ, load_ground_truth
from rlrec.models.sim_model import ARRAY_FIELDS
from rlrec.models.synthetic import SyntheticConfig, generate_dataset, generate_events

SMALL = SyntheticConfig(n_users=60, n_categories=8, n_items=400, seed=3)


def test_same_seed_same_log_and_other_seed_differs() -> None:
    a, truth_a = generate_events(SMALL)
    b, truth_b = generate_events(SMALL)
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_array_equal(truth_a.model.switch_matrix, truth_b.model.switch_matrix)
    c, truth_c = generate_events(SyntheticConfig(n_users=60, n_categories=8, n_items=400, seed=4))
    assert not a["item"].equals(c["item"])
    assert not np.allclose(truth_a.model.switch_matrix, truth_c.model.switch_matrix)


def test_canonical_columns_and_event_order() -> None:
    frame, truth = generate_events(SMALL)
    assert list(frame.columns) == ["user", "item", "time", "category", "event", "session"]
    assert set(frame["event"].astype(str)) <= {"view", "fav", "cart", "buy"}
    assert set(frame["category"].astype(str)) <= set(truth.model.category_ids)
    # Time increases within a user; every step starts with a view.
    for _, user in frame.groupby("user"):
        assert np.all(np.diff(user["time"].to_numpy()) > 0)
    events = frame["event"].astype(str).to_numpy()
    new_step = np.r_[True, frame["item"].to_numpy()[1:] != frame["item"].to_numpy()[:-1]]
    new_step |= np.r_[True, frame["session"].to_numpy()[1:] != frame["session"].to_numpy()[:-1]]
    assert np.all(events[new_step] == "view")
    # Items belong to the category they are logged under.
    item_cat = np.asarray(truth.model.item_category)[frame["item"].to_numpy()]
    assert np.all(np.asarray(truth.model.category_ids)[item_cat] == frame["category"].astype(str))


def test_gap_sessionization_recovers_the_generator_sessions() -> None:
    frame, _ = generate_events(SMALL)
    stats = log_statistics(frame)
    assert len(stats["session_length"]) == frame["session"].nunique()
    # No two consecutive steps of a session share an item (they would merge into one step).
    steps_per_session = stats["session_length"].sum()
    same_item = (frame["item"].shift() == frame["item"]) & (
        frame["session"].shift() == frame["session"]
    )
    assert steps_per_session == (~same_item).sum()


def test_n_events_sets_the_size() -> None:
    config = SyntheticConfig(n_events=40_000, seed=1)
    frame, _ = generate_events(config)
    assert abs(len(frame) - 40_000) / 40_000 < 0.1
    assert config.resolved_n_users() != config.n_users


def test_true_model_is_a_valid_sim_model_with_a_rising_stay_curve() -> None:
    _, truth = generate_events(SMALL)
    model = truth.model
    assert model.n_categories == 8
    # Session-averaged stay rises with the streak: long streaks select focused sessions.
    assert np.all(np.diff(model.stay_by_streak) >= 0)
    assert model.stay_by_streak[0] < 0.35 < 0.85 < model.stay_by_streak[10]
    assert np.allclose(np.diag(model.switch_matrix), 0)
    assert np.all(model.p_buy <= model.p_cart)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("n_categories", 1),
        ("focus_alpha", 0.0),
        ("revisit_rate", 1.5),
        ("event_gap_max_s", 4000.0),
        ("n_items", 3),
    ],
)
def test_bad_config_names_the_problem(setting: str, value: float) -> None:
    with pytest.raises(UserError, match="synth"):
        from_mapping(SyntheticConfig, {setting: value}, where="synth")


def test_generate_dataset_writes_ground_truth(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "ds", SMALL)
    assert (out / GROUND_TRUTH_JSON).is_file() and (out / GROUND_TRUTH_NPZ).is_file()
    ds = load_dataset(out)
    _, expected = generate_events(SMALL)
    truth = load_ground_truth(out)
    assert truth is not None
    assert truth.config == SMALL
    for name in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(truth.model, name), getattr(expected.model, name))
    assert set(ds.categories["raw_id"].astype(str)) <= set(truth.model.category_ids)
    assert len(ds.events) == len(generate_events(SMALL)[0])


def test_load_ground_truth_absent_or_broken(tmp_path: Path) -> None:
    assert load_ground_truth(tmp_path) is None
    (tmp_path / GROUND_TRUTH_JSON).write_text("{}")
    with pytest.raises(UserError, match="only one of"):
        load_ground_truth(tmp_path)
    (tmp_path / GROUND_TRUTH_NPZ).write_bytes(b"not an npz")
    with pytest.raises(UserError, match="unreadable ground truth"):
        load_ground_truth(tmp_path)


def test_default_world_matches_the_taobao_sample(taobao_csv: Path) -> None:
    """The defaults are calibrated on the Taobao sample; these tolerances are the contract.

    Beyond the marginals, the two facts that make history informative are matched too: the
    per-streak stay rate rises (sessions differ in focus) and items are revisited.
    """
    real = log_statistics(read_taobao_frame(taobao_csv))
    frame, _ = generate_events(SyntheticConfig(n_events=200_000, seed=0))
    synth = log_statistics(frame)

    def ks(a: np.ndarray, b: np.ndarray) -> float:
        grid = np.union1d(a, b)
        fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
        fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
        return float(np.max(np.abs(fa - fb)))

    assert ks(synth["session_length"], real["session_length"]) <= 0.05
    assert synth["session_length"].mean() == pytest.approx(real["session_length"].mean(), rel=0.1)
    assert synth["continuation_rate"] == pytest.approx(real["continuation_rate"], abs=0.03)
    assert synth["streak_length"].mean() == pytest.approx(real["streak_length"].mean(), abs=0.1)
    assert ks(synth["streak_length"], real["streak_length"]) <= 0.05
    np.testing.assert_allclose(synth["stay_by_streak"], real["stay_by_streak"], atol=0.08)
    assert synth["revisit_rate"] == pytest.approx(real["revisit_rate"], abs=0.03)
    for event in ("view", "cart", "fav", "buy"):
        assert synth["event_mix"][event] == pytest.approx(real["event_mix"][event], abs=0.01)


def _streak_revisit_share(frame: pd.DataFrame) -> float:
    """Share of steps at category streak >= 3 whose item appeared earlier in the streak."""
    steps = frame[frame["event"] == "view"].reset_index(drop=True)
    new_run = (steps["session"] != steps["session"].shift()) | (
        steps["category"] != steps["category"].shift()
    )
    run = new_run.cumsum()
    streak = steps.groupby(run).cumcount() + 1
    seen_in_run = pd.DataFrame({"run": run, "item": steps["item"]}).duplicated()
    return float(seen_in_run[streak >= 3].mean())


def test_revisits_come_from_the_current_streak() -> None:
    always = _streak_revisit_share(generate_events(replace(SMALL, revisit_rate=1.0))[0])
    never = _streak_revisit_share(generate_events(replace(SMALL, revisit_rate=0.0))[0])
    # Not all: a source item equal to the previous step's (itself a revisit) is redrawn.
    assert always > 0.6
    assert never < 0.5 * always  # chance repeats in a small catalog


def test_marginal_stay_curve_matches_simulated_sessions() -> None:
    config = SyntheticConfig(focus_alpha=0.7, focus_beta=0.9, max_streak=6)
    rng = np.random.default_rng(0)
    hazard = config.hazard_curve()
    n = 200_000
    p = rng.beta(config.focus_alpha, config.focus_beta, n)
    pairs, stays = np.zeros(6), np.zeros(6)
    streak, alive, t = np.ones(n, dtype=int), np.arange(n), 1
    while len(alive):
        keep = rng.random(len(alive)) >= hazard[min(t, len(hazard)) - 1]
        alive, streak = alive[keep], streak[keep]
        stay = rng.random(len(alive)) < p[alive]
        np.add.at(pairs, np.minimum(streak, 6) - 1, 1)
        np.add.at(stays, np.minimum(streak, 6) - 1, stay)
        streak = np.where(stay, streak + 1, 1)
        t += 1
    np.testing.assert_allclose(config.stay_curve(), stays / pairs, atol=0.01)
