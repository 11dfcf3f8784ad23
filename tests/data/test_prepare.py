"""The preparation pipeline, checked against counts computed independently with pandas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rlrec.data.prepare as prepare_module
from rlrec.data.dataset import load_dataset
from rlrec.data.prepare import DROP_REASONS, PrepareConfig, prepare
from rlrec.data.schema import EVENT_CODE, EVENT_COLUMNS, SCHEMA_VERSION, UNKNOWN_CATEGORY
from rlrec.data.stats import category_continuation_rate
from rlrec.errors import UserError

GAP_MS = 30 * 60 * 1000
TAOBAO_EVENTS = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}


def _lower_quantile(ts: np.ndarray, q: float) -> int:
    """The inverted-CDF quantile: the smallest value with at least a q share at or below it."""
    return int(np.quantile(ts, q, method="inverted_cdf"))


def _gap_sessions(frame: pd.DataFrame, gap_ms: int) -> pd.Series:
    """Independent sessionization: sort by user and time, cut where the gap exceeds gap_ms."""
    frame = frame.sort_values(["user", "ts"], kind="stable")
    gap = frame.groupby("user")["ts"].diff()
    new = gap.isna() | (gap > gap_ms) | (frame["split"] != frame.groupby("user")["split"].shift())
    return new.cumsum().reindex(frame.index)


def _check_layout(ds_path: Path) -> pd.DataFrame:
    ds = load_dataset(ds_path)
    ev = ds.events
    for column, dtype in EVENT_COLUMNS.items():
        assert str(ev[column].dtype) == dtype, column
    # Sorted by (session, step); steps 0..n-1 in every session; session ids 0..S-1.
    keys = ev[["session", "step"]].to_numpy()
    assert (np.diff(keys[:, 0]) >= 0).all()
    first = np.r_[True, keys[1:, 0] != keys[:-1, 0]]
    expected_step = np.arange(len(ev)) - np.maximum.accumulate(
        np.where(first, np.arange(len(ev)), 0)
    )
    np.testing.assert_array_equal(keys[:, 1], expected_step)
    sessions = ev["session"].unique()
    np.testing.assert_array_equal(np.sort(sessions), np.arange(len(sessions)))
    # Session ids ordered by (user, start time).
    starts = ev.groupby("session").agg(user=("user", "first"), start=("timestamp", "min"))
    order = starts.sort_values(["user", "start"], kind="stable").index.to_numpy()
    np.testing.assert_array_equal(order, np.arange(len(starts)))
    # One user and one split per session.
    assert (ev.groupby("session")["user"].nunique() == 1).all()
    assert (ev.groupby("session")["split"].nunique() == 1).all()
    # Contiguous vocabularies.
    np.testing.assert_array_equal(ds.users["user"], np.arange(ds.n_users))
    np.testing.assert_array_equal(ds.items["item"], np.arange(ds.n_items))
    np.testing.assert_array_equal(ds.categories["category"], np.arange(ds.n_categories))
    assert ds.items["count"].sum() == len(ev) == ds.categories["count"].sum()
    rows = ds.meta["rows"]
    assert set(rows["dropped"]) == set(DROP_REASONS)
    assert rows["kept"] + sum(rows["dropped"].values()) == rows["read"]
    assert rows["kept"] == len(ev)
    return ev


def test_taobao_sample_counts_match_an_independent_computation(
    taobao_csv: Path, tmp_path: Path
) -> None:
    out = prepare([taobao_csv], "taobao", tmp_path / "tb")
    ev = _check_layout(out)
    ds = load_dataset(out)

    raw = pd.read_csv(taobao_csv, header=None, names=["user", "item", "cat", "behavior", "s"])
    assert len(raw) == 10_000
    raw["ts"] = raw["s"] * 1000
    dedup = raw.drop_duplicates()
    assert ds.meta["rows"]["read"] == len(raw)
    assert ds.meta["rows"]["dropped"]["exact_duplicate"] == len(raw) - len(dedup)
    assert ds.n_users == raw["user"].nunique() == 114
    assert ds.n_items == dedup["item"].nunique()
    assert ds.n_categories == dedup["cat"].nunique()

    ts = dedup["ts"].to_numpy()
    valid_start, test_start = _lower_quantile(ts, 0.8), _lower_quantile(ts, 0.9)
    assert ds.meta["split"]["cutoffs_ms"] == {"valid": valid_start, "test": test_start}
    dedup = dedup.assign(split=np.where(ts < valid_start, 0, np.where(ts < test_start, 1, 2)))
    sessions = _gap_sessions(dedup, GAP_MS)
    assert ds.meta["vocab"]["sessions"] == sessions.nunique() == ev["session"].nunique()
    uncut = _gap_sessions(dedup.assign(split=0), GAP_MS).nunique()
    assert ds.meta["sessions_cut_at_split"] == sessions.nunique() - uncut
    for code, name in enumerate(("train", "valid", "test")):
        assert ds.meta["split"][name]["events"] == int((dedup["split"] == code).sum())
        assert ds.meta["split"][name]["sessions"] == sessions[dedup["split"] == code].nunique()
    assert ev.loc[ev["split"] == 0, "timestamp"].max() < ev.loc[ev["split"] > 0, "timestamp"].min()

    # Raw ids round-trip: joining the vocabularies back gives the deduplicated log.
    back = pd.DataFrame(
        {
            "user": ds.users["raw_id"].to_numpy()[ev["user"]].astype(np.int64),
            "item": ds.items["raw_id"].to_numpy()[ev["item"]].astype(np.int64),
            "cat": ds.categories["raw_id"].to_numpy()[ev["category"]].astype(np.int64),
            "event": ev["event"].to_numpy(),
            "ts": ev["timestamp"].to_numpy(),
        }
    )
    expected = dedup.assign(event=dedup["behavior"].map(TAOBAO_EVENTS).map(EVENT_CODE))[
        ["user", "item", "cat", "event", "ts"]
    ]
    cols = ["user", "ts", "event", "item", "cat"]
    pd.testing.assert_frame_equal(
        back.sort_values(cols).reset_index(drop=True),
        expected.sort_values(cols).reset_index(drop=True).astype(back.dtypes.to_dict()),
    )
    # Vocabularies sort numerically by raw id.
    assert ds.users["raw_id"].astype(np.int64).is_monotonic_increasing
    assert ds.meta["schema_version"] == SCHEMA_VERSION
    assert ds.meta["category_source"] == "data"


def test_diginetica_sample_uses_given_sessions(diginetica_csv: Path, tmp_path: Path) -> None:
    out = prepare([diginetica_csv], "diginetica", tmp_path / "dg")
    ev = _check_layout(out)
    ds = load_dataset(out)
    raw = pd.read_csv(diginetica_csv, sep=";", na_values=["NA"])
    raw["ts"] = (
        pd.to_datetime(raw["eventdate"]).astype("datetime64[ms]").astype(np.int64)
        + raw["timeframe"]
    )
    # A session's user is its logged-in user_id (if any row has one), else the session.
    known = raw.groupby("session_id")["user_id"].transform("max")
    raw["user"] = (
        known.astype("Int64")
        .astype(str)
        .where(known.notna(), "session-" + raw["session_id"].astype(str))
    )
    dedup = raw.drop_duplicates(["session_id", "user", "item_id", "ts"])
    assert ds.meta["rows"]["read"] == len(raw)
    assert ds.meta["rows"]["kept"] == len(dedup)
    ts = dedup["ts"].to_numpy()
    valid_start, test_start = _lower_quantile(ts, 0.8), _lower_quantile(ts, 0.9)
    split = np.where(ts < valid_start, 0, np.where(ts < test_start, 1, 2))
    expected_sessions = len(set(zip(dedup["session_id"], split, strict=True)))
    assert ds.meta["vocab"]["sessions"] == expected_sessions
    assert ds.n_users == dedup["user"].nunique()
    assert set(ds.users["raw_id"]) == set(dedup["user"])
    assert ds.n_items == dedup["item_id"].nunique()
    # No categories at all: every event gets the explicit unknown category.
    assert ds.categories["raw_id"].tolist() == [UNKNOWN_CATEGORY]
    assert (ev["category"] == 0).all()
    assert ds.meta["category_source"] == "none"
    assert ds.meta["sessionized_by"] == "session_id"


def test_diginetica_derived_categories_are_deterministic_and_cohesive(
    diginetica_csv: Path, tmp_path: Path
) -> None:
    config = PrepareConfig(derive_categories=True, seed=7)
    a = load_dataset(prepare([diginetica_csv], "diginetica", tmp_path / "a", config))
    b = load_dataset(prepare([diginetica_csv], "diginetica", tmp_path / "b", config))
    pd.testing.assert_frame_equal(a.events, b.events)
    assert a.meta["category_source"] == "cooccurrence"
    assert a.n_categories > 2
    ev = a.events
    args = (ev["session"].to_numpy(), ev["item"].to_numpy())
    cat = ev["category"].to_numpy()
    unknown = int(a.categories.index[a.categories["raw_id"] == UNKNOWN_CATEGORY][0])
    rate, n = category_continuation_rate(*args, cat, unknown)
    # Shuffling the item -> category map destroys what the derivation found.
    rng = np.random.default_rng(0)
    perm = rng.permutation(a.n_items)
    shuffled = a.item_category[perm][ev["item"].to_numpy()]
    rate_shuffled, _ = category_continuation_rate(*args, shuffled, unknown)
    assert rate is not None and rate_shuffled is not None and n > 100
    assert rate > rate_shuffled + 0.3


def test_min_item_count_and_min_session_length_are_counted(
    taobao_csv: Path, tmp_path: Path
) -> None:
    config = PrepareConfig(min_item_count=2, min_session_length=2)
    ds = load_dataset(prepare([taobao_csv], "taobao", tmp_path / "f", config))
    raw = pd.read_csv(taobao_csv, header=None, names=["user", "item", "cat", "b", "s"])
    dedup = raw.drop_duplicates()
    rare = dedup["item"].map(dedup["item"].value_counts()) < 2
    assert ds.meta["rows"]["dropped"]["min_item_count"] == int(rare.sum())
    assert ds.meta["rows"]["dropped"]["min_session_length"] > 0
    assert (ds.events.groupby("session").size() >= 2).all()
    assert (ds.events.groupby("item").size() >= 1).all()
    rows = ds.meta["rows"]
    assert rows["kept"] + sum(rows["dropped"].values()) == rows["read"] == 10_000


def test_obd_files_load_with_the_obd_preset(obd_dir: Path, tmp_path: Path) -> None:
    files = [obd_dir / "random.csv", obd_dir / "bts.csv"]
    ds = load_dataset(prepare(files, "obd", tmp_path / "obd"))
    raw = pd.concat([pd.read_csv(f, index_col=0) for f in files])
    assert ds.meta["rows"]["read"] == len(raw) == 20_000
    assert len(ds.events) == 20_000
    assert ds.n_items == raw["item_id"].nunique() == 80
    assert ds.meta["vocab"]["sessions"] == 20_000  # one logged round per session
    ev = ds.events
    assert ev["propensity"].dtype == np.float64 and ev["position"].dtype == np.int16
    assert ev["reward"].sum() == raw["click"].sum()
    assert (ev["event"] == EVENT_CODE["click"]).sum() == raw["click"].sum()
    assert np.isclose(ev["propensity"].sum(), raw["propensity_score"].sum())
    item_raw = ds.items["raw_id"].astype(int).to_numpy()
    np.testing.assert_array_equal(
        np.bincount(item_raw[ev["item"]], minlength=80),
        np.bincount(raw["item_id"], minlength=80),
    )


def test_retailrocket_joins_the_latest_category(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1000,1,view,10,\n1500,1,addtocart,10,\n2000,1,transaction,10,99\n"
        "5000,2,view,11,\n5000,2,view,11,\n9000,2,view,12,\n"
    )
    props = tmp_path / "item_properties_part1.csv"
    props.write_text(
        "timestamp,itemid,property,value\n"
        "1,10,categoryid,7\n2,10,categoryid,8\n1,11,categoryid,7\n1,11,available,1\n"
    )
    ds = load_dataset(prepare([events, props], "retailrocket", tmp_path / "rr"))
    assert ds.meta["rows"]["read"] == 6
    assert ds.meta["rows"]["dropped"]["exact_duplicate"] == 1
    item_cat = ds.categories["raw_id"].to_numpy()[ds.items["category"]]
    cats = dict(zip(ds.items["raw_id"], item_cat, strict=True))
    assert cats == {"10": "8", "11": "7", "12": UNKNOWN_CATEGORY}
    assert ds.events["event"].tolist()[:3] == [EVENT_CODE["view"], EVENT_CODE["cart"], 4]
    assert ds.meta["events_with_unknown_category"] == 1


def test_generic_csv_with_iso_times_and_header_free_positions(tmp_path: Path) -> None:
    iso = tmp_path / "iso.csv"
    iso.write_text(
        "who;what;when;kind\na;x;2020-01-01T10:00:00Z;view\na;y;2020-01-01T10:10:00Z;buy\n"
    )
    ds = load_dataset(
        prepare(
            [iso],
            "generic",
            tmp_path / "g",
            PrepareConfig(split_fractions=(1.0, 0.0, 0.0)),
            columns={"user": "who", "item": "what", "time": "when", "event": "kind"},
            read_options=prepare_module.ReadOptions(delimiter=";"),
        )
    )
    assert ds.events["timestamp"].tolist() == [1577872800000, 1577873400000]
    assert ds.meta["source"]["time_unit"] == "iso"
    assert ds.meta["vocab"]["sessions"] == 1
    plain = tmp_path / "plain.csv"
    plain.write_text("u1,i1,1577872800\nu1,i2,1577880000\n")
    ds2 = load_dataset(
        prepare(
            [plain],
            "generic",
            tmp_path / "g2",
            columns={"user": "0", "item": "1", "time": "2"},
            read_options=prepare_module.ReadOptions(header=False),
        )
    )
    assert ds2.meta["source"]["time_unit"] == "s"  # guessed from the magnitude
    assert ds2.meta["vocab"]["sessions"] == 2  # two hours apart
    assert ds2.categories["raw_id"].tolist() == [UNKNOWN_CATEGORY]


def test_canonical_parquet_keeps_optional_columns_and_extra_files(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user": [5, 5, 6],
            "item": [1, 2, 1],
            "time": [1000, 2000, 3000],
            "category": ["a", "b", "a"],
            "event": [0, 4, 2],
            "session": [0, 0, 1],
            "position": [1, 2, 3],
            "propensity": [0.5, 0.25, 0.125],
            "reward": [0.0, 1.0, 0.0],
        }
    )
    frame.to_parquet(tmp_path / "c.parquet", index=False)
    out = prepare(
        [tmp_path / "c.parquet"],
        "canonical",
        tmp_path / "ds",
        PrepareConfig(split_fractions=(1.0, 0.0, 0.0)),
        extra_files={"truth.json": b"{}"},
    )
    ds = load_dataset(out)
    assert (out / "truth.json").read_bytes() == b"{}"
    assert ds.events["event"].tolist() == [0, 4, 2]
    assert ds.events["propensity"].tolist() == [0.5, 0.25, 0.125]
    assert ds.events["position"].dtype == np.int16 and ds.events["reward"].dtype == np.float32
    assert (ds.events["split"] == 0).all()
    assert ds.meta["split"]["cutoffs_ms"]["valid"] == 3001


def test_a_crash_mid_write_leaves_no_dataset(
    taobao_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    prepare([taobao_csv], "taobao", out)
    before = (out / "meta.json").read_text()

    def crash(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_module, "_write_tables", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare([taobao_csv], "taobao", out, PrepareConfig(min_item_count=3), force=True)
    assert (out / "meta.json").read_text() == before  # the old dataset is intact
    with pytest.raises(RuntimeError):
        prepare([taobao_csv], "taobao", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary leftovers


def test_schema_version_is_checked_on_load(taobao_csv: Path, tmp_path: Path) -> None:
    out = prepare([taobao_csv], "taobao", tmp_path / "ds")
    meta = json.loads((out / "meta.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="schema_version"):
        load_dataset(out)


def test_session_straddling_the_cutoff_is_cut_in_two(tmp_path: Path) -> None:
    # One user, events a minute apart: one session by gap, cut by the 50% time quantile.
    times = [i * 60_000 for i in range(10)]
    frame = pd.DataFrame({"user": [1] * 10, "item": list(range(10)), "time": times})
    frame.to_parquet(tmp_path / "s.parquet", index=False)
    config = PrepareConfig(split_fractions=(0.5, 0.5, 0.0))
    ds = load_dataset(prepare([tmp_path / "s.parquet"], "canonical", tmp_path / "ds", config))
    assert ds.meta["sessions_cut_at_split"] == 1
    assert ds.meta["vocab"]["sessions"] == 2
    assert ds.events.groupby("session")["step"].min().tolist() == [0, 0]
    assert ds.meta["split"]["train"]["events"] == 4  # times below the cut-off (the 4th value)


def test_progress_reports_every_stage_in_order(taobao_csv: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    prepare([taobao_csv], "taobao", tmp_path / "ds", progress=seen.append)
    assert tuple(seen) == prepare_module.STAGES


def test_gap_is_configurable(taobao_csv: Path, tmp_path: Path) -> None:
    short = load_dataset(
        prepare([taobao_csv], "taobao", tmp_path / "a", PrepareConfig(session_gap_seconds=60))
    )
    long = load_dataset(prepare([taobao_csv], "taobao", tmp_path / "b"))
    assert short.meta["vocab"]["sessions"] > long.meta["vocab"]["sessions"]
    assert short.meta["session_gap_seconds"] == 60


def test_bad_config_is_a_user_error() -> None:
    with pytest.raises(UserError, match="split fractions"):
        PrepareConfig(split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="positive duration"):
        PrepareConfig(session_gap_seconds=0)


def test_an_impossible_output_folder_is_a_user_error(taobao_csv: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"a-file: is a file, so .* cannot be created"):
        prepare([taobao_csv], "taobao", blocker / "ds")
