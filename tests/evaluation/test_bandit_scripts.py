"""The bandit OPE benchmark and the OBD reproduction script, run as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT


def test_speed_benchmark_writes_its_keys(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "benchmarks" / "bench_ope.py"),
            "--rounds", "3000", "--n-bootstrap", "20", "--out", str(out),
        ],
        check=True,
        capture_output=True,
        cwd=PROJECT_ROOT,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["rounds"] == 3000
    assert result["seconds"] > 0 and result["peak_rss_mb"] > 0
    for name in ("dm", "ipw", "snipw", "dr", "sndr", "switch-dr", "dr-os"):
        assert result[f"{name}_seconds"] > 0
        assert 0 <= result[f"{name}_value"] <= 1


@pytest.mark.slow
def test_obd_benchmark_script(obd_dir, tmp_path) -> None:
    out = tmp_path / "obd.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "scripts" / "obd_benchmark.py"),
            "--data", str(obd_dir), "--n-bootstrap", "20", "--n-sim", "20000", "--out", str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert "all:random->bts" in proc.stdout and "all:bts->random" in proc.stdout
    results = json.loads(out.read_text())["settings"]
    for setting in results:
        for row in setting["agreement_given_obp_action_dist"].values():
            assert row["relative_difference"] < 1e-9
        assert set(setting["estimators"]) == {
            "dm", "ipw", "snipw", "dr", "sndr", "switch-dr", "dr-os"
        }  # fmt: skip
