import contextlib
import io
import json
from pathlib import Path

import pytest

from rlrec.cli import main
from rlrec.data.dataset import load_dataset
from rlrec.models.checkpoint import read_checkpoint_info
from rlrec.models.sim_model import load_sim_model
from rlrec.workflows.quickstart import QuickstartConfig

PLOTS = ("learning_curves", "migration", "fidelity", "policies", "ope", "encoder")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """``rlrec quickstart --tiny --json`` once for the module: (out, summary, stderr)."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["quickstart", "--tiny", "--out", str(out), "--json"]) == 0
    return out, json.loads(stdout.getvalue()), stderr.getvalue()


def test_quickstart_tiny_writes_every_artifact(tiny_run: tuple[Path, dict, str]) -> None:
    out, summary, progress = tiny_run
    ds = load_dataset(out / "data")
    model = load_sim_model(out / "sim")
    assert summary["stats"]["events"] == len(ds.events) > 0
    assert model.n_categories >= 2
    assert (out / "data" / "ground_truth.json").is_file()
    read_checkpoint_info(out / "encoder")
    assert list((out / "encoder" / "tensorboard").glob("events.out.tfevents.*"))
    for name in (
        "config.yaml",
        "policy.json",
        "policy.safetensors",
        "eval.json",
        "eval_truth.json",
        "plan.npz",
        "robust.json",
    ):
        assert (out / "run" / name).is_file(), name
    assert list((out / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert (out / "env.yaml").is_file()
    for name in (
        "fidelity",
        "encoder_eval",
        "evaluate",
        "evaluate_truth",
        "ope_sessions",
        "summary",
    ):
        assert json.loads((out / f"{name}.json").read_text()), name
    # Every stage announced itself on stderr (stdout holds the JSON only).
    assert progress.count("==> ") == len(summary["seconds"]) == 10


def test_quickstart_tiny_payloads_follow_the_verbs_contracts(
    tiny_run: tuple[Path, dict, str],
) -> None:
    out, summary, _ = tiny_run
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert 0 <= fidelity["js_category_transition"] <= 1
    # The tiny world is small, but the fit must still be far better than chance.
    assert fidelity["ground_truth"]["transition_tv"] < 0.3
    evaluate = json.loads((out / "evaluate.json").read_text())
    assert list(evaluate["policies"])[:3] == ["ppo", "planner", "greedy_supervised"]
    # The headline ratio is the agent's over the best non-oracle baseline, in both worlds.
    truth = json.loads((out / "evaluate_truth.json").read_text())
    for world, payload in (("fitted", evaluate), ("truth", truth)):
        agent = summary["agent"][world]
        policies = payload["policies"]
        best = agent["best_baseline"]
        assert best not in ("ppo", "planner", "oracle_myopic")
        assert agent["ratio_to_best_baseline"] == pytest.approx(
            policies["ppo"]["return_mean"] / policies[best]["return_mean"]
        )
    ope = json.loads((out / "ope_sessions.json").read_text())
    assert "true_value" in ope["targets"]["ppo"]
    encoder_eval = json.loads((out / "encoder_eval.json").read_text())
    assert "encoder" in encoder_eval and "category_markov" in encoder_eval["baselines"]
    assert summary["train"]["timesteps"] >= QuickstartConfig.tiny().timesteps
    headline = summary["headline"]
    assert headline["fitted_agent_ratio"] == pytest.approx(
        summary["agent"]["fitted"]["ratio_to_best_baseline"]
    )
    assert headline["truth_agent_ratio"] == pytest.approx(
        summary["agent"]["truth"]["ratio_to_best_baseline"]
    )


def test_quickstart_tiny_report_references_every_plot(tiny_run: tuple[Path, dict, str]) -> None:
    out, summary, _ = tiny_run
    page = (out / "report.html").read_text()
    assert summary["report"] == str(out / "report.html")
    for name in PLOTS:
        assert (out / "plots" / f"{name}.png").is_file(), name
        assert f'data-file="plots/{name}.png"' in page
    assert "Not available" not in page
    assert summary["tensorboard_logdir"] == str(out)


def test_quickstart_prints_the_report_and_the_tensorboard_command(
    tiny_run: tuple[Path, dict, str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import rlrec.workflows.quickstart as pipeline

    out, summary, _ = tiny_run
    # The printing is tested on the saved summary: the stages are not run again.
    monkeypatch.setattr(
        pipeline, "run_quickstart", lambda *a, **k: pipeline.QuickstartResult(out, summary)
    )
    assert main(["quickstart", "--tiny", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"report:      {out / 'report.html'}" in text
    assert f"tensorboard --logdir {out}" in text


def test_quickstart_help_lists_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["quickstart", "--help"])
    text = capsys.readouterr().out
    assert "--tiny" in text and "default: logs/quickstart" in text and "--json" in text


def test_quickstart_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["quickstart", "--tiny", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlrec: error: --out") and "\n" not in err


def test_report_of_the_quickstart_run_directory_alone(
    tiny_run: tuple[Path, dict, str], tmp_path: Path
) -> None:
    out, _, _ = tiny_run
    # A plain run directory: its curves, its eval.json and the SimModel its config names, and
    # (the quickstart evaluates in the truth world too) eval_truth.json beside eval.json.
    assert (out / "run" / "eval_truth.json").is_file()
    assert main(["report", str(out / "run"), "--out", str(tmp_path), "--json"]) == 0
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert plots == {"learning_curves.png", "policies.png", "migration.png", "truth.png"}
