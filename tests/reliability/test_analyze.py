"""``rlrec analyze`` against hostile inputs: every case one clear line, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlrec.fsutil import write_marker
from tests.analytics.conftest import DAY_MS, T0, write_log
from tests.reliability.harness import assert_clear_error, run_hostile


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analyze_inputs")
    rng = np.random.default_rng(0)
    n = 600
    user = rng.integers(0, 20, n)
    six_days = T0 + rng.integers(0, 6 * DAY_MS, n)
    out = {}
    out["six_days"] = write_log(root / "six_days", user, rng.integers(0, 4, n), six_days).path
    out["no_categories"] = write_log(
        root / "no_categories", user, np.zeros(n, dtype=int), six_days, categories=["__unknown__"]
    ).path
    one_day = T0 + rng.integers(0, DAY_MS // 2, n)
    out["one_day"] = write_log(root / "one_day", user, rng.integers(0, 4, n), one_day).path
    return out


CASES = [
    ("six_days", ["--period", "30d"], ("six_days", "shorter than the period", "--period")),
    ("six_days", ["--period", "3d"], ("2 periods", "at least 4", "--period")),
    ("one_day", [], ("one_day", "shorter than the period", "e.g. 1h")),
    ("no_categories", [], ("no_categories", "known categor", "--derive-categories")),
    ("six_days", ["--period", "soon"], ("--period", "1d, 1w")),
    ("six_days", ["--period", "0h"], ("--period", "positive")),
    ("six_days", ["--top-k", "1"], ("--top-k",)),
    ("six_days", ["--k", "0"], ("--k",)),
]


@pytest.mark.parametrize(("log", "extra", "needles"), CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(
    logs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    log: str,
    extra: list[str],
    needles: tuple[str, ...],
) -> None:
    out = tmp_path / "analysis"
    outcome = run_hostile(["analyze", str(logs[log]), "--out", str(out), *extra], capsys)
    assert_clear_error(outcome, *needles)
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporary sibling left either


def test_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run_hostile(["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "a")], capsys)
    assert_clear_error(outcome, "nope", "rlrec data prepare")


@pytest.mark.parametrize("force", [False, True])
def test_an_existing_output_is_refused_untouched(
    logs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], force: bool
) -> None:
    # Without --force an earlier analysis stays; with it, a dataset is still never replaced.
    out = tmp_path / "existing"
    out.mkdir()
    write_marker(out, "analysis" if not force else "dataset")
    (out / "summary.json").write_text("{}")
    argv = ["analyze", str(logs["six_days"]), "--out", str(out)] + (["--force"] if force else [])
    outcome = run_hostile(argv, capsys)
    assert_clear_error(outcome, str(out), "even with --force" if force else "--force")
    assert (out / "summary.json").read_text() == "{}"
