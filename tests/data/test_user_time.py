"""Logs with only user and time (and maybe a monetary value): preparation and the stage guards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.data.content import require_categories, require_items
from rlrec.data.dataset import load_dataset
from rlrec.data.prepare import prepare
from rlrec.data.readers import ReadOptions
from rlrec.data.schema import NO_ITEM
from rlrec.data.stats import dataset_stats
from rlrec.errors import UserError

DAY_MS = 86_400_000
NOV25 = 1_511_568_000_000  # 2017-11-25 00:00 UTC


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_user_and_unix_time_only(tmp_path: Path) -> None:
    rows = [f"u{i % 3},{NOV25 // 1000 + i * 600}" for i in range(12)]  # 10 minutes apart
    rows.append(f"u0,{NOV25 // 1000 + 5 * 86_400}")
    f = write_csv(tmp_path / "visits.csv", "uid,ts", rows)
    out = prepare(
        [f], "generic", tmp_path / "ds", columns={"user": "uid", "time": "ts"}
    )  # the time unit is guessed: seconds
    ds = load_dataset(out)
    assert (ds.has_items, ds.has_categories, ds.has_value) == (False, False, False)
    assert "value" not in ds.events.columns
    # One placeholder item, never counted as a real one.
    assert list(ds.items["raw_id"]) == [NO_ITEM]
    # Each user's visits are 30 minutes apart (not a cut): one session each, plus u0's
    # return days later, plus the sessions the time split cut in two.
    sessions = 4 + ds.meta["sessions_cut_at_split"]
    assert ds.n_users == 3 and ds.meta["vocab"]["sessions"] == sessions
    stats = dataset_stats(ds)
    assert stats["items"] == 0 and stats["categories"] == 0 and stats["top_categories"] == []
    assert stats["has_items"] is False and stats["value"] is None
    assert stats["time_range"][0] == "2017-11-25T00:00:00Z"
    with pytest.raises(UserError, match=r"has no item column: fit needs items.*rlrec churn"):
        require_items(ds, "fit")
    with pytest.raises(UserError, match="has no item column"):
        require_categories(ds, "fit")


def test_iso_dates_offsets_and_values(tmp_path: Path) -> None:
    rows = [
        "1,2017-11-25,10.5",
        "1,2017-11-25,3",  # the same day: the same session at midnight UTC
        "1,2017-11-27,",  # a purchase of unknown value
        "2,2017-11-26T10:00:00+02:00,7",  # 08:00 UTC
        "2,2017-11-26 09:00:00,NaN",  # 09:00 UTC (no offset: UTC); NaN is missing
        "3,2017-12-01,0",
    ]
    f = write_csv(tmp_path / "tx.csv", "cust,date,amount", rows)
    out = prepare(
        [f],
        "generic",
        tmp_path / "ds",
        columns={"user": "cust", "time": "date", "value": "amount"},
        read_options=ReadOptions(time_unit="iso"),
    )
    ds = load_dataset(out)
    assert (ds.has_items, ds.has_categories, ds.has_value) == (False, False, True)
    ev = ds.events.sort_values(["user", "timestamp", "value"])
    assert ev["value"].dtype == np.float64
    times = ev["timestamp"].to_numpy()
    assert times[0] == times[1] == NOV25
    assert NOV25 + DAY_MS + 8 * 3_600_000 in times and NOV25 + DAY_MS + 9 * 3_600_000 in times
    assert ev["value"].isna().sum() == 2
    assert ev.groupby("session").size().to_dict() == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1}
    assert ds.meta["value"] == {"sum": 20.5, "missing": 2}
    stats = dataset_stats(ds)
    assert stats["value"] == {"sum": 20.5, "mean": 20.5 / 4, "events_with_value": 4, "missing": 2}


@pytest.mark.parametrize("time_unit", ["iso", None])
def test_basic_format_dates_as_transaction_logs_write_them(tmp_path: Path, time_unit) -> None:
    # CDNOW's master file writes 19970101: ISO 8601's basic format, read as UTC dates with
    # --time-unit iso and guessed without it (as Unix seconds every row would be in 1970).
    rows = ["00001,20171125,11.77", "00002,20171126,12.00", "00002,20171201,77.00"]
    f = write_csv(tmp_path / "cd.csv", "customer_id,date,dollar_value", rows)
    out = prepare(
        [f],
        "generic",
        tmp_path / "ds",
        columns={"user": "customer_id", "time": "date", "value": "dollar_value"},
        read_options=ReadOptions(time_unit=time_unit),
    )
    times = sorted(load_dataset(out).events["timestamp"].tolist())
    assert times == [NOV25, NOV25 + DAY_MS, NOV25 + 6 * DAY_MS]
    bad = write_csv(tmp_path / "bad.csv", "customer_id,date", ["00001,20171301"])
    with pytest.raises(UserError, match=r"bad.csv line 2: unparseable timestamp '20171301'"):
        prepare(
            [bad],
            "generic",
            tmp_path / "bad",
            columns={"user": "customer_id", "time": "date"},
            read_options=ReadOptions(time_unit="iso"),
        )


def test_value_beside_items_and_categories_in_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user": [1, 1, 2, 2],
            "item": [10, 11, 10, 12],
            "time": pd.to_datetime(
                ["2017-11-25 10:00", "2017-11-25 10:01", "2017-11-25 11:00", "2017-11-26 11:00"]
            ),
            "category": ["a", "b", "a", "b"],
            "value": [1.0, np.nan, 2.5, 4.0],
        }
    )
    frame.to_parquet(tmp_path / "log.parquet")
    ds = load_dataset(prepare([tmp_path / "log.parquet"], "canonical", tmp_path / "ds"))
    assert (ds.has_items, ds.has_categories, ds.has_value) == (True, True, True)
    assert ds.n_items == 3 and set(ds.categories["raw_id"]) == {"a", "b"}
    assert ds.events["value"].sum() == pytest.approx(7.5)
    assert ds.events["value"].isna().sum() == 1
    require_categories(ds, "fit")  # nothing missing: no error


def test_datasets_prepared_before_the_content_record_still_load(tmp_path: Path) -> None:
    rows = [f"{i % 2},{i},{NOV25 + i * 1000}" for i in range(8)]
    f = write_csv(tmp_path / "log.csv", "user,item,time", rows)
    out = prepare(
        [f], "generic", tmp_path / "ds", columns={"user": "user", "item": "item"} | {"time": "time"}
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["content"] == {"items": True, "categories": False, "value": False}
    del meta["content"]
    (out / "meta.json").write_text(json.dumps(meta))
    old = load_dataset(out)
    assert old.has_items and not old.has_value
    assert not old.has_categories  # its category_source is 'none'
    with pytest.raises(UserError, match="has no category column: fit needs categories"):
        require_categories(old, "fit")
    require_items(old, "encoder pretraining")


def test_fit_refuses_a_user_time_dataset_before_anything_else(tmp_path: Path) -> None:
    from rlrec.models.transition import fit_sim_model

    f = write_csv(
        tmp_path / "v.csv", "u,t", [f"{i % 4},{NOV25 + i * 4_000_000}" for i in range(20)]
    )
    ds = load_dataset(prepare([f], "generic", tmp_path / "ds", columns={"user": "u", "time": "t"}))
    with pytest.raises(UserError, match="fit needs items; prepare the log with --columns"):
        fit_sim_model(ds)
