"""Hostile inputs to ``rlrec churn``: one clear line, exit 2, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from rlrec.cli import main
from tests.reliability.harness import assert_clear_error, run_hostile

DAY_S = 86_400
START_S = 1_511_568_000  # 2017-11-25


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("churn_inputs")
    rows = ["user,item,time"]
    for u in range(6):
        for d in range(0, 8, 1 + u % 3):
            rows.append(f"u{u},i{d % 4},{START_S + d * DAY_S + u * 600}")
    (root / "log.csv").write_text("\n".join(rows) + "\n")
    out = root / "data"
    argv = ["data", "prepare", "--preset", "generic", "--columns", "user=user,item=item,time=time"]
    assert (
        main([*argv, "--input", str(root / "log.csv"), "--out", str(out), "--time-unit", "s"]) == 0
    )
    return out


def _churn(data: Path, out: Path, *extra: str) -> list[str]:
    return ["churn", str(data), "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--cutoff", "2016-01-01", "--horizon-days", "7"], ["--cutoff", "outside the data"]),
        (["--cutoff", "2030-01-01", "--horizon-days", "7"], ["--cutoff", "outside the data"]),
        (["--cutoff", "2017-11-25", "--horizon-days", "7"], ["--cutoff", "no user has an event"]),
        (["--cutoff", "yesterday", "--horizon-days", "7"], ["--cutoff", "ISO 8601"]),
        (["--cutoff", "2017-11-29", "--horizon-days", "0"], ["--horizon-days", "> 0"]),
        (["--cutoff", "2017-11-29", "--horizon-days", "-3"], ["--horizon-days", "> 0"]),
        (["--cutoff", "2017-11-29", "--horizon-days", "nan"], ["--horizon-days", "> 0"]),
    ],
)
def test_bad_cutoff_and_horizon(tiny, tmp_path, capsys, extra, needles):
    out = tmp_path / "out"
    outcome = run_hostile(_churn(tiny, out, *extra), capsys)
    assert_clear_error(outcome, *needles)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_value_column_that_is_not_numeric(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    events = pd.read_parquet(data / "events.parquet")
    events["value"] = "12,50 EUR"
    events.to_parquet(data / "events.parquet")
    out = tmp_path / "out"
    argv = _churn(data, out, "--cutoff", "2017-11-29", "--horizon-days", "2")
    # The loader refuses it first (column, file, what to do); rlrec churn checks it again.
    assert_clear_error(run_hostile(argv, capsys), "'value'", "events.parquet", "prepare")
    assert not out.exists()


def test_missing_dataset_and_foreign_output(tiny, tmp_path, capsys):
    argv = _churn(
        tmp_path / "nope", tmp_path / "o", "--cutoff", "2017-11-29", "--horizon-days", "2"
    )
    assert_clear_error(run_hostile(argv, capsys), "nope")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    argv = _churn(tiny, foreign, "--cutoff", "2017-11-29", "--horizon-days", "2")
    assert_clear_error(run_hostile(argv, capsys), "mine", "rlrec did not write")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_user_date_log_without_any_covariate(tmp_path, capsys):
    # One purchase a day and no value: every session is a single event, so the return model
    # has no covariate at all. This raised a reshape traceback before; it must just work.
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["customer,date"]
    for u in range(80):
        day = int(rng.integers(0, 20))
        while day < 120:
            rows.append(f"c{u},{(pd.Timestamp('2021-01-01') + pd.Timedelta(days=day)).date()}")
            day += 1 + int(rng.geometric(0.15))
    (tmp_path / "tx.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "tx"
    prepare = ["data", "prepare", "--preset", "generic", "--columns", "user=customer,time=date"]
    assert (
        main(
            [
                *prepare,
                "--time-unit",
                "iso",
                "--input",
                str(tmp_path / "tx.csv"),
                "--out",
                str(data),
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    outcome = run_hostile(
        _churn(data, out, "--cutoff", "2021-03-01", "--horizon-days", "30"), capsys
    )
    assert outcome.kind == "ok", outcome.err
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 80 and predictions["p_return"].between(0, 1).all()
