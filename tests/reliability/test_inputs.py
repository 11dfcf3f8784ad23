"""Hostile inputs to the data and model loaders (issue 14, part B).

Every case runs the CLI in-process through :func:`run_hostile` and must end in one clear line
(exit 2) that names the file, row or field, leaving nothing half-written; or, where the input
is legal but easy to get wrong (a far-future row, a BOM, seconds where milliseconds were
expected), in the right result, checked by its counts. The validation lives in the readers
and loaders, so the Python API behaves the same (a few cases check that directly).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.data.dataset import load_dataset
from rlrec.errors import UserError, quote_value
from tests.reliability.harness import Outcome, assert_clear_error, run_hostile

BASE_MS = 1_500_000_000_000  # 2017-07-14: a plausible log time
BASE_S = BASE_MS // 1000
INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Bases:
    """Small artifacts every corrupted-artifact case copies: two datasets and a SimModel."""

    dataset: Path
    other_dataset: Path
    sim: Path
    encoder: Path


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> Bases:
    import torch

    from rlrec.models.checkpoint import save_encoder, vocabulary_fingerprint
    from rlrec.models.encoder import EncoderConfig, SequenceEncoder
    from rlrec.models.synthetic import SyntheticConfig, generate_dataset
    from rlrec.models.transition import fit_sim_model

    root = tmp_path_factory.mktemp("bases")
    dataset = generate_dataset(root / "ds", SyntheticConfig(n_users=20, seed=0))
    other = generate_dataset(root / "other", SyntheticConfig(n_users=12, seed=1))
    ds = load_dataset(dataset)
    sim = fit_sim_model(ds).save(root / "sim")
    torch.manual_seed(0)
    cfg = EncoderConfig(d_model=16, n_layers=1, n_heads=2, max_len=8)
    model = SequenceEncoder(cfg, ds.n_items, ds.n_categories, ds.item_category)
    encoder = save_encoder(root / "enc", model, vocabulary_fingerprint(ds))
    return Bases(dataset=dataset, other_dataset=other, sim=sim, encoder=encoder)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def prepare_argv(preset: str, inputs: list[Path], out: Path, *extra: str) -> list[str]:
    files = [str(p) for p in inputs]
    return ["data", "prepare", "--preset", preset, "--input", *files, "--out", str(out), *extra]


GENERIC = ("--columns", "user=user,item=item,time=time")


def generic_csv(rows: list[str], header: str = "user,item,time") -> str:
    return header + "\n" + "".join(row + "\n" for row in rows)


def good_rows(n: int = 12) -> list[str]:
    """``n`` events of 3 users, one second apart, in ms."""
    return [f"{i % 3},{i},{BASE_MS + i * 1000}" for i in range(n)]


def taobao_rows(n: int = 12) -> list[str]:
    return [f"{i % 3},{i},{i % 2},pv,{BASE_S + i}" for i in range(n)]


RR_HEADER = "timestamp,visitorid,event,itemid,transactionid"


def rr_rows(n: int = 12, scale: int = 1000) -> list[str]:
    return [f"{(BASE_S + i) * scale},{i % 3},view,{i}," for i in range(n)]


DG_HEADER = "session_id;user_id;item_id;timeframe;eventdate"


def dg_rows(n: int = 12) -> list[str]:
    return [f"{i % 4};NA;{i};{i * 1000};2016-05-09" for i in range(n)]


OBD_HEADER = ",timestamp,item_id,position,click,propensity_score,user_feature_0"


def obd_rows(n: int = 6) -> list[str]:
    return [
        f"{i},2019-11-24 00:00:{i:02d}.000000+00:00,{i % 3},{i % 3 + 1},{i % 2},0.0125,a{i % 2}"
        for i in range(n)
    ]


def leftovers(folder: Path, name: str) -> list[str]:
    """Temporary or spill folders a failed write left beside ``folder / name``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was written"
    assert leftovers(out.parent, out.name) == []


# --------------------------------------------------------------------------- raw logs

InputCase = Callable[[Path], tuple[list[str], tuple[str, ...]]]
INPUT_CASES: dict[str, InputCase] = {}


def case(name: str) -> Callable[[InputCase], InputCase]:
    def register(fn: InputCase) -> InputCase:
        INPUT_CASES[name] = fn
        return fn

    return register


# Times: int64-max everywhere, huge negatives, nothing but future rows.
for _preset in ("generic", "taobao", "retailrocket"):

    def _all_future(tmp: Path, preset: str = _preset) -> tuple[list[str], tuple[str, ...]]:
        if preset == "generic":
            f = write(tmp / "log.csv", generic_csv([f"1,{i},{INT64_MAX}" for i in range(3)]))
            return prepare_argv(preset, [f], tmp / "out", *GENERIC), ("future", "--time-unit")
        if preset == "taobao":
            f = write(tmp / "log.csv", "".join(f"1,{i},1,pv,{INT64_MAX}\n" for i in range(3)))
            return prepare_argv(preset, [f], tmp / "out"), ("future", "log.csv")
        rows = [f"{INT64_MAX},1,view,{i}," for i in range(3)]
        f = write(tmp / "events.csv", generic_csv(rows, RR_HEADER))
        return prepare_argv(preset, [f], tmp / "out"), ("future", "events.csv")

    case(f"{_preset}: every time int64-max")(_all_future)

    def _min_time(tmp: Path, preset: str = _preset) -> tuple[list[str], tuple[str, ...]]:
        low = -(2**63)
        if preset == "generic":
            f = write(tmp / "log.csv", generic_csv([*good_rows(3), f"1,9,{low}"]))
            return prepare_argv(preset, [f], tmp / "out", *GENERIC), ("line 5", "negative")
        if preset == "taobao":
            f = write(
                tmp / "log.csv", "".join(r + "\n" for r in [*taobao_rows(3), f"1,9,1,pv,{low}"])
            )
            return prepare_argv(preset, [f], tmp / "out"), ("line 4", "negative")
        f = write(tmp / "events.csv", generic_csv([*rr_rows(3), f"{low},1,view,9,"], RR_HEADER))
        return prepare_argv(preset, [f], tmp / "out"), ("line 5", "negative")

    case(f"{_preset}: int64-min time")(_min_time)


