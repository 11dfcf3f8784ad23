"""``rlrec data prepare | stats | synth``: exit codes, one-line errors, the stats JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlrec.cli import main
from rlrec.cli.data import parse_duration
from rlrec.data.dataset import load_dataset
from rlrec.errors import EXIT_USER_ERROR, UserError

STATS_INT_KEYS = ("rows_read", "rows_dropped", "events", "users", "sessions", "items", "categories")


def test_prepare_then_stats_json_contract(
    taobao_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tb"
    code = main(
        ["data", "prepare", "--preset", "taobao", "--input", str(taobao_csv), "--out", str(out)]
    )
    assert code == 0
    assert "10,000 events kept of 10,000 read" in capsys.readouterr().out
    assert main(["data", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    for key in STATS_INT_KEYS:
        assert isinstance(stats[key], int), key
    assert stats["rows_read"] == 10_000 and stats["users"] == 114
    assert stats["rows_read"] == stats["events"] + stats["rows_dropped"]
    assert stats["session_length"]["p50"] >= 1
    assert stats["session_length"]["max"] >= stats["session_length"]["p90"]
    assert abs(sum(stats["event_mix"].values()) - 1.0) < 1e-9
    assert stats["event_mix"]["view"] > 0.8  # Taobao is mostly page views
    top = stats["top_categories"]
    assert len(top) == 10 and top[0]["events"] >= top[-1]["events"]
    assert 0.0 < stats["category_continuation_rate"] < 1.0
    assert main(["data", "stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert "category_continuation_rate" in table and "114" in table


def test_generic_prepare_with_flags_and_yaml_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.tsv"
    log.write_text("u1\ti1\t1000\tview\nu1\ti2\t61000\tbuy\nu2\ti1\t5000\tview\n")
    out = tmp_path / "g"
    args = ["data", "prepare", "--preset", "generic", "--input", str(log), "--out", str(out)]
    flags = ["--columns", "user=0,item=1,time=2,event=3", "--delimiter", "tab", "--no-header"]
    assert main([*args, *flags, "--time-unit", "ms", "--session-gap", "45s", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["vocab"]["sessions"] == 3  # u1's two events are 60 s apart, over 45 s
    assert meta["session_gap_seconds"] == 45.0
    mapping = tmp_path / "map.yaml"
    mapping.write_text(
        "columns: {user: '0', item: '1', time: '2', event: '3'}\n"
        'delimiter: "\\t"\nheader: false\ntime_unit: ms\n'
    )
    assert main([*args, "--columns", str(mapping), "--split", "1,0,0", "--force"]) == 0
    assert load_dataset(out).meta["vocab"]["sessions"] == 2  # default gap, 30 minutes


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--preset", "taobao", "--input", "MISSING.csv"], "MISSING.csv: no such file"),
        (["--preset", "taobao", "--session-gap", "30 minutes"], "--session-gap '30 minutes'"),
        (["--preset", "taobao", "--split", "0.5,0.5"], "--split '0.5,0.5'"),
        (["--preset", "diginetica"], "missing required column"),
        (["--preset", "generic"], "--preset generic needs --columns"),
        (["--preset", "generic", "--columns", "user"], "is not FIELD=COLUMN"),
        (["--preset", "taobao", "--columns", "user=a,item=b,time=c"], "only used with"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    argv: list[str],
    pattern: str,
    taobao_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    full = ["data", "prepare", "--out", str(tmp_path / "o"), *argv]
    if "--input" not in full:
        full += ["--input", str(taobao_csv)]
    assert main(full) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlrec: error: ")
    assert pattern in err
    assert not (tmp_path / "o").exists()


def test_stats_on_a_missing_dataset_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "stats", str(tmp_path / "nope")]) == EXIT_USER_ERROR
    assert "no such dataset directory" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3,pv,abc\n")
    code = "import sys; from rlrec.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "data",
            "prepare",
            "--preset",
            "taobao",
            "--input",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == EXIT_USER_ERROR
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "bad.csv line 1: column 'unix_seconds' has 'abc'" in result.stderr


def test_synth_writes_a_dataset_with_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--users", "20", "--seed", "3"]) == 0
    assert "ground truth" in capsys.readouterr().out
    ds = load_dataset(out)
    assert ds.n_users == 20
    assert any(p.name.startswith("ground_truth") for p in out.iterdir())
    assert main(["data", "synth", "--out", str(out), "--users", "0"]) == EXIT_USER_ERROR


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800.0),
        ("45s", 45.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "m", "-5m", "0s", "30 min", "1e3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UserError, match="--session-gap"):
        parse_duration(text)
