from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlrec.cli import main
from rlrec.models.synthetic import SyntheticConfig, generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return generate_dataset(out, SyntheticConfig(n_events=30_000, n_categories=12, seed=5))


def test_fit_then_validate_json(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = tmp_path / "sim"
    assert main(["fit", str(dataset), "--out", str(sim), "--catalog-size", "300", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["categories"] == 12 and summary["catalog_items"] == 300
    assert summary["provenance"]["engage_base_rate"]["source"] == "default"

    argv = ["sim", "validate", str(sim), "--data", str(dataset), "--sessions", "2000", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("js_category_transition", "ks_session_length", "ks_streak_length"):
        # JS divergence (base 2) and KS distances are in [0, 1]; 1 would mean disjoint samples.
        assert isinstance(report[key], float) and 0.0 <= report[key] < 1.0, key
    assert report["ground_truth"]["transition_tv"] < 0.1


def test_fit_and_validate_tables(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = tmp_path / "sim"
    assert main(["fit", str(dataset), "--out", str(sim), "--engage-base-rate", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "engage_base_rate" in out and "user" in out
    assert main(["sim", "validate", str(sim), "--data", str(dataset), "--sessions", "500"]) == 0
    assert "ks_session_length" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "{data}", "--out", "{tmp}/s", "--top-k", "0"], "--top-k"),
        (["fit", "{data}", "--out", "{tmp}/s", "--engage-base-rate", "2"], "--engage-base-rate"),
        (["fit", "{tmp}/missing", "--out", "{tmp}/s"], "no such dataset directory"),
        (["sim", "validate", "{tmp}/missing", "--data", "{data}"], "missing sim_model.json"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], message: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(data=dataset, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
