"""Hostile logs of visits or transactions (user, time, maybe a value; no items).

Each case runs the CLI in-process through :func:`run_hostile` and must end in one clear line
(exit 2) that names the file, row or field, with nothing written; the handled cases must
prepare and count what they kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.reliability.harness import assert_clear_error, run_hostile

USER_TIME_VALUE = ("--columns", "user=cust,time=date,value=amount")
HEADER = "cust,date,amount"


def write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def prepare_argv(inputs: list[Path], out: Path, *extra: str) -> list[str]:
    files = [str(p) for p in inputs]
    return ["data", "prepare", "--preset", "generic", "--input", *files, "--out", str(out), *extra]


def good(n: int = 6) -> list[str]:
    """``n`` purchases of 3 customers on consecutive days, ISO dates."""
    return [f"{i % 3},2017-11-{10 + i:02d},{5 + i}.50" for i in range(n)]


Case = Callable[[Path], tuple[list[str], tuple[str, ...]]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


@case("value column not numeric")
def _value_text(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "tx.csv", [*good(4), "1,2017-11-20,12.5 EUR", *good(2)])
    return prepare_argv([f], tmp / "out", *USER_TIME_VALUE), ("line 6", "amount", "12.5 EUR")


@case("value with a thousands separator")
def _value_comma(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "tx.csv", [*good(2), '2,2017-11-20,"1,250.00"'])
    return prepare_argv([f], tmp / "out", *USER_TIME_VALUE), ("line 4", "amount", "number")


@case("negative value")
def _value_negative(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "tx.csv", [*good(3), "0,2017-11-21,-20"])
    return prepare_argv([f], tmp / "out", *USER_TIME_VALUE), ("line 5", "amount", ">= 0")


@case("infinite value")
def _value_inf(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "tx.csv", [*good(3), "0,2017-11-21,inf"])
    return prepare_argv([f], tmp / "out", *USER_TIME_VALUE), ("line 5", "amount", "finite")


@case("parquet value column of text")
def _parquet_value_text(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    frame = pd.DataFrame(
        {"cust": [1, 2, 3], "date": ["2017-11-10", "2017-11-11", "2017-11-12"]}
        | {"amount": ["1.5", "two", "3"]}
    )
    frame.to_parquet(tmp / "tx.parquet")
    argv = prepare_argv([tmp / "tx.parquet"], tmp / "out", *USER_TIME_VALUE)
    return argv, ("line 2", "amount", "two")


@case("parquet value column of booleans")
def _parquet_value_bool(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    frame = pd.DataFrame({"cust": [1, 2], "date": ["2017-11-10", "2017-11-11"]})
    frame["amount"] = [True, False]
    frame.to_parquet(tmp / "tx.parquet")
    argv = prepare_argv([tmp / "tx.parquet"], tmp / "out", *USER_TIME_VALUE)
    return argv, ("amount", "value", "number")


@case("ISO times with mixed formats")
def _iso_mixed(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    rows = [*good(3), "1,2017-11-20T10:00:00+01:00,3", "2,11/21/2017,4", "2,21.11.2017,4"]
    f = write(tmp / "tx.csv", rows)
    argv = prepare_argv([f], tmp / "out", *USER_TIME_VALUE, "--time-unit", "iso")
    return argv, ("line 6", "11/21/2017", "ISO 8601", "2 row(s)")


@case("--time-unit iso on a numeric column")
def _iso_on_numbers(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "tx.csv", [f"{i % 3},{1_511_568_000 + i * 86_400},1" for i in range(4)])
    argv = prepare_argv([f], tmp / "out", *USER_TIME_VALUE, "--time-unit", "iso")
    return argv, ("line 2", "1511568000", "--time-unit s")


@case("parquet numeric time with --time-unit iso")
def _parquet_iso_numbers(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    frame = pd.DataFrame({"cust": [1, 2], "date": [1_511_568_000, 1_511_654_400]})
    frame.to_parquet(tmp / "tx.parquet")
    argv = prepare_argv(
        [tmp / "tx.parquet"], tmp / "out", "--columns", "user=cust,time=date", "--time-unit", "iso"
    )
    return argv, ("date", "iso")


@case("no time column mapped")
def _no_time(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "tx.csv", good(3))
    return prepare_argv([f], tmp / "out", "--columns", "user=cust,value=amount"), ("time",)


@case("--derive-categories without items")
def _derive_without_items(tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    f = write(tmp / "tx.csv", good(4))
    argv = prepare_argv([f], tmp / "out", *USER_TIME_VALUE, "--derive-categories")
    return argv, ("--derive-categories", "item")


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_transaction_log_is_one_clear_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, needles = CASES[name](tmp_path)
    outcome = run_hostile(argv, capsys)
    assert_clear_error(outcome, *needles)
    out = Path(argv[argv.index("--out") + 1])
    assert not out.exists(), f"{out} was written"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


@pytest.fixture(scope="module")
def user_time_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlrec.cli import main

    tmp = tmp_path_factory.mktemp("user_time")
    f = write(tmp / "tx.csv", [*good(9), "1,2017-11-25,", "2,2017-11-26,NaN"])
    out = tmp / "ds"
    assert main(prepare_argv([f], out, *USER_TIME_VALUE)) == 0
    return out


def test_missing_and_nan_values_are_kept_and_counted(
    user_time_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.loads((user_time_dataset / "meta.json").read_text())
    assert meta["content"] == {"items": False, "categories": False, "value": True}
    assert meta["value"]["missing"] == 2
    assert meta["value"]["sum"] == pytest.approx(sum(5.5 + i for i in range(9)))
    outcome = run_hostile(["data", "stats", str(user_time_dataset)], capsys)
    assert outcome.kind == "ok"
    assert "2 missing" in outcome.out and "items" not in outcome.out.split("no items")[0]


STAGES: dict[str, Callable[[Path, Path], list[str]]] = {
    "fit": lambda ds, out: ["fit", str(ds), "--out", str(out)],
    "pretrain": lambda ds, out: ["pretrain", str(ds), "--out", str(out)],
    "sim validate": lambda ds, out: ["sim", "validate", str(out), "--data", str(ds)],
    "ope sessions": lambda ds, out: [
        "ope",
        "sessions",
        "--data",
        str(ds),
        "--target",
        "popular",
    ],
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_that_needs_items_refuses_a_user_time_log(
    stage: str, user_time_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    if stage == "sim validate":  # needs a SimModel first: any small one will do
        from tests.envs.conftest import make_sim_model

        make_sim_model().save(out)
    outcome = run_hostile(STAGES[stage](user_time_dataset, out), capsys)
    assert_clear_error(outcome, "has no item column", "item=COL", "rlrec churn")
    if stage != "sim validate":
        assert not out.exists()
