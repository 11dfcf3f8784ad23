"""Readers: presets, column maps, CSV dialects and Parquet types -> canonical columns."""

from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from rlrec.data.dataset import load_dataset
from rlrec.data.prepare import PrepareConfig, prepare
from rlrec.data.readers import (
    ReadOptions,
    load_column_map,
    open_source,
    parse_columns,
)
from rlrec.data.schema import EVENT_CODE
from rlrec.data.sql import TimeUnit, event_code_sql
from rlrec.errors import UserError

ALL_TRAIN = PrepareConfig(split_fractions=(1.0, 0.0, 0.0))


def test_parse_columns() -> None:
    assert parse_columns("user=visitor, item=sku,time=ts,") == {
        "user": "visitor",
        "item": "sku",
        "time": "ts",
    }
    with pytest.raises(UserError, match="'user' is not FIELD=COLUMN"):
        parse_columns("user,item=sku")


def test_load_column_map_flat_and_structured(tmp_path: Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text("user: visitor\nitem: sku\ntime: 3\n")
    assert load_column_map(flat) == (
        {"user": "visitor", "item": "sku", "time": "3"},
        ReadOptions(),
    )
    full = tmp_path / "full.yaml"
    full.write_text("columns: {user: u, item: i, time: t}\ntime_unit: iso\ndelimiter: ';'\n")
    columns, options = load_column_map(full)
    assert columns == {"user": "u", "item": "i", "time": "t"}
    assert options == ReadOptions(time_unit="iso", delimiter=";", header=None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("columns: {user: u}\ntime_units: s\n")
    with pytest.raises(UserError, match="unknown setting"):
        load_column_map(bad)


def test_read_options_reject_long_delimiters() -> None:
    with pytest.raises(UserError, match="single character"):
        ReadOptions(delimiter="::")


def test_event_names_and_aliases_map_to_codes() -> None:
    con = duckdb.connect()
    names = ["pv", "View", " addtocart ", "transaction", "favourite", "buy", None, "zap", "4"]
    frame = pd.DataFrame({"e": names})  # noqa: F841 - read by DuckDB's replacement scan
    codes = [row[0] for row in con.execute(f"SELECT {event_code_sql('e')} FROM frame").fetchall()]
    view, cart, fav, buy = (EVENT_CODE[k] for k in ("view", "cart", "fav", "buy"))
    assert codes == [view, view, cart, buy, fav, buy, view, None, buy]


def test_gzip_and_crlf_taobao(tmp_path: Path) -> None:
    text = "1,10,100,pv,1511848894\r\n1,11,100,cart,1511848900\r\n2,12,101,buy,1511848999\r\n"
    path = tmp_path / "UserBehavior.csv.gz"
    with gzip.open(path, "wt", newline="") as fh:
        fh.write(text)
    ds = load_dataset(prepare([path], "taobao", tmp_path / "ds", ALL_TRAIN))
    assert ds.meta["rows"]["read"] == 3
    assert ds.events["timestamp"].tolist() == [1511848894000, 1511848900000, 1511848999000]
    assert ds.events["event"].tolist() == [EVENT_CODE["view"], EVENT_CODE["cart"], 4]


def test_taobao_preset_source_columns(taobao_csv: Path) -> None:
    source = open_source(duckdb.connect(), [taobao_csv], "taobao")
    assert source.has("category") and not source.has("session")
    assert source.notes["time_unit"] == "s"
    assert source.optional_columns == ()


def test_several_files_are_read_as_one_log(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("1,10,100,pv,1511848894\n")
    b.write_text("1,11,100,pv,1511848900\n1,10,100,pv,1511848894\n")
    ds = load_dataset(prepare([a, b], "taobao", tmp_path / "ds", ALL_TRAIN))
    assert ds.meta["rows"]["read"] == 3
    assert ds.meta["rows"]["dropped"]["exact_duplicate"] == 1  # across files
    assert ds.meta["source"]["inputs"] == [str(a), str(b)]


def test_parquet_timestamp_and_string_events(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "visitor": ["v1", "v1", "v2"],
            "sku": [7, 8, 7],
            "when": pd.to_datetime(["2020-01-01 00:00", "2020-01-01 00:01", "2020-01-02 00:00"]),
            "what": ["view", "purchase", "add_to_cart"],
        }
    )
    frame.to_parquet(tmp_path / "g.parquet", index=False)
    columns = {"user": "visitor", "item": "sku", "time": "when", "event": "what"}
    ds = load_dataset(
        prepare([tmp_path / "g.parquet"], "generic", tmp_path / "ds", ALL_TRAIN, columns=columns)
    )
    assert ds.events["timestamp"].tolist() == [1577836800000, 1577836860000, 1577923200000]
    assert ds.events["event"].tolist() == [0, EVENT_CODE["buy"], EVENT_CODE["cart"]]
    assert ds.users["raw_id"].tolist() == ["v1", "v2"]


@pytest.mark.parametrize(
    ("raw", "time_unit", "unit", "timestamp"),
    [
        ("1577836800500", None, "ms", 1577836800500),  # guessed from the magnitude
        ("1577836800.5", None, "s", 1577836800500),
        ("1577836800.5", "ms", "ms", 1577836801),  # --time-unit wins over the guess
    ],
    ids=["guessed-ms", "guessed-s", "forced-ms"],
)
def test_generic_time_units(
    tmp_path: Path, raw: str, time_unit: TimeUnit | None, unit: str, timestamp: int
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"u,i,t\n1,2,{raw}\n")
    columns = {"user": "u", "item": "i", "time": "t"}
    options = ReadOptions(time_unit=time_unit)
    ds = load_dataset(
        prepare(
            [path], "generic", tmp_path / "ds", ALL_TRAIN, columns=columns, read_options=options
        )
    )
    assert ds.meta["source"]["time_unit"] == unit
    assert ds.events["timestamp"].tolist() == [timestamp]


def test_obd_source_has_bandit_columns(obd_dir: Path) -> None:
    source = open_source(duckdb.connect(), [obd_dir / "random.csv"], "obd")
    assert source.optional_columns == ("position", "propensity", "reward")
    assert source.has("session") and not source.has("category")
