"""The HTML report: hand-built inputs, partial directories, self-containment, a real browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rlrec.cli import main
from rlrec.errors import UserError
from rlrec.evaluation.fidelity import fidelity_distributions, migration_matrix
from rlrec.evaluation.ope.refit_bootstrap import BIAS_METHOD, REFIT_METHOD
from rlrec.evaluation.report import ReportResult, read_scalars, write_report
from tests.envs.conftest import make_sim_model, write_tiny_dataset

ALL_PLOTS = {"learning_curves", "migration", "fidelity", "policies", "ope", "encoder"}


def _policy(mean: float) -> dict:
    return {
        "return_mean": mean,
        "return_ci95": [mean - 0.5, mean + 0.5],
        "session_length_mean": 6.0,
        "engage_rate": 0.6,
        "buys_mean": 0.1,
        "coverage": 0.03,
    }


def _estimate(value: float) -> dict:
    return {"value": value, "ci95": [value - 0.4, value + 0.4]}


PAYLOADS = {
    "evaluate.json": {
        "episodes": 100,
        "seed": 1,
        "policies": {
            "ppo": _policy(6.0),
            "greedy_supervised": _policy(5.0),
            "random": _policy(1.0),
        },
    },
    "encoder_eval.json": {
        "protocol": {"description": "test split, full ranking"},
        "encoder": {"hr@10": 0.3, "ndcg@10": 0.2, "mrr": 0.15, "category_acc@1": 0.5},
        "baselines": {
            "popularity": {"hr@10": 0.1, "ndcg@10": 0.05, "mrr": 0.04, "category_acc@1": 0.2},
            "item_markov": {"hr@10": 0.2, "ndcg@10": 0.12, "mrr": 0.1, "category_acc@1": 0.3},
            "last_category": {"category_acc@1": 0.45},
        },
    },
    "fidelity.json": {
        "js_category_transition": 0.02,
        "js_category_transition_floor": 0.01,
        "ks_session_length": 0.03,
        "ks_streak_length": 0.01,
        "event_mix_max_abs_diff": 0.004,
        "mean_session_length": {"simulated": 5.0, "test": 5.2},
        "ground_truth": {"transition_tv": 0.05},
        "distributions": {
            "session_length": {
                "lengths": [1, 2, 3],
                "simulated": [0.5, 0.3, 0.2],
                "test": [0.45, 0.35, 0.2],
            },
            "transitions": {
                "labels": ["a", "b"],
                "simulated": [[0.7, 0.3], [0.4, 0.6]],
                "test": [[0.65, 0.35], [0.45, 0.55]],
            },
        },
    },
    "ope_sessions.json": {
        "sessions": 300,
        "behaviour": "greedy_supervised,tau=1,eps=0.3",
        "default_estimator": "dm",
        "targets": {
            "ppo": {
                "true_value": 5.0,
                "true_ci95": [4.8, 5.2],
                "estimates": {
                    "wis": _estimate(5.5),
                    "wdr": _estimate(5.1),
                    "dm": {
                        **_estimate(4.0),
                        "interval_method": "percentile bootstrap of "
                        "session groups, Q-model refitted on every resample",
                    },
                    "magic": {
                        **_estimate(4.2),
                        "interval_method": REFIT_METHOD + BIAS_METHOD,
                    },
                },
                "relative_error": {"wis": 0.1, "wdr": 0.02, "dm": -0.2, "magic": -0.16},
                "truth_in_ci95": {"wis": False, "wdr": True, "dm": False, "magic": False},
                "kl_per_step": 0.42,
                "verdict": "the new policy beats the logged one with 95% confidence",
                "measured_coverage": {"dm": {"coverage": 0.55, "mean_relative_width": 0.1}},
            }
        },
    },
}


def _write_run(run: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run.mkdir(parents=True)
    (run / "config.yaml").write_text("env_preset: synthetic\n")
    writer = SummaryWriter(log_dir=str(run / "tensorboard" / "ppo_1"))
    for step in range(1, 9):
        writer.add_scalar("charts/episode_return", 1.0 + 0.1 * step, step * 1024)
        writer.add_scalar("train/value_loss", 2.0 / step, step * 1024)
    writer.close()


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report") / "qs"
    root.mkdir()
    for name, payload in PAYLOADS.items():
        (root / name).write_text(json.dumps(payload))
    make_sim_model().save(root / "sim")
    _write_run(root / "run")
    return root


@pytest.fixture(scope="module")
def full_report(full_dir: Path) -> ReportResult:
    return write_report(full_dir)


def _external_references(page: str) -> list[str]:
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    return [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]


def test_report_has_every_section_and_is_self_contained(
    full_dir: Path, full_report: ReportResult
) -> None:
    result = full_report
    page = result.html.read_text()
    assert {p.stem for p in result.plots} == ALL_PLOTS
    assert all(result.sections.values())
    for name in ALL_PLOTS:
        assert (full_dir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'data-file="plots/{name}.png"' in page
    assert page.count('src="data:image/png;base64,') == len(ALL_PLOTS)
    assert _external_references(page) == []
    assert "<link" not in page and "@import" not in page
    assert "Not available" not in page


def test_headline_numbers(full_report: ReportResult) -> None:
    h = full_report.headline
    # The best non-oracle baseline of evaluate.json is greedy_supervised (5.0).
    assert h["fitted_agent_ratio"] == pytest.approx(6.0 / 5.0)
    assert h["fitted_best_baseline"] == "greedy_supervised"
    assert h["encoder_ndcg10"] == 0.2
    assert (h["best_baseline"], h["best_baseline_ndcg10"]) == ("item_markov", 0.12)
    assert h["ks_session_length"] == 0.03 and h["js_category_transition"] == 0.02
    assert (h["best_ope_estimator"], h["best_ope_relative_error"]) == ("wdr", 0.02)
    # The default estimator's error is what a user without the truth gets: shown beside.
    assert (h["default_ope_estimator"], h["default_ope_relative_error"]) == ("dm", 0.2)


def test_ope_section_shows_interval_methods_coverage_and_the_verdict(
    full_report: ReportResult,
) -> None:
    page = full_report.html.read_text()
    assert "ppo: the new policy beats the logged one with 95% confidence." in page
    assert "Q-refit bootstrap" in page and "measured coverage" in page
    assert "Q-refit bootstrap + bias" in page  # MAGIC's interval reaches towards WDR
    assert "0.55" in page and "0.42" in page


@pytest.mark.parametrize("keep", ["evaluate.json", "fidelity.json", "sim"])
def test_a_partial_directory_says_what_is_missing(
    full_dir: Path, tmp_path: Path, keep: str
) -> None:
    part = tmp_path / "part"
    part.mkdir()
    src = full_dir / keep
    if src.is_dir():
        shutil.copytree(src, part / keep)
    else:
        shutil.copy(src, part / keep)
    result = write_report(part)
    page = result.html.read_text()
    assert len(result.plots) == 1
    assert page.count("Not available") == len(ALL_PLOTS) - 1
    assert "no ope_sessions.json" in page


def test_a_plain_train_run_directory(full_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_dir / "run", run)
    shutil.copy(full_dir / "evaluate.json", run / "eval.json")
    result = write_report(run)
    assert {p.stem for p in result.plots} == {"learning_curves", "policies"}
    assert result.html == run / "report.html"


def test_nothing_to_report_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(UserError, match="nothing to report"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_json(full_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(full_dir), "--out", str(tmp_path / "out"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert Path(payload["report"]) == tmp_path / "out" / "report.html"
    assert Path(payload["report"]).is_file()
    assert len(payload["plots"]) == len(ALL_PLOTS)


def test_read_scalars_merges_event_files(full_dir: Path) -> None:
    scalars = read_scalars(full_dir / "run" / "tensorboard")
    steps, values = scalars["charts/episode_return"]
    assert steps.tolist() == [1024 * s for s in range(1, 9)]
    assert values[-1] == pytest.approx(1.8)


def test_fidelity_distributions_and_migration_matrix(tmp_path: Path) -> None:
    model = make_sim_model()
    dataset = write_tiny_dataset(tmp_path / "data")
    dist = fidelity_distributions(model, dataset, n_sessions=500, seed=0, top=3)
    lengths = dist["session_length"]
    assert len(lengths["lengths"]) == len(lengths["simulated"]) == len(lengths["test"])
    assert sum(lengths["simulated"]) == pytest.approx(1.0)
    sim = np.asarray(dist["transitions"]["simulated"])
    assert sim.shape == (3, 3) and np.allclose(sim.sum(axis=1), 1.0)
    matrix, labels, share = migration_matrix(model, top=3)
    assert matrix.shape == (3, 3) and np.allclose(matrix.sum(axis=1), 1.0)
    assert len(labels) == 3 and np.all(np.diff(share) <= 0)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_loads_every_image_in_headless_chromium(
    full_report: ReportResult, tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is missing: .ci/run installs it")
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    page = full_report.html
    common = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # The page's inline script counts images that loaded with a non-zero natural width.
    marker = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert marker is not None, dom[:500]
    assert marker.group(1) == marker.group(2) == str(len(ALL_PLOTS))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,2000", page.resolve().as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 5.0  # not a blank page


def test_an_input_that_does_not_load_empties_its_section_only(
    full_dir: Path, tmp_path: Path
) -> None:
    part = tmp_path / "part"
    shutil.copytree(full_dir / "sim", part / "sim")
    shutil.copy(full_dir / "evaluate.json", part / "evaluate.json")
    params = part / "sim" / "sim_model.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), "schema_version": 1}))
    result = write_report(part)
    assert [p.stem for p in result.plots] == ["policies"]
    page = result.html.read_text()
    assert "Category migration matrix" in page and "schema_version 1" in page


# --------------------------------------------------------------------------- optional sections

# The truth world of a hand-made run: every policy loses something, the agent most; the oracle
# is best but is no baseline, so the agent's truth ratio is to category_markov.
TRUTH = {
    "episodes": 100,
    "seed": 1,
    "policies": {
        "ppo": _policy(4.8),
        "greedy_supervised": _policy(4.5),
        "random": _policy(1.1),
        "category_markov": _policy(4.6),
        "oracle_myopic": _policy(7.0),
    },
}
FITTED = {
    "episodes": 100,
    "seed": 1,
    "policies": {
        "ppo": _policy(6.0),
        "greedy_supervised": _policy(5.0),
        "random": _policy(1.0),
        "category_markov": _policy(4.9),
        "oracle_myopic": _policy(7.5),
    },
}


def _sensitivity_payload() -> dict:
    names = ["leave_streak_factor", "leave_miss_factor", "leave_streak_start"]
    values = [[1.2, 1.15, 3.0], [1.0, 1.15, 3.0], [1.4, 1.15, 3.0], [1.1, 1.25, 4.0]]
    ratios = [1.05, 0.97, 1.21, 1.02]
    designs = ["centre", "one-at-a-time", "one-at-a-time", "latin-hypercube"]
    return {
        "episodes": 50,
        "seed": 0,
        "message": "",
        "swept": names,
        "prior": {n: {"low": 1.0, "high": 1.4, "integer": False, "why": ""} for n in names},
        "policy": "ppo",
        "baselines": ["popular", "category_markov"],
        "worlds": [
            {
                "label": f"w{i}",
                "design": designs[i],
                "parameters": dict(zip(names, values[i], strict=True)),
                "returns": {"ppo": r, "popular": 1.0, "category_markov": 0.9},
                "best_baseline": "popular",
                "ratio": r,
                "ratio_ci95": [r - 0.05, r + 0.05],
            }
            for i, r in enumerate(ratios)
        ],
        "summary": {
            "n_worlds": 4,
            "mean_ratio": 1.0625,
            "worst_ratio": 0.97,
            "worst_world": "w1",
            "share_ratio_ge_1": 0.75,
            "share_ci_below_1": 0.25,
            "spearman": {
                "leave_streak_factor": 1.0,
                "leave_miss_factor": 0.26,
                "leave_streak_start": None,
            },
        },
    }


@pytest.fixture
def train_run(full_dir: Path, tmp_path: Path) -> Path:
    """A plain ``rlrec train`` run directory with its fitted-simulator eval.json."""
    run = tmp_path / "run"
    shutil.copytree(full_dir / "run", run)
    (run / "eval.json").write_text(json.dumps(FITTED))
    return run


def _rows(page: str, section: str) -> dict[str, list[str]]:
    """The cells of a section's table, by the first cell of each row (tags stripped)."""
    body = re.search(rf'<section id="{section}">(.*?)</section>', page, re.S)
    assert body is not None, section
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S):
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", c))
            for c in re.findall(r"<td>(.*?)</td>", row, re.S)
        ]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def test_optional_sections_are_absent_without_their_files(full_report: ReportResult) -> None:
    page = full_report.html.read_text()
    assert "truth" not in full_report.sections and "sensitivity" not in full_report.sections
    assert 'id="truth"' not in page and 'id="sensitivity"' not in page
    assert full_report.headline["truth_agent_ratio"] is None
    assert "truth world" not in page


