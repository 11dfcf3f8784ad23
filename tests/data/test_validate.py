"""Malformed inputs: each yields its own one-line message naming the file and what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rlrec.data.prepare import prepare
from rlrec.data.readers import ReadOptions
from rlrec.data.validate import duckdb_read_error, guess_delimiter, sniff_csv
from rlrec.errors import UserError

GOOD_TAOBAO = "1,10,100,pv,1511848894\n1,11,100,cart,1511848900\n2,12,101,buy,1511848999\n"


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _parquet(tmp: Path, frame: pd.DataFrame) -> Path:
    path = tmp / "log.parquet"
    frame.to_parquet(path, index=False)
    return path


Case = Callable[[Path], dict[str, Any]]

CASES: dict[str, tuple[Case, str]] = {
    "empty file": (
        lambda t: {"inputs": [_write(t, "e.csv", "")], "preset": "taobao"},
        r"empty file \(0 bytes\)",
    ),
    "header only": (
        lambda t: {
            "inputs": [_write(t, "h.csv", "user,item,time\n")],
            "preset": "generic",
            "columns": {"user": "user", "item": "item", "time": "time"},
        },
        r"no data rows",
    ),
    "missing file": (
        lambda t: {"inputs": [t / "nope.csv"], "preset": "taobao"},
        r"nope.csv: no such file",
    ),
    "missing column": (
        lambda t: {
            "inputs": [_write(t, "m.csv", "user,item,ts\n1,2,3\n")],
            "preset": "generic",
            "columns": {"user": "user", "item": "item", "time": "time"},
        },
        r"missing required column 'time' \(mapped to time\); the file has \[user, item, ts\]",
    ),
    "missing preset column": (
        lambda t: {
            "inputs": [_write(t, "events.csv", "timestamp,visitor,event,itemid\n1,2,view,3\n")],
            "preset": "retailrocket",
        },
        r"missing required column\(s\) visitorid for the retailrocket preset",
    ),
    "bad timestamp": (
        lambda t: {
            "inputs": [_write(t, "b.csv", GOOD_TAOBAO + "3,13,102,pv,yesterday\n")],
            "preset": "taobao",
        },
        r"b.csv line 4: column 'unix_seconds' has 'yesterday' where a number is expected",
    ),
    "unparseable iso timestamp": (
        lambda t: {
            "inputs": [
                _write(t, "i.csv", "u,i,t\n1,2,2020-01-01 10:00:00\n1,3,not a date\n1,4,\n")
            ],
            "preset": "generic",
            "columns": {"user": "u", "item": "i", "time": "t"},
            "read_options": ReadOptions(time_unit="iso"),
        },
        r"i.csv line 3: unparseable timestamp 'not a date'; expected an ISO 8601",
    ),
    "negative timestamp": (
        lambda t: {
            "inputs": [_write(t, "n.csv", GOOD_TAOBAO + "3,13,102,pv,-5\n")],
            "preset": "taobao",
        },
        r"n.csv line 4: negative timestamp \(-5000 ms\)",
    ),
    "wrong delimiter": (
        lambda t: {
            "inputs": [_write(t, "d.csv", GOOD_TAOBAO.replace(",", ";"))],
            "preset": "taobao",
        },
        r"the file looks ';'-separated: pass --delimiter ';'",
    ),
    "wrong delimiter generic": (
        lambda t: {
            "inputs": [_write(t, "g.csv", "u;i;t\n1;2;3\n")],
            "preset": "generic",
            "columns": {"user": "u", "item": "i", "time": "t"},
        },
        r"only one column found: is the delimiter right\?",
    ),
    "missing ids in every row": (
        lambda t: {
            "inputs": [_write(t, "ids.csv", "u,i,t\n,2,3\n,3,4\n")],
            "preset": "generic",
            "columns": {"user": "u", "item": "i", "time": "t"},
        },
        r"no row has a user value",
    ),
    "non-numeric id": (
        lambda t: {
            "inputs": [_write(t, "x.csv", GOOD_TAOBAO + "abc,13,102,pv,1511849999\n")],
            "preset": "taobao",
        },
        r"x.csv line 4: column 'user_id' has 'abc' where a number is expected",
    ),
    "short row": (
        lambda t: {
            "inputs": [_write(t, "s.csv", GOOD_TAOBAO + "3,13,102,pv\n")],
            "preset": "taobao",
        },
        r"s.csv line 4: 4 fields where 5 are expected",
    ),
    "unknown event types": (
        lambda t: {
            "inputs": [_write(t, "ev.csv", GOOD_TAOBAO + "3,13,1,zap,1511849999\n4,1,1,Boo,1\n")],
            "preset": "taobao",
        },
        r"ev.csv line 4: unknown event type\(s\) 'zap', 'Boo' in column 'behavior'",
    ),
    "preset does not match (header in taobao)": (
        lambda t: {
            "inputs": [_write(t, "hd.csv", "user,item,cat,behavior,ts\n" + GOOD_TAOBAO)],
            "preset": "taobao",
        },
        r"looks like a header, but taobao files have none",
    ),
    "preset does not match (taobao file as diginetica)": (
        lambda t: {"inputs": [_write(t, "tb.csv", GOOD_TAOBAO)], "preset": "diginetica"},
        r"missing required column\(s\) session_id, item_id, timeframe, eventdate",
    ),
    "preset does not match (field count)": (
        lambda t: {"inputs": [_write(t, "fc.csv", "1,2,3\n4,5,6\n")], "preset": "taobao"},
        r"line 1 has 3 ','-separated field\(s\), the taobao preset expects 5",
    ),
    "obd item context instead of log": (
        lambda t: {
            "inputs": [_write(t, "ctx.csv", ",item_id,item_feature_0\n0,0,0.5\n")],
            "preset": "obd",
        },
        r"an OBD item-context file",
    ),
    "unknown preset": (
        lambda t: {"inputs": [_write(t, "u.csv", GOOD_TAOBAO)], "preset": "tmall"},
        r"--preset 'tmall': unknown preset; choose one of taobao",
    ),
    "generic without columns": (
        lambda t: {"inputs": [_write(t, "nc.csv", "u,i,t\n1,2,3\n")], "preset": "generic"},
        r"--preset generic needs --columns",
    ),
    "unknown field in column map": (
        lambda t: {
            "inputs": [_write(t, "uf.csv", "u,i,t\n1,2,3\n")],
            "preset": "generic",
            "columns": {"user": "u", "item": "i", "time": "t", "price": "p"},
        },
        r"--columns: unknown field\(s\) price",
    ),
    "parquet float ids": (
        lambda t: {
            "inputs": [_parquet(t, pd.DataFrame({"user": [1.0], "item": [2], "time": [3]}))],
            "preset": "canonical",
        },
        r"column 'user' \(user\) has type DOUBLE, expected integer or string ids",
    ),
    "parquet string time": (
        lambda t: {
            "inputs": [_parquet(t, pd.DataFrame({"user": [1], "item": [2], "time": ["3"]}))],
            "preset": "canonical",
        },
        r"column 'time' \(time\) has type VARCHAR, expected integer milliseconds",
    ),
    "parquet boolean event": (
        lambda t: {
            "inputs": [
                _parquet(t, pd.DataFrame({"user": [1], "item": [2], "time": [3], "event": [True]}))
            ],
            "preset": "canonical",
        },
        r"column 'event' \(event\) has type BOOLEAN, expected event names or integer codes",
    ),
    "parquet missing canonical column": (
        lambda t: {
            "inputs": [_parquet(t, pd.DataFrame({"user": [1], "item": [2], "ts": [3]}))],
            "preset": "canonical",
        },
        r"missing required column\(s\) time for the canonical preset",
    ),
    "not parquet": (
        lambda t: {"inputs": [_write(t, "bad.parquet", "not parquet")], "preset": "canonical"},
        r"bad.parquet: not a readable Parquet file",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_gives_its_own_one_line_message(tmp_path: Path, name: str) -> None:
    build, pattern = CASES[name]
    kwargs = build(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=pattern) as info:
        prepare(out=out, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    assert not out.exists(), "a failed prepare must not leave a dataset behind"


def test_messages_are_distinct() -> None:
    patterns = [pattern for _, pattern in CASES.values()]
    assert len(set(patterns)) == len(patterns)


def test_partially_missing_ids_are_dropped_and_counted(tmp_path: Path) -> None:
    csv = _write(tmp_path, "p.csv", "u,i,t\n1,2,10\n,3,11\n1,,12\n1,4,\n1,2,10\n1,5,13\n")
    out = prepare(
        [csv], "generic", tmp_path / "ds", columns={"user": "u", "item": "i", "time": "t"}
    )
    import json

    rows = json.loads((out / "meta.json").read_text())["rows"]
    assert rows["read"] == 6
    assert rows["dropped"]["missing_user_id"] == 1
    assert rows["dropped"]["missing_item_id"] == 1
    assert rows["dropped"]["missing_timestamp"] == 1
    assert rows["dropped"]["exact_duplicate"] == 1
    assert rows["kept"] == 2
    assert rows["kept"] + sum(rows["dropped"].values()) == rows["read"]


def test_sniff_and_guess_delimiter(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "a\tb\tc\n1\t2\t3\n")
    shape = sniff_csv(path, ",")
    assert shape.n_fields == 1
    assert guess_delimiter(shape) == "\t"
    assert sniff_csv(path, "\t").n_fields == 3


def test_duckdb_error_translation_keeps_one_line() -> None:
    text = (
        "Invalid Input Error: something odd\nOriginal Line: x\n\n  file = /a/b.csv\n"
        "  delimiter = ,\n"
    )
    error = duckdb_read_error(Exception(text), "taobao", "integer ids")
    assert str(error).startswith("/a/b.csv: cannot read the file (Invalid Input Error: something")
    assert "\n" not in str(error)
