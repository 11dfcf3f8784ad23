"""The synthetic world's true return process and its oracle (issue 15, ground truth)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rlrec.config import from_mapping
from rlrec.data.dataset import PreparedDataset, load_dataset
from rlrec.data.prepare import prepare
from rlrec.errors import UserError
from rlrec.models.ground_truth import (
    DAY_MS,
    GROUND_TRUTH_JSON,
    GROUND_TRUTH_NPZ,
    ORIGIN_MS,
    RETURN_OFFSET_MS,
    GroundTruth,
    ReturnTruthConfig,
    load_ground_truth,
    oracle_return,
    sample_session_outcomes,
    session_satisfaction,
    true_model,
)
from rlrec.models.synthetic import (
    SyntheticConfig,
    expected_sessions_per_user,
    generate_dataset,
    generate_events,
)

SMALL = SyntheticConfig(n_users=80, n_categories=8, n_items=400, seed=3)
# Big enough for the process's statistics, small enough for a few seconds.
WORLD = SyntheticConfig(n_users=2500, n_categories=10, n_items=1000, seed=5)
CUTOFF_S = (ORIGIN_MS + 5 * DAY_MS) / 1000.0
HORIZON_DAYS = 3.0


def _sessions(frame: pd.DataFrame) -> pd.DataFrame:
    """Per generator session: user, start, end (ms), the satisfaction counts and z."""
    step = np.r_[
        True,
        (frame["item"].to_numpy()[1:] != frame["item"].to_numpy()[:-1])
        | (frame["session"].to_numpy()[1:] != frame["session"].to_numpy()[:-1]),
    ].cumsum()
    kind = frame["event"].astype(str)
    per_step = (
        pd.DataFrame({"session": frame["session"], "step": step, "eng": kind.isin(["fav", "cart"])})
        .groupby("step")
        .agg(session=("session", "first"), eng=("eng", "any"))
    )
    out = frame.groupby("session").agg(
        user=("user", "first"), start=("time", "min"), end=("time", "max"), n=("time", "size")
    )
    out["carts"] = (kind == "cart").groupby(frame["session"]).sum()
    out["buys"] = (kind == "buy").groupby(frame["session"]).sum()
    out["engaged"] = per_step.groupby("session")["eng"].sum()
    out["z"] = session_satisfaction(out["n"], out["engaged"], out["carts"], out["buys"])
    out["next_start"] = out.groupby("user")["start"].shift(-1)
    return out


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, GroundTruth]:
    return generate_events(WORLD)


def test_same_seed_same_process_and_other_seed_differs() -> None:
    a, truth_a = generate_events(SMALL)
    b, truth_b = generate_events(SMALL)
    pd.testing.assert_frame_equal(a, b)
    assert truth_a.activity is not None and truth_b.activity is not None
    np.testing.assert_array_equal(truth_a.activity, truth_b.activity)
    c, truth_c = generate_events(replace(SMALL, seed=4))
    assert truth_c.activity is not None
    assert not np.allclose(truth_a.activity, truth_c.activity)
    assert len(a) != len(c) or not a["time"].equals(c["time"])


def test_sessions_stay_inside_the_window_and_gaps_exceed_the_offset(world) -> None:
    frame, truth = world
    sessions = _sessions(frame)
    end_ms = ORIGIN_MS + truth.config.returns.observation_days * DAY_MS
    assert sessions["start"].max() < end_ms
    gaps = (sessions["next_start"] - sessions["end"]).dropna()
    assert gaps.min() > RETURN_OFFSET_MS  # so a 30-minute sessionization recovers sessions
    # Users' first sessions start within the spread.
    first = sessions.groupby("user")["start"].min()
    assert first.max() < ORIGIN_MS + truth.config.start_spread_days * DAY_MS


def test_churn_follows_the_last_session_satisfaction(world) -> None:
    """Sessions without a successor, early in the window (little censoring), by z quartile.

    The observed no-return share must match the true P(churn | z) averaged over the quartile
    plus the small chance of a gap longer than the rest of the window, within 4 standard
    errors; and it must fall with satisfaction.
    """
    frame, truth = world
    returns = truth.config.returns
    assert truth.activity is not None
    sessions = _sessions(frame)
    early = sessions[sessions["end"] < ORIGIN_MS + 3 * DAY_MS].copy()
    a = truth.activity[early["user"].to_numpy()]
    z = early["z"].to_numpy()
    q = 1 - returns.churn_probability(z)
    rest = (ORIGIN_MS + returns.observation_days * DAY_MS - early["end"].to_numpy()) / DAY_MS
    censored = returns.gap_survival(rest - RETURN_OFFSET_MS / DAY_MS, returns.gap_rate(a, z))
    expected_silent = 1 - q * (1 - censored)
    silent = early["next_start"].isna().to_numpy()
    quartile = np.empty(len(z), dtype=np.int64)  # by rank: z has ties (counts are discrete)
    quartile[np.argsort(z, kind="stable")] = np.arange(len(z)) * 4 // len(z)
    shares = []
    for b in range(4):
        pick = quartile == b
        observed, predicted = silent[pick].mean(), expected_silent[pick].mean()
        se = math.sqrt(predicted * (1 - predicted) / pick.sum())
        assert abs(observed - predicted) < 4 * se + 1e-3, (b, observed, predicted)
        shares.append(observed)
    assert shares[0] > 2 * shares[3]  # the least satisfying sessions lose users far more


def test_gaps_are_weibull_with_the_true_rate(world) -> None:
    """(rate * W)^k is Exp(1) when rate = a_u exp(b z): checks a_u, b and k at once.

    Only users active enough that a gap longer than the rest of the window is negligible
    (the window would censor, and bias, the long gaps).
    """
    frame, truth = world
    returns = truth.config.returns
    assert truth.activity is not None
    sessions = _sessions(frame).dropna(subset=["next_start"])
    a = truth.activity[sessions["user"].to_numpy()]
    keep = (a >= 2.0) & (sessions["end"].to_numpy() < ORIGIN_MS + 3 * DAY_MS)
    sessions, a = sessions[keep], a[keep]
    w = (sessions["next_start"] - sessions["end"] - RETURN_OFFSET_MS).to_numpy() / DAY_MS
    x = (returns.gap_rate(a, sessions["z"].to_numpy()) * w) ** returns.gap_shape
    assert len(x) > 2000
    assert abs(x.mean() - 1.0) < 0.06
    assert stats.kstest(x, "expon").statistic < 0.03
    # And the mean gap falls with activity: more active users come back sooner.
    low, high = w[a < np.median(a)], w[a >= np.median(a)]
    assert high.mean() < 0.8 * low.mean()


def test_default_log_keeps_its_size() -> None:
    """The default world keeps about the Taobao sample's 14.9 sessions per user."""
    config = SyntheticConfig()
    assert 12.0 < expected_sessions_per_user(config) < 16.0
    frame, truth = generate_events(replace(config, n_users=600))
    per_user = frame["session"].nunique() / frame["user"].nunique()
    assert 12.0 < per_user < 16.0
    assert truth.activity is not None and len(truth.activity) == 600


