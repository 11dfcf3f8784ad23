from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from rlrec.cli import main
from rlrec.evaluation.report import write_report
from rlrec.workflows.analyze import AnalyzeConfig, run_analysis

TABLES = (
    "trends",
    "trend_shares",
    "trends_by_segment",
    "drift_distance",
    "change_point_tests",
    "migration_matrix",
    "migration_top",
    "migration_flows",
    "cross_sell_pairs",
    "cross_sell_predictions",
    "demand_forecast",
)


@pytest.fixture(scope="module")
def analysis(planted_trend: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analyze") / "analysis"
    run_analysis(planted_trend, out, AnalyzeConfig(bootstrap=20))
    return out


def test_outputs_and_summary(analysis: Path) -> None:
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary["rising"][:3].count("c10") == 1
    gains = [g["gain"] for g in summary["gainers"]]
    assert gains == sorted(gains, reverse=True) and len(gains) == 5
    assert all(g["gain_low"] <= g["gain"] <= g["gain_high"] for g in summary["gainers"])
    assert isinstance(summary["change_points"], list)
    for block in ("cross_sell", "demand"):
        assert set(summary[block]) >= {"model", "baselines"}
    assert "recall@10" in summary["cross_sell"]["model"]
    assert set(summary["cross_sell"]["baselines"]) == {"association_rules", "markov", "popular"}
    assert "wape" in summary["demand"]["model"]
    assert set(summary["demand"]["baselines"]) == {"last_period", "seasonal_naive"}
    for name in TABLES:
        table = pd.read_csv(analysis / f"{name}.csv")
        assert len(table), name
    matrix = pd.read_csv(analysis / "migration_matrix.csv").set_index("from")
    assert (matrix.sum(axis=1) - 1).abs().max() < 1e-9
    assert sorted(p.name for p in (analysis / "plots").iterdir()) == [
        "cross_sell.png",
        "demand.png",
        "drift.png",
        "trends.png",
    ]


def test_same_seed_same_summary(analysis: Path, planted_trend: Path, tmp_path: Path) -> None:
    again = run_analysis(planted_trend, tmp_path / "again", AnalyzeConfig(bootstrap=20)).summary
    first = json.loads((analysis / "summary.json").read_text())
    for s in (again, first):
        s.pop("seconds"), s.pop("dataset"), s.pop("stage_seconds")
    assert again == first


def test_output_is_not_replaced_without_force(
    analysis: Path,
    planted_trend: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = (analysis / "summary.json").read_bytes()
    code = main(["analyze", str(planted_trend), "--out", str(analysis)])
    assert code == 2
    assert "--force" in capsys.readouterr().err
    assert (analysis / "summary.json").read_bytes() == before


def test_cli_json_and_parquet(planted_trend: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "a"
    argv = ["analyze", str(planted_trend), "--out", str(out), "--json", "--format", "parquet"]
    assert main([*argv, "--bootstrap", "10", "--period", "2d"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["period"] == "2d" and summary["config"]["table_format"] == "parquet"
    assert (out / "trends.parquet").is_file() and not (out / "trends.csv").exists()


def test_main_report_links_the_analysis(analysis: Path, tmp_path: Path) -> None:
    root = tmp_path / "quick"
    root.mkdir()
    (root / "fidelity.json").write_text(json.dumps({"ks_session_length": 0.1}))
    shutil.copytree(analysis, root / "analysis")
    page = write_report(root).html.read_text()
    assert 'href="analysis/report.html"' in page
    shutil.rmtree(root / "analysis")
    assert "analysis/report.html" not in write_report(root).html.read_text()


def test_page_loads_every_image_in_headless_chromium(analysis: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is missing: .ci/run installs it")
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    page = (analysis / "report.html").resolve().as_uri()
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    marker = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert marker is not None, dom[:500]
    assert marker.group(1) == marker.group(2) == "4"
    for title in ("Interest trends", "Migration drift", "Cross-sell", "Category demand"):
        assert title in dom
