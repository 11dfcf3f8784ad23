"""The bandit OPE benchmark and the OBD reproduction script, run as subprocesses."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
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
    # The timed section is its two parts (not a stale or mistyped figure).
    assert result["seconds"] == pytest.approx(
        result["prepare_seconds"] + result["estimate_seconds"], rel=1e-9
    )
    # The estimates are of the benchmark's seeded logs: IPW and SNIPW by their definitions,
    # w_i = pi_e(a_i | x_i, k_i) / pscore_i, recomputed here from the same logs.
    spec = importlib.util.spec_from_file_location(
        "bench_ope", PROJECT_ROOT / "benchmarks" / "bench_ope.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    logs = bench.synthetic_logs(3000, 80, 3, seed=0)
    rows = np.arange(3000)
    w = logs["action_dist"][rows, logs["action"], logs["position"]] / logs["pscore"]
    assert result["ipw_value"] == pytest.approx(np.mean(w * logs["reward"]), rel=1e-6)
    assert result["snipw_value"] == pytest.approx(np.sum(w * logs["reward"]) / np.sum(w), rel=1e-6)
    for name in ("dm", "dr", "sndr", "switch-dr", "dr-os"):
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