@case("generic parquet: every time int64-max")
def _parquet_future(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    frame = pd.DataFrame({"user": [1, 2], "item": [3, 4], "time": [INT64_MAX, INT64_MAX]})
    frame.to_parquet(tmp / "log.parquet")
    return prepare_argv("generic", [tmp / "log.parquet"], tmp / "out", *GENERIC), ("future",)


@case("canonical parquet: int64-min time")
def _parquet_min(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    frame = pd.DataFrame({"user": [1, 2], "item": [3, 4], "time": [BASE_MS, -(2**63)]})
    frame.to_parquet(tmp / "log.parquet")
    return prepare_argv("canonical", [tmp / "log.parquet"], tmp / "out"), ("line 2", "negative")


@case("diginetica: every timeframe int64-max")
def _dg_future(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    rows = [f"1;NA;{i};{INT64_MAX};2016-05-09" for i in range(3)]
    f = write(tmp / "views.csv", generic_csv(rows, DG_HEADER))
    return prepare_argv("diginetica", [f], tmp / "out"), ("future",)


# Over-long lines: DuckDB's parallel reader drops a long last line without a word.
for _preset, _size in (("generic", 60), ("taobao", 3), ("retailrocket", 3), ("diginetica", 3)):
    for _where in ("last", "middle"):

        def _long_line(
            tmp: Path, preset: str = _preset, size: int = _size, where: str = _where
        ) -> tuple[list[str], tuple[str, ...]]:
            big = "x" * (size * 1024 * 1024)
            if preset == "generic":
                rows, bad, header, extra = (
                    good_rows(4),
                    f"1,{big},{BASE_MS}",
                    "user,item,time",
                    GENERIC,
                )
            elif preset == "taobao":
                rows, bad, header, extra = taobao_rows(4), f"1,{big},1,pv,{BASE_S}", None, ()
            elif preset == "retailrocket":
                rows, bad, header, extra = rr_rows(4), f"{BASE_MS},1,{big},1,", RR_HEADER, ()
            else:
                rows, bad, header, extra = dg_rows(4), f"1;NA;{big};1;2016-05-09", DG_HEADER, ()
            at = len(rows) if where == "last" else 2
            lines = [*rows[:at], bad, *rows[at:]]
            body = "".join(line + "\n" for line in lines)
            f = write(tmp / "log.csv", (header + "\n" if header else "") + body)
            line = at + 1 + (1 if header else 0)
            return prepare_argv(preset, [f], tmp / "out", *extra), (f"line {line}", "bytes")

        case(f"{_preset}: {_size} MB line ({_where})")(_long_line)


@case("generic: 400 KB value in an unknown event is quoted short")
def _long_event(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    rows = [f"1,2,{BASE_MS},view", f"1,3,{BASE_MS},{'e' * 400_000}"]
    f = write(tmp / "log.csv", generic_csv(rows, "user,item,time,event"))
    argv = prepare_argv(
        "generic", [f], tmp / "out", "--columns", "user=user,item=item,time=time,event=event"
    )
    return argv, ("unknown event", "characters")


@case("taobao: 400 KB value in an id column is quoted short")
def _long_id(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "log.csv", f"1,2,1,pv,{BASE_S}\n1,{'9x' * 200_000},1,pv,{BASE_S}\n")
    return prepare_argv("taobao", [f], tmp / "out"), ("line 2", "characters")


# Column maps: one column in two roles, or one role twice.
for _spec, _needles in (
    ("user=user,user=item,time=time", ("user is given twice",)),
    ("user=user,item=item,item=user,time=time", ("item is given twice",)),
    ("user=user,item=item,time=time,time=user", ("time is given twice",)),
    ("user=user,item=user,time=time", ("'user'", "both user and item")),
    ("user=user,item=item,time=time,session=user", ("both user and session",)),
    ("user=user,item=item,time=time,category=item", ("both item and category",)),
    ("user=time,item=item,time=time", ("both user and time",)),
):

    def _columns(
        tmp: Path, spec: str = _spec, needles: tuple[str, ...] = _needles
    ) -> tuple[list[str], tuple[str, ...]]:
        f = write(tmp / "log.csv", generic_csv(good_rows()))
        return prepare_argv("generic", [f], tmp / "out", "--columns", spec), needles

    case(f"--columns {_spec}")(_columns)


@case("--columns: a 30 MB column name is quoted short")
def _huge_column(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "log.csv", generic_csv(good_rows()))
    spec = f"user={'u' * 30_000_000},item=item,time=time"
    return prepare_argv("generic", [f], tmp / "out", "--columns", spec), ("30,000,000 characters",)


@case("pretrain --config: a 300 KB string for a number is quoted short")
def _huge_setting(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    # 300 KB, not 30 MB: PyYAML parses well under 1 MB/s.
    config = write(tmp / "p.yaml", f"training:\n  learning_rate: {'x' * 300_000}\n")
    argv = ["pretrain", str(tmp / "missing"), "--out", str(tmp / "out"), "--config", str(config)]
    return argv, ("p.yaml", "learning_rate", "300,000 characters")


@case("column map YAML: one column in two roles")
def _yaml_twice(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "log.csv", generic_csv(good_rows()))
    spec = write(tmp / "map.yaml", "columns: {user: user, item: user, time: time}\n")
    return prepare_argv("generic", [f], tmp / "out", "--columns", str(spec)), (
        "both user and item",
    )


@case("column map YAML: one role given twice")
def _yaml_role_twice(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "log.csv", generic_csv(good_rows()))
    spec = write(tmp / "map.yaml", "columns:\n  user: user\n  user: item\n  time: time\n")
    argv = prepare_argv("generic", [f], tmp / "out", "--columns", str(spec))
    return argv, ("map.yaml", "'user' given twice", "line 3")


@case("parquet: one column in two roles")
def _parquet_twice(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    frame = pd.DataFrame({"user": [1, 2], "item": [3, 4], "time": [BASE_MS, BASE_MS + 1]})
    frame.to_parquet(tmp / "log.parquet")
    argv = prepare_argv(
        "generic", [tmp / "log.parquet"], tmp / "out", "--columns", "user=user,item=user,time=time"
    )
    return argv, ("both user and item",)


# Open Bandit Dataset values: `data prepare --preset obd` refuses what `ope bandit` refuses.
OBD_BAD = (
    ("propensity_score", "2.5"),
    ("propensity_score", "0"),
    ("propensity_score", "-0.1"),
    ("propensity_score", "nan"),
    ("click", "7"),
    ("click", "-1"),
    ("position", "0"),
    ("item_id", "-3"),
)


def obd_file(tmp: Path, column: str, value: str) -> Path:
    rows = [row.split(",") for row in obd_rows()]
    rows[2][OBD_HEADER.split(",").index(column)] = value
    return write(tmp / "random.csv", OBD_HEADER + "\n" + "".join(",".join(r) + "\n" for r in rows))


for _column, _value in OBD_BAD:

    def _obd_prepare(
        tmp: Path, column: str = _column, value: str = _value
    ) -> tuple[list[str], tuple[str, ...]]:
        f = obd_file(tmp, column, value)
        return prepare_argv("obd", [f], tmp / "out"), ("random.csv line 4", f"column {column}")

    case(f"obd prepare: {_column}={_value}")(_obd_prepare)

    def _obd_bandit(
        tmp: Path, column: str = _column, value: str = _value
    ) -> tuple[list[str], tuple[str, ...]]:
        f = obd_file(tmp, column, value)
        return ["ope", "bandit", "--logs", str(f), "--policy", "random"], ("line 4", column)

    case(f"obd ope bandit: {_column}={_value}")(_obd_bandit)


@case("diginetica: negative timeframe")
def _dg_negative(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    rows = dg_rows(4)
    rows[2] = "2;NA;7;-5000;2016-05-09"
    f = write(tmp / "views.csv", generic_csv(rows, DG_HEADER))
    return prepare_argv("diginetica", [f], tmp / "out"), ("views.csv line 4", "timeframe", "-5000")


@case("diginetica: timeframe not a number")
def _dg_text(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    rows = dg_rows(4)
    rows[1] = "2;NA;7;soon;2016-05-09"
    f = write(tmp / "views.csv", generic_csv(rows, DG_HEADER))
    return prepare_argv("diginetica", [f], tmp / "out"), ("line 3", "timeframe", "'soon'")


# Damaged or swapped Parquet inputs.
def _parquet_log(tmp: Path) -> Path:
    frame = pd.DataFrame(
        {"user": range(40), "item": range(40), "time": [BASE_MS + i for i in range(40)]}
    )
    frame.to_parquet(tmp / "log.parquet")
    return tmp / "log.parquet"


for _damage in ("truncated", "garbage", "csv named .parquet"):

    def _bad_parquet(tmp: Path, damage: str = _damage) -> tuple[list[str], tuple[str, ...]]:
        f = _parquet_log(tmp)
        if damage == "truncated":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif damage == "garbage":
            f.write_bytes(b"\x00\x01garbage" * 100)
        else:
            f.write_text(generic_csv(good_rows()))
        return prepare_argv("generic", [f], tmp / "out", *GENERIC), ("log.parquet", "parquet")

    case(f"generic input: {_damage} parquet")(_bad_parquet)


# Damaged or mis-encoded CSV files.
def _gz_log(tmp: Path, rows: int) -> Path:
    import gzip

    blob = gzip.compress(generic_csv(good_rows(rows)).encode())
    f = tmp / "log.csv.gz"
    f.write_bytes(blob[: len(blob) // 2])
    return f


@case("generic: truncated small .csv.gz")
def _gz_small(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = _gz_log(tmp, 200)
    return prepare_argv("generic", [f], tmp / "out", *GENERIC), ("log.csv.gz", "gzip")


@case("generic: truncated large .csv.gz")
def _gz_large(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = _gz_log(tmp, 60_000)  # the first 64 KB read fine; DuckDB meets the cut
    return prepare_argv("generic", [f], tmp / "out", *GENERIC), ("log.csv.gz",)


@case("taobao: not gzip but named .csv.gz")
def _gz_fake(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "log.csv.gz", "".join(r + "\n" for r in taobao_rows()))
    return prepare_argv("taobao", [f], tmp / "out"), ("log.csv.gz", "gzip")


for _preset in ("generic", "taobao", "diginetica"):

    def _utf16(tmp: Path, preset: str = _preset) -> tuple[list[str], tuple[str, ...]]:
        text = {
            "generic": generic_csv(good_rows()),
            "taobao": "".join(r + "\n" for r in taobao_rows()),
            "diginetica": generic_csv(dg_rows(), DG_HEADER),
        }[preset]
        f = tmp / "log.csv"
        f.write_text(text, encoding="utf-16")
        extra = GENERIC if preset == "generic" else ()
        return prepare_argv(preset, [f], tmp / "out", *extra), ("log.csv", "utf-16")

    case(f"{_preset}: UTF-16 file")(_utf16)


for _name, _text, _needles in (
    ("unterminated quote", 'user,item,time\n1,"2,1500000000000\n1,3,1500000000000\n', ("line 2",)),
    ("too few fields", "user,item,time\n1,2\n1,3,1500000000000\n", ("line 2", "fields")),
    ("too many fields", "user,item,time\n1,2,1500000000000,9,9\n", ("line 2", "fields")),
    ("time not a number", "user,item,time\n1,2,1500000000000\n1,3,soon\n", ("line 3", "'soon'")),
):

    def _malformed_csv(
        tmp: Path, text: str = _text, needles: tuple[str, ...] = _needles
    ) -> tuple[list[str], tuple[str, ...]]:
        f = write(tmp / "log.csv", text)
        return prepare_argv("generic", [f], tmp / "out", *GENERIC), ("log.csv", *needles)

    case(f"generic: {_name}")(_malformed_csv)


@case("canonical input: a prepared items.parquet instead of a log")
def _items_as_log(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    pd.DataFrame({"item": [0, 1], "raw_id": ["a", "b"], "category": [0, 0]}).to_parquet(
        tmp / "events.parquet"
    )
    return prepare_argv("canonical", [tmp / "events.parquet"], tmp / "out"), ("missing", "user")


@pytest.mark.parametrize("name", sorted(INPUT_CASES))
def test_hostile_log_is_one_clear_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, needles = INPUT_CASES[name](tmp_path)
    outcome = run_hostile(argv, capsys)
    assert_clear_error(outcome, *needles)
    if "--out" in argv:
        assert_nothing_written(Path(argv[argv.index("--out") + 1]))


# --------------------------------------------------------------------------- handled logs


def prepare_ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Outcome, dict]:
    outcome = run_hostile(argv, capsys)
    assert outcome.kind == "ok", outcome.err
    out = Path(argv[argv.index("--out") + 1])
    return outcome, json.loads((out / "meta.json").read_text())


@pytest.mark.parametrize("preset", ["generic", "taobao", "retailrocket", "parquet", "iso"])
def test_far_future_rows_are_dropped_and_counted(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two rows in year 5138 and one at int64-max: dropped as future_timestamp, said so."""
    future_ms = 99_999_999_999_999
    if preset == "generic":
        rows = [*good_rows(), f"1,90,{future_ms}", f"2,91,{future_ms}", f"1,92,{INT64_MAX}"]
        f = write(tmp_path / "log.csv", generic_csv(rows))
        argv = prepare_argv(preset, [f], tmp_path / "out", *GENERIC)
    elif preset == "taobao":
        future = [f"1,90,1,pv,{future_ms // 1000}", f"2,91,1,pv,{future_ms // 1000}"]
        rows = [*taobao_rows(), *future, f"1,92,1,pv,{INT64_MAX}"]
        f = write(tmp_path / "log.csv", "".join(r + "\n" for r in rows))
        argv = prepare_argv(preset, [f], tmp_path / "out")
    elif preset == "iso":
        iso = [f"{i % 3},{i},2017-07-14 02:40:{i:02d}+00:00" for i in range(12)]
        late = ["1,90,9999-12-31 23:59:59+00:00", "2,91,5000-01-01 00:00:00+00:00"]
        rows = [*iso, *late, "1,92,99999-01-01 00:00:00+00:00"]
        f = write(tmp_path / "log.csv", generic_csv(rows))
        argv = prepare_argv("generic", [f], tmp_path / "out", *GENERIC, "--time-unit", "iso")
    elif preset == "retailrocket":
        future = [f"{future_ms},1,view,90,", f"{future_ms},2,view,91,"]
        rows = [*rr_rows(), *future, f"{INT64_MAX},1,view,92,"]
        f = write(tmp_path / "events.csv", generic_csv(rows, RR_HEADER))
        argv = prepare_argv(preset, [f], tmp_path / "out")
    else:
        times = [BASE_MS + i * 1000 for i in range(12)] + [future_ms, future_ms, INT64_MAX]
        frame = pd.DataFrame({"user": [i % 3 for i in range(15)], "item": range(15), "time": times})
        frame.to_parquet(tmp_path / "log.parquet")
        argv = prepare_argv("generic", [tmp_path / "log.parquet"], tmp_path / "out", *GENERIC)
    outcome, meta = prepare_ok(argv, capsys)
    assert meta["rows"]["read"] == 15
    assert meta["rows"]["dropped"]["future_timestamp"] == 3
    assert meta["rows"]["kept"] == 12
    assert "future_timestamp 3" in outcome.out
    # The test split is made of real events, not of the bad rows.
    assert meta["time_range_ms"][1] < meta["future_cutoff_ms"]
    assert meta["split"]["cutoffs_ms"]["test"] <= BASE_MS + 11_000


def test_retailrocket_seconds_are_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RetailRocket in seconds (a common re-export) is not read as 1970 milliseconds."""
    rows = [f"{BASE_S + i * 3600},{i % 2},view,{i}," for i in range(10)]
    f = write(tmp_path / "events.csv", generic_csv(rows, RR_HEADER))
    _, meta = prepare_ok(prepare_argv("retailrocket", [f], tmp_path / "out"), capsys)
    assert meta["source"]["time_unit"] == "s"
    assert "guessed" in meta["source"]["time_unit_source"]
    assert meta["time_range_ms"] == [BASE_MS, (BASE_S + 9 * 3600) * 1000]
    # An hour apart, every event is its own session (read as ms, 3.6 s apart, they were 2).
    assert meta["vocab"]["sessions"] == 10
    explicit = prepare_argv("retailrocket", [f], tmp_path / "ms", "--time-unit", "s")
    _, meta_s = prepare_ok(explicit, capsys)
    assert meta_s["time_range_ms"] == meta["time_range_ms"]
    assert meta_s["source"]["time_unit_source"] == "--time-unit"


def test_parquet_seconds_are_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A generic Parquet log in seconds is guessed like a CSV one; canonical stays ms."""
    frame = pd.DataFrame(
        {"user": [0, 1] * 5, "item": range(10), "time": [BASE_S + 3600 * i for i in range(10)]}
    )
    frame.to_parquet(tmp_path / "log.parquet")
    argv = prepare_argv("generic", [tmp_path / "log.parquet"], tmp_path / "out", *GENERIC)
    _, meta = prepare_ok(argv, capsys)
    assert meta["source"]["time_unit"] == "s"
    assert meta["time_range_ms"] == [BASE_MS, (BASE_S + 9 * 3600) * 1000]
    forced = prepare_argv(
        "generic", [tmp_path / "log.parquet"], tmp_path / "ms", *GENERIC, "--time-unit", "ms"
    )
    _, meta_ms = prepare_ok(forced, capsys)
    assert meta_ms["time_range_ms"] == [BASE_S, BASE_S + 9 * 3600]


def test_taobao_milliseconds_are_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"{i % 3},{i},1,pv,{BASE_MS + i * 1000}" for i in range(9)]
    f = write(tmp_path / "log.csv", "".join(r + "\n" for r in rows))
    _, meta = prepare_ok(prepare_argv("taobao", [f], tmp_path / "out"), capsys)
    assert meta["source"]["time_unit"] == "ms"
    assert meta["time_range_ms"] == [BASE_MS, BASE_MS + 8000]
    assert meta["rows"]["kept"] == 9


@pytest.mark.parametrize("preset", ["generic", "taobao", "retailrocket", "diginetica", "obd"])
def test_utf8_bom_is_stripped(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bom = "\ufeff"
    extra: tuple[str, ...] = ()
    if preset == "generic":
        text, extra, n = generic_csv(good_rows()), GENERIC, 12
    elif preset == "taobao":
        text, n = "".join(r + "\n" for r in taobao_rows()), 12
    elif preset == "retailrocket":
        text, n = generic_csv(rr_rows(), RR_HEADER), 12
    elif preset == "diginetica":
        text, n = generic_csv(dg_rows(), DG_HEADER), 12
    else:
        text, n = OBD_HEADER + "\n" + "".join(r + "\n" for r in obd_rows()), 6
    f = write(tmp_path / "log.csv", bom + text)
    _, meta = prepare_ok(prepare_argv(preset, [f], tmp_path / "out", *extra), capsys)
    assert meta["rows"]["read"] == n and meta["rows"]["kept"] == n
    plain = write(tmp_path / "plain.csv", text)
    _, meta_plain = prepare_ok(prepare_argv(preset, [plain], tmp_path / "plain", *extra), capsys)
    assert meta["vocab"] == meta_plain["vocab"]
    assert meta["time_range_ms"] == meta_plain["time_range_ms"]


def test_unreadable_category_values_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing (empty, NA, null) categories are counted in meta.json and said on stdout."""
    cats = ["3", "", "NA", "4", "null", "3"]
    rows = [f"{i % 2},{i},{BASE_MS + i * 1000},{c}" for i, c in enumerate(cats)]
    f = write(tmp_path / "log.csv", generic_csv(rows, "user,item,time,category"))
    spec = "user=user,item=item,time=time,category=category"
    outcome, meta = prepare_ok(
        prepare_argv("generic", [f], tmp_path / "out", "--columns", spec), capsys
    )
    assert meta["category_values"] == {"missing": 3, "unparseable": 0}
    assert meta["events_with_unknown_category"] == 3
    assert "3 missing" in outcome.out


def test_retailrocket_unparseable_category_is_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write(tmp_path / "events.csv", generic_csv(rr_rows(6), RR_HEADER))
    props = ["timestamp,itemid,property,value"] + [
        f"{BASE_MS},{i},categoryid,{v}" for i, v in enumerate(["10", "n552.000", "11", "x"])
    ]
    p = write(tmp_path / "item_properties_part1.csv", "\n".join(props) + "\n")
    outcome, meta = prepare_ok(prepare_argv("retailrocket", [events, p], tmp_path / "out"), capsys)
    # Items 1 and 3: a category value that is not an id; items 4 and 5: no category at all.
    assert meta["category_values"] == {"missing": 2, "unparseable": 2}
    assert meta["events_with_unknown_category"] == 4
    assert meta["vocab"]["categories"] == 3  # 10, 11 and the unknown category
    assert "2 unparseable" in outcome.out


def test_synth_records_no_deleted_temp_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run_hostile(["data", "synth", "--out", str(tmp_path / "s"), "--users", "5"], capsys)
    assert outcome.kind == "ok", outcome.err
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["source"]["inputs"] == []
    assert leftovers(tmp_path, "s") == []


def test_api_refuses_like_the_cli(tmp_path: Path) -> None:
    """The checks live in the library: prepare() raises the same one-line UserError."""
    from rlrec.data.prepare import prepare
    from rlrec.data.readers import parse_columns

    f = obd_file(tmp_path, "propensity_score", "2.5")
    with pytest.raises(UserError, match=r"random.csv line 4, column propensity_score"):
        prepare([f], "obd", tmp_path / "out")
    with pytest.raises(UserError, match="user is given twice"):
        parse_columns("user=a,user=b,time=t")
    assert_nothing_written(tmp_path / "out")


def test_quote_value_cuts_long_values() -> None:
    assert quote_value("abc") == "'abc'"
    cut = quote_value("x" * 30_000_000)
    assert len(cut) < 120 and cut.endswith("(30,000,000 characters)")
    # A message that quotes a value without the helper is still cut, as a safety net.
    assert len(str(UserError("bad " + "y" * 100_000))) <= 1010


# --------------------------------------------------------------------------- prepared datasets

DatasetDamage = Callable[[Path, Bases], tuple[str, ...]]
DATASET_DAMAGE: dict[str, DatasetDamage] = {}


def damage(name: str) -> Callable[[DatasetDamage], DatasetDamage]:
    def register(fn: DatasetDamage) -> DatasetDamage:
        DATASET_DAMAGE[name] = fn
        return fn

    return register


def _rewrite_events(ds: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    events = pd.read_parquet(ds / "events.parquet")
    change(events).to_parquet(ds / "events.parquet", index=False)


@damage("truncated events.parquet")
def _d_truncated(ds: Path, bases: Bases) -> tuple[str, ...]:
    f = ds / "events.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ("events.parquet", "not a readable parquet")


@damage("empty events.parquet")
def _d_empty(ds: Path, bases: Bases) -> tuple[str, ...]:
    (ds / "events.parquet").write_bytes(b"")
    return ("events.parquet", "not a readable parquet")


@damage("garbage items.parquet")
def _d_garbage(ds: Path, bases: Bases) -> tuple[str, ...]:
    (ds / "items.parquet").write_bytes(b"PAR1" + b"\x07" * 500)
    return ("items.parquet", "not a readable parquet")


@damage("items.parquet saved as events.parquet")
def _d_items_as_events(ds: Path, bases: Bases) -> tuple[str, ...]:
    shutil.copy(ds / "items.parquet", ds / "events.parquet")
    return ("events.parquet", "missing columns")


@damage("events.parquet of another dataset")
def _d_other_events(ds: Path, bases: Bases) -> tuple[str, ...]:
    shutil.copy(bases.other_dataset / "events.parquet", ds / "events.parquet")
    return ("events.parquet", "do not belong together")


@damage("items.parquet of another dataset")
def _d_other_items(ds: Path, bases: Bases) -> tuple[str, ...]:
    shutil.copy(bases.other_dataset / "items.parquet", ds / "items.parquet")
    return ("do not belong together",)


@damage("categories.parquet without raw_id")
def _d_categories(ds: Path, bases: Bases) -> tuple[str, ...]:
    cats = pd.read_parquet(ds / "categories.parquet").drop(columns=["raw_id"])
    cats.to_parquet(ds / "categories.parquet", index=False)
    return ("categories.parquet", "raw_id")


for _column, _value in (
    ("item", "n_items"),
    ("user", -1),
    ("category", 10_000),
    ("event", 9),
    ("split", 3),
):

    def _d_out_of_range(
        ds: Path, bases: Bases, column: str = _column, value: object = _value
    ) -> tuple[str, ...]:
        n_items = len(pd.read_parquet(ds / "items.parquet"))
        bad = n_items + 5 if value == "n_items" else value

        def change(events: pd.DataFrame) -> pd.DataFrame:
            events.loc[3, column] = bad
            return events

        _rewrite_events(ds, change)
        return ("events.parquet", f"column '{column}'", "outside")

    damage(f"events.parquet: {_column} out of range")(_d_out_of_range)


@damage("events.parquet: timestamps as strings")
def _d_strings(ds: Path, bases: Bases) -> tuple[str, ...]:
    _rewrite_events(ds, lambda e: e.assign(timestamp=e["timestamp"].astype(str)))
    return ("events.parquet", "'timestamp'", "expected integers")


@damage("events.parquet: rows dropped")
def _d_rows_dropped(ds: Path, bases: Bases) -> tuple[str, ...]:
    _rewrite_events(ds, lambda e: e.iloc[: len(e) // 2])
    return ("events.parquet", "kept")


@damage("meta.json truncated")
def _d_meta_truncated(ds: Path, bases: Bases) -> tuple[str, ...]:
    text = (ds / "meta.json").read_text()
    (ds / "meta.json").write_text(text[: len(text) // 2])
    return ("meta.json", "invalid json")


@damage("meta.json a list")
def _d_meta_list(ds: Path, bases: Bases) -> tuple[str, ...]:
    (ds / "meta.json").write_text("[1, 2]")
    return ("meta.json", "expected a json object")


@damage("meta.json binary")
def _d_meta_binary(ds: Path, bases: Bases) -> tuple[str, ...]:
    (ds / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    return ("meta.json", "invalid json")


for _key, _value, _needle in (
    ("rows", [1], "rows must be a json object"),
    ("split", "by time", "split must be a json object"),
    ("rows.read", "abc", "rows.read"),
    ("rows.kept", -5, "rows.kept"),
    ("rows.dropped", [3], "rows.dropped"),
    ("vocab.items", "1127", "vocab.items"),
):

    def _d_meta_field(
        ds: Path, bases: Bases, key: str = _key, value: object = _value, needle: str = _needle
    ) -> tuple[str, ...]:
        meta = json.loads((ds / "meta.json").read_text())
        head, _, tail = key.partition(".")
        if tail:
            meta[head][tail] = value
        else:
            meta[head] = value
        (ds / "meta.json").write_text(json.dumps(meta))
        return ("meta.json", needle)

    damage(f"meta.json {_key}={_value!r}")(_d_meta_field)


@damage("meta.json schema_version a string")
def _d_meta_version(ds: Path, bases: Bases) -> tuple[str, ...]:
    meta = json.loads((ds / "meta.json").read_text())
    meta["schema_version"] = "1"
    (ds / "meta.json").write_text(json.dumps(meta))
    return ("meta.json", "schema_version")


@damage("events.parquet a folder")
def _d_events_folder(ds: Path, bases: Bases) -> tuple[str, ...]:
    (ds / "events.parquet").unlink()
    (ds / "events.parquet").mkdir()
    return ("missing events.parquet",)


@damage("meta.json vocab disagrees")
def _d_meta_vocab(ds: Path, bases: Bases) -> tuple[str, ...]:
    meta = json.loads((ds / "meta.json").read_text())
    meta["vocab"]["items"] += 1
    (ds / "meta.json").write_text(json.dumps(meta))
    return ("items.parquet", "meta.json says")


DATASET_COMMANDS: dict[str, Callable[[Path, Path, Bases], list[str]]] = {
    "data stats": lambda ds, out, b: ["data", "stats", str(ds)],
    "fit": lambda ds, out, b: ["fit", str(ds), "--out", str(out)],
    "pretrain": lambda ds, out, b: ["pretrain", str(ds), "--out", str(out), "--epochs", "1"],
    "encoder eval": lambda ds, out, b: ["encoder", "eval", str(b.encoder), "--data", str(ds)],
    "sim validate": lambda ds, out, b: ["sim", "validate", str(b.sim), "--data", str(ds)],
    "ope replay": lambda ds, out, b: ["ope", "replay", "--data", str(ds), "--policy", "random"],
}


@pytest.mark.parametrize("command", sorted(DATASET_COMMANDS))
@pytest.mark.parametrize("name", sorted(DATASET_DAMAGE))
def test_damaged_dataset_is_one_clear_line(
    name: str, command: str, bases: Bases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(bases.dataset, ds)
    needles = DATASET_DAMAGE[name](ds, bases)
    out = tmp_path / "out"
    outcome = run_hostile(DATASET_COMMANDS[command](ds, out, bases), capsys)
    assert_clear_error(outcome, *needles)
    assert_nothing_written(out)


def test_swapped_events_do_not_give_contradictory_stats(bases: Bases, tmp_path: Path) -> None:
    """The API refuses too: a swapped events.parquet never reaches dataset_stats."""
    ds = tmp_path / "ds"
    shutil.copytree(bases.dataset, ds)
    shutil.copy(bases.other_dataset / "events.parquet", ds / "events.parquet")
    with pytest.raises(UserError, match="do not belong together"):
        load_dataset(ds)
    assert load_dataset(bases.dataset).meta["rows"]["kept"] == len(
        load_dataset(bases.dataset).events
    )


# --------------------------------------------------------------------------- SimModels

SimDamage = Callable[[Path], tuple[str, ...]]
SIM_DAMAGE: dict[str, SimDamage] = {}


def _edit_params(sim: Path, key: str, value: object) -> None:
    params = json.loads((sim / "sim_model.json").read_text())
    params[key] = value
    (sim / "sim_model.json").write_text(json.dumps(params))


for _key, _value in (
    ("engage_base_rate", "0.1"),
    ("leave_miss_factor", "abc"),
    ("engage_ceiling", True),
    ("leave_streak_start", None),
    ("leave_engaged_factor", [0.8]),
    ("engage_interest_exponent", math.nan),
    ("engage_popularity_exponent", {"value": 1}),
):

    def _s_scalar(sim: Path, key: str = _key, value: object = _value) -> tuple[str, ...]:
        _edit_params(sim, key, value)
        return ("sim_model.json", key, "finite number")

    SIM_DAMAGE[f"sim_model.json: {_key}={_value!r}"] = _s_scalar


def _s_category_ids(sim: Path) -> tuple[str, ...]:
    _edit_params(sim, "category_ids", "abc")
    return ("sim_model.json", "category_ids")


def _s_provenance(sim: Path) -> tuple[str, ...]:
    _edit_params(sim, "provenance", {"switch_matrix": "fitted"})
    return ("sim_model.json", "provenance")


def _s_info(sim: Path) -> tuple[str, ...]:
    _edit_params(sim, "info", [1, 2])
    return ("sim_model.json", "info")


def _s_json_list(sim: Path) -> tuple[str, ...]:
    (sim / "sim_model.json").write_text("[]")
    return ("sim_model.json", "json object")


def _s_json_truncated(sim: Path) -> tuple[str, ...]:
    text = (sim / "sim_model.json").read_text()
    (sim / "sim_model.json").write_text(text[: len(text) // 3])
    return ("sim_model.json", "invalid json")


def _s_npz_truncated(sim: Path) -> tuple[str, ...]:
    f = sim / "arrays.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ("arrays.npz", "fit the model again")


def _s_npz_cut_end(sim: Path) -> tuple[str, ...]:
    f = sim / "arrays.npz"
    f.write_bytes(f.read_bytes()[:-40])
    return ("arrays.npz", "fit the model again")


def _s_npz_garbage(sim: Path) -> tuple[str, ...]:
    (sim / "arrays.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 300)
    return ("arrays.npz", "fit the model again")


def _s_npz_empty(sim: Path) -> tuple[str, ...]:
    (sim / "arrays.npz").write_bytes(b"")
    return ("arrays.npz", "fit the model again")


def _npz_edit(sim: Path, name: str, value: np.ndarray | None) -> None:
    with np.load(sim / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    if value is None:
        del arrays[name]
    else:
        arrays[name] = value
    np.savez(sim / "arrays.npz", **arrays)


def _s_npz_missing(sim: Path) -> tuple[str, ...]:
    _npz_edit(sim, "p_buy", None)
    return ("arrays.npz", "p_buy")


def _s_npz_strings(sim: Path) -> tuple[str, ...]:
    _npz_edit(sim, "leave_hazard", np.array(["a", "b"]))
    return ("arrays.npz", "leave_hazard", "expected numbers")


def _s_npz_float_categories(sim: Path) -> tuple[str, ...]:
    with np.load(sim / "arrays.npz") as npz:
        n = len(npz["item_category"])
    _npz_edit(sim, "item_category", np.full(n, 0.5))
    return ("item_category",)


def _s_npz_nan(sim: Path) -> tuple[str, ...]:
    with np.load(sim / "arrays.npz") as npz:
        hazard = npz["leave_hazard"].copy()
    hazard[0] = np.nan
    _npz_edit(sim, "leave_hazard", hazard)
    return ("leave_hazard", "probabilities")


for _fn in (
    _s_category_ids,
    _s_provenance,
    _s_info,
    _s_json_list,
    _s_json_truncated,
    _s_npz_truncated,
    _s_npz_cut_end,
    _s_npz_garbage,
    _s_npz_empty,
    _s_npz_missing,
    _s_npz_strings,
    _s_npz_float_categories,
    _s_npz_nan,
):
    SIM_DAMAGE[_fn.__name__.removeprefix("_s_")] = _fn


@pytest.mark.parametrize("name", sorted(SIM_DAMAGE))
def test_damaged_sim_model_is_one_clear_line(
    name: str, bases: Bases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = tmp_path / "sim"
    shutil.copytree(bases.sim, sim)
    needles = SIM_DAMAGE[name](sim)
    argv = ["sim", "validate", str(sim), "--data", str(bases.dataset), "--sessions", "20"]
    assert_clear_error(run_hostile(argv, capsys), *needles)


@pytest.mark.parametrize("name", ["engage_base_rate='0.1'", "npz_truncated", "json_list"])
def test_report_shows_the_sim_loader_message(
    name: str, bases: Bases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = next(k for k in SIM_DAMAGE if name in k)
    shutil.copytree(bases.sim, tmp_path / "sim")
    needles = SIM_DAMAGE[key](tmp_path / "sim")
    outcome = run_hostile(["report", str(tmp_path)], capsys)
    assert outcome.kind == "ok", outcome.err
    page = (tmp_path / "report.html").read_text().lower()
    assert all(n.lower() in page for n in needles), needles


# --------------------------------------------------------------------------- encoders

EncoderDamage = Callable[[Path], tuple[str, ...]]
ENCODER_DAMAGE: dict[str, EncoderDamage] = {}


def _edit_encoder_json(enc: Path, key: str, value: object, inner: bool = False) -> None:
    payload = json.loads((enc / "encoder.json").read_text())
    (payload["encoder_config"] if inner else payload)[key] = value
    (enc / "encoder.json").write_text(json.dumps(payload))


for _key, _value, _inner, _needle in (
    ("n_items", "5", False, "n_items"),
    ("n_items", True, False, "n_items"),
    ("n_categories", 0, False, "n_categories"),
    ("encoder_config", [1], False, "encoder_config"),
    ("vocab_fingerprint", [1], False, "vocab_fingerprint"),
    ("info", "x", False, "info"),
    ("d_model", "big", True, "d_model"),
    ("d_model", 17, True, "d_model"),
    ("dropout", math.nan, True, "dropout"),
    ("max_len", -1, True, "max_len"),
):

    def _e_json(
        enc: Path,
        key: str = _key,
        value: object = _value,
        inner: bool = _inner,
        needle: str = _needle,
    ) -> tuple[str, ...]:
        _edit_encoder_json(enc, key, value, inner)
        return ("encoder.json", needle)

    ENCODER_DAMAGE[f"encoder.json: {_key}={_value!r}"] = _e_json


def _weights(enc: Path, content: bytes) -> tuple[str, ...]:
    (enc / "model.safetensors").write_bytes(content)
    return ("model.safetensors", "unreadable")


def _pickled_weights(enc: Path) -> tuple[str, ...]:
    import torch

    torch.save({"w": torch.zeros(2)}, enc / "model.safetensors")
    return ("model.safetensors", "unreadable")


ENCODER_DAMAGE.update(
    {
        "encoder.json a list": lambda enc: (
            (enc / "encoder.json").write_text("[]"),
            ("encoder.json", "json object"),
        )[1],
        "encoder.json binary": lambda enc: (
            (enc / "encoder.json").write_bytes(b"\xff\xfe\x00"),
            ("encoder.json", "utf-8"),
        )[1],
        "weights truncated": lambda enc: _weights(
            enc, (enc / "model.safetensors").read_bytes()[:100]
        ),
        "weights empty": lambda enc: _weights(enc, b""),
        "weights garbage header": lambda enc: _weights(enc, b"\xff" * 8 + b"{}"),
        "weights a torch pickle": _pickled_weights,
    }
)


@pytest.mark.parametrize("name", sorted(ENCODER_DAMAGE))
def test_damaged_encoder_is_one_clear_line(
    name: str, bases: Bases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enc = tmp_path / "enc"
    shutil.copytree(bases.encoder, enc)
    needles = ENCODER_DAMAGE[name](enc)
    argv = ["encoder", "eval", str(enc), "--data", str(bases.dataset)]
    assert_clear_error(run_hostile(argv, capsys), *needles)


def test_undamaged_encoder_base_evaluates(bases: Bases, capsys: pytest.CaptureFixture[str]) -> None:
    """The base the damage cases copy is sound: their errors come from the damage."""
    outcome = run_hostile(
        ["encoder", "eval", str(bases.encoder), "--data", str(bases.dataset)], capsys
    )
    assert outcome.kind == "ok", outcome.err
    sim = ["sim", "validate", str(bases.sim), "--data", str(bases.dataset), "--sessions", "20"]
    assert run_hostile(sim, capsys).kind == "ok"
    assert run_hostile(["data", "stats", str(bases.dataset)], capsys).kind == "ok"


BAD_EVAL_OPTIONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "knn k zero": (["--knn-k", "0"], ("--knn-k", "'0'", "positive")),
    "knn k negative in a list": (["--knn-k", "50,-3"], ("--knn-k", "-3", "positive")),
    "knn sample not a number": (["--knn-sample", "many"], ("--knn-sample", "'many'", "integers")),
    "item-knn k empty item": (["--item-knn-k", "20,,50"], ("--item-knn-k", "integers")),
    "revisit window float": (["--revisit-window", "2.5"], ("--revisit-window", "'2.5'")),
    "knn mixture weight of one": (["--knn-mixture", "0,1"], ("--knn-mixture", "[0, 1)")),
    "knn mixture negative": (["--knn-mixture", "0.1,-0.2"], ("--knn-mixture", "[0, 1)")),
    "knn mixture nan": (["--knn-mixture", "nan"], ("--knn-mixture", "'nan'", "[0, 1)")),
    "knn mixture text": (["--knn-mixture", "some"], ("--knn-mixture", "'some'", "numbers")),
}


@pytest.mark.parametrize("name", sorted(BAD_EVAL_OPTIONS))
def test_bad_encoder_eval_option_is_one_clear_line(
    name: str, bases: Bases, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, needles = BAD_EVAL_OPTIONS[name]
    argv = ["encoder", "eval", str(bases.encoder), "--data", str(bases.dataset), *extra]
    assert_clear_error(run_hostile(argv, capsys), *needles)


# --------------------------------------------------------------------------- quickstart JSON

REPORT_JSON: list[tuple[str, object]] = [
    ("evaluate.json", {"policies": "abc", "episodes": 5}),
    ("evaluate.json", {"policies": {"ppo": {"return_mean": "abc", "return_ci95": [1, 2]}}}),
    ("evaluate.json", {"policies": {"ppo": {"return_mean": 1.0, "return_ci95": "x"}}}),
    ("evaluate.json", "just a string"),
    ("evaluate.json", [1, 2]),
    (
        "evaluate.json",
        {"policies": {"ppo": {"return_mean": "1"}, "greedy_supervised": {"return_mean": "2"}}},
    ),
    ("fidelity.json", {"distributions": "abc"}),
    ("fidelity.json", {"ks_session_length": "abc", "mean_session_length": "x"}),
    ("fidelity.json", "a string"),
    ("encoder_eval.json", {"encoder": "abc"}),
    ("encoder_eval.json", {"paired": "abc"}),
    ("encoder_eval.json", {"paired": {"encoder": {"best": {"ndcg@10": {"ci95": "x"}}}}}),
    ("encoder_eval.json", {"encoder_knn": [1, 2], "encoder_knn_params": "x"}),
    ("encoder_eval.json", {"baselines": {"pop": {"ndcg@10": "x"}}}),
    ("encoder_eval.json", {"encoder": {"ndcg@10": "high"}, "baselines": {"pop": {"ndcg@10": 0.1}}}),
    ("ope_sessions.json", {"targets": {"ppo": {"estimates": "abc"}}}),
    ("ope_sessions.json", {"targets": "abc"}),
    (
        "ope_sessions.json",
        {
            "targets": {
                "ppo": {
                    "estimates": {"ips": {"value": "x", "ci95": [1, 2]}},
                    "relative_error": {"ips": "x"},
                }
            }
        },
    ),
]


@pytest.mark.parametrize(
    ("file", "payload"), REPORT_JSON, ids=[f"{f}-{i}" for i, (f, _) in enumerate(REPORT_JSON)]
)
def test_report_with_malformed_json_names_the_file(
    file: str, payload: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / file).write_text(json.dumps(payload))
    outcome = run_hostile(["report", str(tmp_path), "--json"], capsys)
    assert outcome.kind == "ok", outcome.err
    result = json.loads(outcome.out)
    page = (tmp_path / "report.html").read_text()
    assert f"{file}" in page and "malformed" in page
    # A string where a number belongs never becomes a headline number.
    for key, value in result["headline"].items():
        assert (
            value is None
            or isinstance(value, (int, float))
            or key.endswith(("baseline", "estimator", "target"))
        ), (key, value)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"{not json"])
def test_report_with_unreadable_json_is_one_line(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "evaluate.json").write_bytes(content)
    assert_clear_error(run_hostile(["report", str(tmp_path)], capsys), "evaluate.json")
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------- flags

PRETRAIN_FLAGS: list[tuple[list[str], str]] = [
    (["--lr", "nan"], "learning_rate"),
    (["--lr", "inf"], "learning_rate"),
    (["--lr=-inf"], "learning_rate"),
    (["--lr", "-0.001"], "learning_rate"),
    (["--lr", "0"], "learning_rate"),
    (["--dropout", "nan"], "dropout"),
]


@pytest.mark.parametrize(
    ("flags", "needle"), PRETRAIN_FLAGS, ids=[" ".join(f) for f, _ in PRETRAIN_FLAGS]
)
def test_pretrain_refuses_non_finite_rates(
    flags: list[str], needle: str, bases: Bases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "enc"
    argv = ["pretrain", str(bases.dataset), "--out", str(out), *flags]
    assert_clear_error(run_hostile(argv, capsys), needle)
    assert_nothing_written(out)


@pytest.mark.parametrize("value", [".nan", ".inf", "'fast'", "-1"])
def test_pretrain_config_file_refuses_bad_rates(
    value: str, bases: Bases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "p.yaml", f"training:\n  learning_rate: {value}\n")
    out = tmp_path / "enc"
    argv = ["pretrain", str(bases.dataset), "--out", str(out), "--config", str(config)]
    assert_clear_error(run_hostile(argv, capsys), "p.yaml", "learning_rate")
    assert_nothing_written(out)


CACHE_COMMANDS: list[tuple[str, list[str]]] = [
    ("train", ["train", "--cache-dir", "{cache}", "--log-dir", "{tmp}/logs", "--timesteps", "64"]),
    ("train below", ["train", "--cache-dir", "{cache}/sub", "--log-dir", "{tmp}/logs"]),
    (
        "ope sessions",
        [
            "ope",
            "sessions",
            "--simulate",
            "synthetic",
            "--target",
            "random",
            "--cache-dir",
            "{cache}",
        ],
    ),
    ("env build", ["env", "build", "synthetic", "--cache", "{cache}"]),
    (
        "env rollout",
        ["env", "rollout", "synthetic", "--cache", "{cache}/deeper", "--episodes", "1"],
    ),
]


@pytest.mark.parametrize(("name", "argv"), CACHE_COMMANDS, ids=[n for n, _ in CACHE_COMMANDS])
def test_cache_dir_that_is_a_file(
    name: str, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = write(tmp_path / "cache", "not a folder\n")
    filled = [a.format(cache=cache, tmp=tmp_path) for a in argv]
    assert_clear_error(run_hostile(filled, capsys), str(cache), "is a file")
    assert cache.read_text() == "not a folder\n"
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------------- fine-tuning


def _single_session_dataset(root: Path, categories: int) -> Path:
    """A PreparedDataset where every user has one session, with ``categories`` categories."""
    from rlrec.data.dataset import write_dataset

    rows = [
        (
            u,
            u,
            step,
            (u + step) % 6,
            ((u + step) % 6) % categories,
            0,
            BASE_MS + 1000 * (u * 10 + step),
        )
        for u in range(12)
        for step in range(4)
    ]
    events = pd.DataFrame(
        rows, columns=["user", "session", "step", "item", "category", "event", "timestamp"]
    )
    events["split"] = np.where(events["user"] < 8, 0, np.where(events["user"] < 10, 1, 2))
    items = pd.DataFrame(
        {
            "item": np.arange(6),
            "raw_id": [f"i{i}" for i in range(6)],
            "category": np.arange(6) % categories,
            "count": np.bincount(events["item"], minlength=6),
        }
    )
    raw = ["__unknown__"] if categories == 1 else [f"c{c}" for c in range(categories)]
    cats = pd.DataFrame(
        {
            "category": np.arange(categories),
            "raw_id": raw,
            "count": np.bincount(events["category"], minlength=categories),
        }
    )
    users = pd.DataFrame({"user": np.arange(12), "raw_id": [f"u{u}" for u in range(12)]})
    return write_dataset(root, events, users, items, cats, {"source": "reliability"})


FINETUNE_CASES: dict[str, Callable[[Bases, Path], tuple[list[str], tuple[str, ...]]]] = {
    "encoder from another dataset": lambda b, tmp: (
        ["finetune", str(b.encoder), "--task", "next_item", "--data", str(b.other_dataset)],
        ("vocabulary", str(b.encoder), str(b.other_dataset)),
    ),
    "labels fraction 0": lambda b, tmp: (
        [
            "finetune",
            str(b.encoder),
            "--task",
            "return",
            "--data",
            str(b.dataset),
            "--labels-fraction",
            "0",
        ],
        ("--labels-fraction", "(0, 1]"),
    ),
    "labels fraction 1.5": lambda b, tmp: (
        [
            "finetune",
            str(b.encoder),
            "--task",
            "return",
            "--data",
            str(b.dataset),
            "--labels-fraction",
            "1.5",
        ],
        ("--labels-fraction",),
    ),
    "labels fraction nan": lambda b, tmp: (
        [
            "finetune",
            str(b.encoder),
            "--task",
            "return",
            "--data",
            str(b.dataset),
            "--labels-fraction",
            "nan",
        ],
        ("--labels-fraction",),
    ),
    "horizon of zero days": lambda b, tmp: (
        [
            "finetune",
            str(b.encoder),
            "--task",
            "return",
            "--data",
            str(b.dataset),
            "--horizon-days",
            "0",
        ],
        ("--horizon-days",),
    ),
    "next_category without categories": lambda b, tmp: (
        [
            "finetune",
            str(b.encoder),
            "--task",
            "next_category",
            "--data",
            str(_single_session_dataset(tmp / "nocat", 1)),
        ],
        ("next_category", "categories", "nocat"),
    ),
    "next_new_category without categories (encoder eval --transfer)": lambda b, tmp: (
        [
            "encoder",
            "eval",
            str(b.encoder),
            "--data",
            str(_single_session_dataset(tmp / "nocat", 1)),
            "--transfer",
            "next_new_category",
        ],
        ("next_new_category", "categories"),
    ),
    "return with single-session users": lambda b, tmp: (
        [
            "finetune",
            str(b.encoder),
            "--task",
            "return",
            "--data",
            str(_single_session_dataset(tmp / "single", 3)),
        ],
        ("return", "two or more sessions", "single"),
    ),
    "horizon of zero days (encoder eval --transfer)": lambda b, tmp: (
        [
            "encoder",
            "eval",
            str(b.encoder),
            "--data",
            str(b.dataset),
            "--transfer",
            "return",
            "--horizon-days",
            "0",
        ],
        ("--horizon-days",),
    ),
    "unknown task for --transfer": lambda b, tmp: (
        ["encoder", "eval", str(b.encoder), "--data", str(b.dataset), "--transfer", "churn"],
        ("churn", "next_new_category"),
    ),
    "missing encoder": lambda b, tmp: (
        ["finetune", str(tmp / "nope"), "--task", "next_item", "--data", str(b.dataset)],
        ("nope", "rlrec pretrain"),
    ),
}


@pytest.mark.parametrize("name", sorted(FINETUNE_CASES))
def test_finetune_refusal_is_one_clear_line(
    name: str, bases: Bases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, needles = FINETUNE_CASES[name](bases, tmp_path)
    out = tmp_path / "ft"
    if argv[0] == "finetune":
        argv += ["--out", str(out), "--device", "cpu"]
    assert_clear_error(run_hostile(argv, capsys), *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--n-bootstrap", "-1"], "--n-bootstrap"),
        (["--n-folds", "0"], "--n-folds"),
        (["--target", "nosuchpolicy"], "nosuchpolicy"),
        (["--split", "nosuchsplit"], "nosuchsplit"),
    ],
)
def test_ope_sessions_on_real_logs_refuses_bad_flags(
    flags: list[str], needle: str, bases: Bases, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ope", "sessions", "--data", str(bases.dataset), "--target", "random", *flags]
    assert_clear_error(run_hostile(argv, capsys), needle)
