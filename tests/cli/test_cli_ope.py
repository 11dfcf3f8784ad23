"""``rlrec ope bandit``: the JSON contract, text output and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrec.cli import main
from rlrec.evaluation.ope.bandit import ESTIMATOR_NAMES


def write_log(path: Path, n: int, seed: int, n_items: int = 4, len_list: int = 2) -> Path:
    """An OBD-layout log from a uniform behaviour policy with item-dependent clicks."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, n_items, size=n)
    position = rng.integers(1, len_list + 1, size=n)
    click = (rng.random(n) < 0.05 + 0.1 * item / n_items).astype(int)
    lines = [",timestamp,item_id,position,click,propensity_score,user_feature_0"]
    for i in range(n):
        lines.append(f"{i},t{i},{item[i]},{position[i]},{click[i]},{1 / n_items},u{i % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"all": {"alpha": [1, 2, 3, 8], "beta": [50, 50, 50, 50]}}))
    return {
        "logs": write_log(tmp_path / "random.csv", 240, seed=0),
        "on_policy": write_log(tmp_path / "other.csv", 300, seed=1),
        "prior": prior,
    }


def run_json(capsys, args: list[str]) -> dict:
    code = main(["ope", "bandit", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_json_contract(files, capsys) -> None:
    args = [
        "--logs", str(files["logs"]),
        "--policy", f"bts:{files['prior']}",
        "--on-policy-logs", str(files["on_policy"]),
        "--n-bootstrap", "50", "--n-folds", "2", "--n-sim", "2000",
    ]  # fmt: skip
    report = run_json(capsys, args)
    assert report["n_rounds"] == 240
    on_policy_clicks = np.loadtxt(files["on_policy"], delimiter=",", skiprows=1, usecols=4)
    assert report["ground_truth"] == pytest.approx(on_policy_clicks.mean())
    assert list(report["estimates"]) == list(ESTIMATOR_NAMES)
    for name in ESTIMATOR_NAMES:
        est = report["estimates"][name]
        assert set(est) == {"value", "ci95"}
        low, high = est["ci95"]
        assert low <= high
        expected = abs(est["value"] - report["ground_truth"]) / report["ground_truth"]
        assert report["relative_error"][name] == pytest.approx(expected)
    assert report["reward_model"]["n_folds"] == 2
    # Same seeds, same report (timings aside).
    again = run_json(capsys, args)
    report.pop("seconds"), again.pop("seconds")
    assert again == report


def test_without_ground_truth_and_with_uniform_policy(files, capsys) -> None:
    report = run_json(
        capsys,
        ["--logs", str(files["logs"]), "--policy", "random", "--n-bootstrap", "20"],
    )
    assert "ground_truth" not in report and "relative_error" not in report
    # The log is uniform and so is the policy: IPW is the logged mean click exactly.
    clicks = np.loadtxt(files["logs"], delimiter=",", skiprows=1, usecols=4)
    assert report["estimates"]["ipw"]["value"] == pytest.approx(clicks.mean(), rel=1e-12)


def test_text_output(files, capsys) -> None:
    code = main(
        [
            "ope", "bandit", "--logs", str(files["logs"]), "--policy", "random",
            "--on-policy-logs", str(files["on_policy"]), "--n-bootstrap", "20",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "rel. error" in out and "reward model: logistic" in out
    for name in ESTIMATOR_NAMES:
        assert f"\n{name} " in out


def test_bootstrap_non_finite_counts_in_json_and_text(files, capsys) -> None:
    args = ["--logs", str(files["logs"]), "--policy", "random", "--n-bootstrap", "15"]
    boot = run_json(capsys, args)["bootstrap"]
    # A uniform policy on a uniform log has weight 1 everywhere: no resample is undefined.
    assert boot == {"n_resamples": 15, "nonfinite_resamples": dict.fromkeys(ESTIMATOR_NAMES, 0)}
    assert main(["ope", "bandit", *args]) == 0
    out = capsys.readouterr().out
    assert "\nbootstrap: 15 resamples; non-finite ones left out of the intervals: none\n" in out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--policy", "greedy"], "expected 'random', 'bts:PRIOR.json' or a run directory"),
        (["--policy", "bts:nowhere.json"], "no such prior file"),
        (["--policy", "random", "--n-bootstrap", "-1"], "--n-bootstrap"),
        (["--policy", "random", "--n-folds", "0"], "--n-folds"),
    ],
)
def test_user_errors_exit_2_with_one_line(files, capsys, extra, match) -> None:
    code = main(["ope", "bandit", "--logs", str(files["logs"]), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rlrec: error: ") and err.count("\n") == 1
    assert match in err


def test_missing_logs_and_non_run_directory(tmp_path, capsys) -> None:
    assert main(["ope", "bandit", "--logs", str(tmp_path / "x.csv"), "--policy", "random"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["ope", "bandit", "--logs", "x.csv", "--policy", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_open_bandit_dataset_end_to_end(obd_dir, capsys) -> None:
    report = run_json(
        capsys,
        [
            "--logs", str(obd_dir / "random.csv"),
            "--item-context", str(obd_dir / "random_item_context.csv"),
            "--policy", f"bts:{obd_dir / 'bts_prior.json'}",
            "--on-policy-logs", str(obd_dir / "bts.csv"),
        ],
    )  # fmt: skip
    reference = json.loads((obd_dir / "obp_reference.json").read_text())["all:random->bts"]
    assert report["n_rounds"] == reference["n_rounds"]
    assert report["ground_truth"] == pytest.approx(reference["ground_truth"])
    # Our BTS distribution is a different Monte Carlo draw than OBP's: IPW agrees to MC error.
    assert report["estimates"]["ipw"]["value"] == pytest.approx(
        reference["estimates"]["ipw"], rel=0.02
    )
    assert set(report["relative_error"]) == set(ESTIMATOR_NAMES)