def test_fitted_vs_truth_gaps_in_the_page_match_the_json(train_run: Path) -> None:
    (train_run / "eval_truth.json").write_text(json.dumps(TRUTH))
    result = write_report(train_run)
    assert result.sections["truth"] and (train_run / "plots" / "truth.png").is_file()
    rows = _rows(result.html.read_text(), "truth")
    assert set(rows) == set(TRUTH["policies"])
    for name, cells in rows.items():
        fitted = FITTED["policies"][name]["return_mean"]
        truth = TRUTH["policies"][name]["return_mean"]
        assert cells[0].startswith(f"{fitted:.3f} ") and cells[1].startswith(f"{truth:.3f} ")
        assert cells[2] == f"{100 * (truth / fitted - 1):+.1f}%"
    assert rows["ppo"][2] == "-20.0%"
    h = result.headline
    # Baselines exclude the agent and the oracle: category_markov (4.6) is the best.
    assert h["truth_best_baseline"] == "category_markov"
    assert h["truth_agent_ratio"] == pytest.approx(4.8 / 4.6)
    page = result.html.read_text()
    assert "ppo vs best baseline, truth world" in page and "1.04×" in page


def test_a_truth_eval_without_the_fitted_one_says_so(train_run: Path) -> None:
    (train_run / "eval.json").unlink()
    (train_run / "eval_truth.json").write_text(json.dumps(TRUTH))
    result = write_report(train_run)
    assert result.sections["truth"] is False
    assert "eval_truth.json has no eval.json beside it" in result.html.read_text()