def test_satisfaction_formula() -> None:
    z = session_satisfaction(
        np.array([1, 10, 10]), np.array([0, 0, 2]), np.array([0, 0, 2]), np.array([0, 0, 1])
    )
    assert z.shape == (3,)
    assert z[0] < z[1] < z[2]
    # Fixed constants: the same counts give the same score in every log.
    np.testing.assert_allclose(
        session_satisfaction(np.array([1]), np.array([0]), np.array([0]), np.array([0])),
        (0.5 * math.log(2) - 1.3564) / 1.3748,
    )


def test_satisfaction_is_standardized_on_the_default_world() -> None:
    """The fixed constants are the default world's mean and sd (a fresh seed: within 0.03)."""
    config = SyntheticConfig(seed=7)
    z, duration = sample_session_outcomes(GroundTruth(true_model(config), config), 40_000, 7)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.03
    assert np.all(duration >= 0) and np.all(duration < RETURN_OFFSET_MS * 48)


def test_return_config_checks_and_probabilities() -> None:
    config = ReturnTruthConfig()
    z = np.array([-2.0, 0.0, 2.0])
    churn = config.churn_probability(z)
    assert np.all(np.diff(churn) < 0)
    np.testing.assert_allclose(churn[1], 1 / (1 + math.exp(3.5)))
    np.testing.assert_allclose(config.gap_survival(np.array([0.0, -1.0]), np.ones(2)), 1.0)
    for bad in ({"gap_shape": 0.0}, {"activity_rate": -1.0}, {"churn_slope": math.nan}):
        with pytest.raises(UserError, match="returns"):
            from_mapping(ReturnTruthConfig, bad, where="returns")
    with pytest.raises(UserError, match="observation_days"):
        from_mapping(SyntheticConfig, {"start_spread_days": 10.0}, where="synth")


def _observed(ds: PreparedDataset, cutoff_s: float, horizon_days: float) -> pd.Series:
    """Sessions that started in the window, per dataset user (30-minute gap sessions)."""
    ev = ds.events.sort_values(["user", "timestamp"])
    t = ev["timestamp"].to_numpy()
    u = ev["user"].to_numpy()
    new = np.r_[True, (u[1:] != u[:-1]) | (np.diff(t) > RETURN_OFFSET_MS)]
    lo, hi = cutoff_s * 1000, cutoff_s * 1000 + horizon_days * DAY_MS
    starts = pd.Series(t[new], index=u[new])
    return starts[(starts >= lo) & (starts < hi)].groupby(level=0).size()


def _prepare(frame: pd.DataFrame, truth: GroundTruth, out: Path) -> Path:
    """Prepare a generated frame as ``generate_dataset`` does (without drawing it again)."""
    raw = out.parent / f"{out.name}.parquet"
    frame.to_parquet(raw, index=False)
    return prepare([raw], preset="canonical", out=out, extra_files=truth.to_files())


@pytest.fixture(scope="module")
def world_dataset(world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _prepare(*world, tmp_path_factory.mktemp("returns") / "ds")


def test_oracle_is_calibrated_and_discriminates(world_dataset: Path) -> None:
    ds = load_dataset(world_dataset)
    truth = load_ground_truth(world_dataset)
    assert truth is not None
    oracle = oracle_return(truth, ds, CUTOFF_S, HORIZON_DAYS, n_paths=200)
    assert list(oracle.columns) == ["user", "p_return", "expected_sessions"]
    seen = ds.events.loc[ds.events["timestamp"] < CUTOFF_S * 1000, "user"].unique()
    assert sorted(oracle["user"]) == sorted(seen)
    actual = _observed(ds, CUTOFF_S, HORIZON_DAYS).reindex(oracle["user"]).fillna(0).to_numpy()
    returned = actual > 0
    p = oracle["p_return"].to_numpy()
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(oracle["expected_sessions"].to_numpy() >= p - 1e-12)
    # Calibration: in each decile of p_return, the return rate matches the mean p (4 SE).
    edges = np.quantile(p, np.linspace(0, 1, 11)[1:-1])
    bins = np.searchsorted(edges, p, side="right")
    for b in np.unique(bins):
        pick = bins == b
        mean_p = p[pick].mean()
        se = math.sqrt(max(mean_p * (1 - mean_p), 0.01) / pick.sum())
        assert abs(returned[pick].mean() - mean_p) < 4 * se + 0.01, (b, mean_p)
    # Expected sessions match the total that happened (sd of a sum of counts: 3%).
    expected = oracle["expected_sessions"].to_numpy()
    assert abs(expected.sum() / actual.sum() - 1) < 0.05
    auc = stats.mannwhitneyu(p[returned], p[~returned]).statistic / (
        returned.sum() * (~returned).sum()
    )
    assert auc > 0.85


def test_oracle_reads_only_the_history_before_the_cutoff(
    world, world_dataset: Path, tmp_path: Path
) -> None:
    """The log truncated at the cutoff gives the same oracle output, user by user."""
    frame, truth = world
    truncated = _prepare(frame[frame["time"] < CUTOFF_S * 1000], truth, tmp_path / "cut")
    full_ds, cut_ds = load_dataset(world_dataset), load_dataset(truncated)
    loaded = load_ground_truth(truncated)
    assert loaded is not None
    outputs = []
    for ds in (full_ds, cut_ds):
        out = oracle_return(loaded, ds, CUTOFF_S, HORIZON_DAYS, n_paths=50)
        raw_id = ds.users.set_index("user").loc[out["user"], "raw_id"].to_numpy()
        outputs.append(out.assign(user=raw_id).sort_values("user").reset_index(drop=True))
    pd.testing.assert_frame_equal(outputs[0], outputs[1], rtol=0, atol=1e-9)


def test_oracle_window_past_the_log_end_and_bad_input(world_dataset: Path) -> None:
    ds = load_dataset(world_dataset)
    truth = load_ground_truth(world_dataset)
    assert truth is not None
    after = (ORIGIN_MS + 20 * DAY_MS) / 1000
    out = oracle_return(truth, ds, after, 7.0, n_paths=10)
    assert len(out) == ds.n_users and np.all(out["p_return"] == 0)  # the process stopped
    before = (ORIGIN_MS - DAY_MS) / 1000
    assert oracle_return(truth, ds, before, 7.0).empty
    with pytest.raises(UserError, match="horizon"):
        oracle_return(truth, ds, CUTOFF_S, 0.0)
    off = replace(truth, config=replace(truth.config, returns=ReturnTruthConfig(enabled=False)))
    with pytest.raises(UserError, match="no return process"):
        oracle_return(off, ds, CUTOFF_S, 1.0)
    other = replace(truth, activity=truth.activity[:5] if truth.activity is not None else None)
    with pytest.raises(UserError, match="not the ground truth's"):
        oracle_return(other, ds, CUTOFF_S, 1.0)


def test_ground_truth_keeps_the_return_process(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "ds", SMALL)
    truth = load_ground_truth(out)
    _, expected = generate_events(SMALL)
    assert truth is not None and truth.activity is not None and expected.activity is not None
    np.testing.assert_array_equal(truth.activity, expected.activity)
    assert truth.config.returns == SMALL.returns
    payload = json.loads((out / GROUND_TRUTH_JSON).read_text())
    assert payload["config"]["returns"]["gap_shape"] == SMALL.returns.gap_shape

    # A truth written before the process existed loads with it off.
    del payload["config"]["returns"]
    (out / GROUND_TRUTH_JSON).write_text(json.dumps(payload))
    old = load_ground_truth(out)
    assert old is not None and not old.config.returns.enabled and old.activity is None

    # Corrupt parameters and activity rates: one-line errors naming the file.
    payload["config"]["returns"] = {"gap_shape": -1.0}
    (out / GROUND_TRUTH_JSON).write_text(json.dumps(payload))
    with pytest.raises(UserError, match=r"ground_truth\.json:config\.returns"):
        load_ground_truth(out)
    payload["config"]["returns"] = {"enabled": True}
    (out / GROUND_TRUTH_JSON).write_text(json.dumps(payload))
    with np.load(out / GROUND_TRUTH_NPZ) as npz:
        arrays = dict(npz)
    arrays["return_activity"] = -arrays["return_activity"]
    np.savez(out / GROUND_TRUTH_NPZ, **arrays)
    with pytest.raises(UserError, match="return_activity") as err:
        load_ground_truth(out)
    assert "\n" not in str(err.value)