def test_sensitivity_section_plots_and_summarises_the_sweep(train_run: Path) -> None:
    payload = _sensitivity_payload()
    (train_run / "sensitivity.json").write_text(json.dumps(payload))
    result = write_report(train_run)
    assert result.sections["sensitivity"]
    assert (train_run / "plots" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    rows = _rows(result.html.read_text(), "sensitivity")
    assert rows["mean ratio"] == [f"{payload['summary']['mean_ratio']:.3f}"]
    assert rows["worst ratio"] == ["0.970 (w1)"]
    assert rows["share of worlds with ratio >= 1"] == ["0.75"]
    assert rows["share of worlds a baseline wins beyond noise (95% CI < 1)"] == ["0.25"]
    assert rows["Spearman with leave_miss_factor [1.00, 1.40]"] == ["0.26"]
    assert rows["Spearman with leave_streak_start [1.00, 1.40]"] == ["–"]


def test_sensitivity_plot_has_one_panel_per_parameter_with_a_line_at_one() -> None:
    from rlrec.evaluation import plots

    payload = _sensitivity_payload()
    worlds = payload["worlds"]
    fig = plots.sensitivity(
        {n: [w["parameters"][n] for w in worlds] for n in payload["swept"]},
        [w["ratio"] for w in worlds],
        [w["design"] for w in worlds],
    )
    assert [ax.get_title() for ax in fig.axes] == payload["swept"]
    for ax in fig.axes:
        assert any(np.allclose(line.get_ydata(), 1.0) for line in ax.get_lines())


def test_inputs_are_escaped_by_the_template(train_run: Path) -> None:
    evil = "<script>alert(1)</script>"
    truth = json.loads(json.dumps(TRUTH))
    fitted = json.loads(json.dumps(FITTED))
    truth["policies"][evil] = fitted["policies"][evil] = _policy(2.0)
    (train_run / "eval.json").write_text(json.dumps(fitted))
    (train_run / "eval_truth.json").write_text(json.dumps(truth))
    page = write_report(train_run).html.read_text()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_sweep_with_nothing_swept_still_renders(train_run: Path) -> None:
    payload = _sensitivity_payload()
    payload.update(message="nothing to sweep: every response parameter is set", swept=[])
    payload["worlds"] = payload["worlds"][:1]
    payload["summary"].update(n_worlds=1, spearman={})
    (train_run / "sensitivity.json").write_text(json.dumps(payload))
    result = write_report(train_run)
    assert result.sections["sensitivity"]
    assert "nothing to sweep" in _rows_text(result.html.read_text(), "sensitivity")


def _rows_text(page: str, section: str) -> str:
    body = re.search(rf'<section id="{section}">(.*?)</section>', page, re.S)
    assert body is not None
    return html.unescape(body.group(1))


def test_encoder_section_draws_the_training_curves(tmp_path: Path) -> None:
    from rlrec.evaluation.report import _encoder_section, find_inputs

    root = tmp_path / "qs"
    (root / "encoder").mkdir(parents=True)
    (root / "encoder_eval.json").write_text(json.dumps(PAYLOADS["encoder_eval.json"]))
    history = [
        {"stage": "pretrain", "epoch": 1, "train_loss": 8.0, "valid_loss": 7.5,
         "valid_ndcg@10": 0.05},
        {"stage": "finetune", "epoch": 1, "train_loss": 9.0, "valid_loss": 8.5,
         "valid_ndcg@10": 0.07},
    ]  # fmt: skip
    payload = {"info": {"history": history}}
    (root / "encoder" / "encoder.json").write_text(json.dumps(payload))
    with_curves = _encoder_section(find_inputs(root))
    assert with_curves.image is not None and "training curves" in with_curves.caption
    (root / "encoder" / "encoder.json").write_text("{not json")  # malformed: bars only
    without = _encoder_section(find_inputs(root))
    assert without.image is not None and "training curves" not in without.caption
    assert len(with_curves.image) != len(without.image)


def test_encoder_section_states_the_paired_verdict(tmp_path: Path) -> None:
    import numpy as np

    from rlrec.evaluation.paired import paired_comparison
    from rlrec.evaluation.report import _encoder_section, find_inputs

    root = tmp_path / "qs"
    root.mkdir()
    n = 50
    paired = paired_comparison(
        {"hr@10": np.ones(n), "ndcg@10": np.full(n, 0.5)},
        {"item_markov": {"hr@10": np.zeros(n), "ndcg@10": np.full(n, 0.5)}},
        np.arange(n),
    )
    payload = {**PAYLOADS["encoder_eval.json"], "paired": {"encoder": paired}}
    (root / "encoder_eval.json").write_text(json.dumps(payload))
    caption = _encoder_section(find_inputs(root)).caption
    assert "encoder minus the strongest baseline" in caption
    assert (
        "hr@10 +1.0000 [+1.0000, +1.0000] vs item_markov: above it with 95% confidence" in caption
    )
    assert "ndcg@10 +0.0000" in caption and "level (cannot tell apart at 95%)" in caption
    (root / "encoder_eval.json").write_text(json.dumps(PAYLOADS["encoder_eval.json"]))
    assert "strongest baseline" not in _encoder_section(find_inputs(root)).caption


@pytest.mark.parametrize("series", [{}, {"encoder": [0.2, None]}])
def test_grouped_bars_without_models_draws_no_empty_legend(series):
    import warnings

    import matplotlib.pyplot as plt

    from rlrec.evaluation import plots

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns on a legend with nothing in it
        fig = plots.grouped_bars(["ndcg@10", "hr@10"], series, "next item", "score")
    legend = fig.axes[0].get_legend()
    assert (legend is None) == (not series)
    plt.close(fig)
