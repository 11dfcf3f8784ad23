"""``rlrec ope sessions`` and ``rlrec ope replay``: JSON contracts, text output, user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlrec.agents.policy_specs import parse_policy_spec
from rlrec.cli import main
from rlrec.errors import UserError
from rlrec.evaluation.ope.refit_bootstrap import REFIT_ESTIMATORS
from rlrec.evaluation.ope.sequential import SESSION_ESTIMATOR_NAMES
from tests.envs.conftest import write_tiny_dataset

TINY_PRESET = """\
data:
  source: synthetic
  synthetic: {n_users: 60, n_categories: 5, n_items: 300, seed: 0}
fit: {top_k_categories: 5, catalog_size: 100}
env: {history_length: 5, max_steps: 10, catalog_size: 50}
"""


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("preset")
    path = root / "tiny.yaml"
    path.write_text(TINY_PRESET)
    return path, root / "cache"


def simulate_args(preset: tuple[Path, Path], *extra: str) -> list[str]:
    path, cache = preset
    return [
        "ope",
        "sessions",
        "--simulate",
        str(path),
        "--cache-dir",
        str(cache),
        "--behaviour",
        "popularity,eps=0.3",
        "--target",
        "random",
        "--target",
        "popular,eps=0.5",
        "--sessions",
        "150",
        "--truth-sessions",
        "150",
        "--n-bootstrap",
        "20",
        *extra,
    ]


@pytest.mark.slow  # builds a tiny preset's artifacts and simulates
def test_simulate_json_contract(preset, capsys):
    assert main(simulate_args(preset, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sessions"] == 150
    assert report["propensities"].startswith("known")
    assert report["default_estimator"] == "magic"
    assert set(report["targets"]) == {"random", "popular,eps=0.5"}
    for t in report["targets"].values():
        assert tuple(t["estimates"]) == SESSION_ESTIMATOR_NAMES
        assert set(t["relative_error"]) == set(SESSION_ESTIMATOR_NAMES)
        assert t["kl_per_step"] > 0 and t["true_value"] > 0
        for name, e in t["estimates"].items():
            assert set(e) == {"value", "ci95", "interval_method"} and len(e["ci95"]) == 2
            refit = name in REFIT_ESTIMATORS
            assert ("refitted" in e["interval_method"]) == refit, name
        assert t["verdict"].startswith(("the new policy", "cannot tell"))
        assert t["lower_bound"]["method"].startswith("HCOPE")
    # The same seed gives the same report.
    assert main(simulate_args(preset, "--json")) == 0
    assert json.loads(capsys.readouterr().out) == report


@pytest.mark.slow  # builds a tiny preset's artifacts and simulates
def test_simulate_text_output(preset, capsys):
    assert main(simulate_args(preset)) == 0
    out = capsys.readouterr().out
    assert "target random: true value" in out and "(default)" in out and "KL per step" in out
    assert "Q-model on the behaviour's held-out returns: first-step Q" in out
    assert "Q-refit bootstrap" in out and "verdict: " in out and "KL/step" in out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_tiny_dataset(tmp_path / "data")
    return tmp_path / "data"


def test_real_sessions_json_says_propensities_are_estimated(data_dir, capsys):
    args = ["ope", "sessions", "--data", str(data_dir), "--split", "train"]
    code = main([*args, "--target", "popularity,eps=0.5", "--n-bootstrap", "10", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    t = report["targets"]["popularity,eps=0.5"]
    assert t["propensities"].startswith("estimated (category-conditional counts")
    assert tuple(t["estimates"]) == SESSION_ESTIMATOR_NAMES
    assert t["decisions"] == 7
    # What the Q-model reads from real logs, and what they cannot show, is in the output.
    assert "switch_likelihood" in t["q_features"]["used"]
    assert "dwell_time" in t["q_features"]["used"]
    assert "no impressions" in t["q_features"]["unavailable"]["consecutive_misses"]
    assert "verdict" in t and "lower_bound" in t
    assert t["fqe_ratio_power"] == 0.0  # unweighted by default
    # --q-ratio-power weighs the Q-model's regressions: recorded, and it moves the model.
    weighted = ["--target", "popularity,eps=0.5", "--n-bootstrap", "0", "--json"]
    assert main([*args, *weighted, "--q-ratio-power", "1"]) == 0
    w = json.loads(capsys.readouterr().out)["targets"]["popularity,eps=0.5"]
    assert w["fqe_ratio_power"] == 1.0
    assert w["estimates"]["is"]["value"] == pytest.approx(t["estimates"]["is"]["value"])
    assert w["estimates"]["dm"]["value"] != pytest.approx(t["estimates"]["dm"]["value"])
    assert main([*args, "--target", "random", "--n-bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert "propensities: estimated" in out
    assert "Q-model feature consecutive_misses: unavailable" in out and "verdict: " in out


def test_real_sessions_report_the_bootstraps_non_finite_resamples(data_dir, capsys):
    args = ["ope", "sessions", "--data", str(data_dir), "--split", "train"]
    args += ["--target", "popularity,eps=0.5", "--n-bootstrap", "12"]
    assert main([*args, "--json"]) == 0
    boot = json.loads(capsys.readouterr().out)["targets"]["popularity,eps=0.5"]["bootstrap"]
    assert boot["n_resamples"] == 12
    assert tuple(boot["nonfinite_resamples"]) == SESSION_ESTIMATOR_NAMES
    assert all(0 <= c <= 12 for c in boot["nonfinite_resamples"].values())
    assert main(args) == 0
    assert "  bootstrap: 12 resamples; non-finite ones left out" in capsys.readouterr().out


def test_replay_json(data_dir, capsys):
    code = main(["ope", "replay", "--data", str(data_dir), "--policy", "popularity", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["k"] == 10 and report["decisions"] == 2 and report["split"] == "test"
    assert 0.0 <= report["hr@10"] <= 1.0 and 0.0 <= report["ndcg@10"] <= report["hr@10"]
    assert main(["ope", "replay", "--data", str(data_dir), "--policy", "random", "--k", "5"]) == 0
    assert "HR@5" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nonsense"], "unknown base 'nonsense'"),
        (["--policy", "random,tau=0"], "tau must be > 0"),
        (["--policy", "random,eps=2"], "eps must lie in"),
        (["--policy", "random,foo=1"], "not tau=T or eps=E"),
        (["--policy", "greedy_supervised"], "pass --encoder DIR"),
        (["--policy", "category_markov"], "needs the simulator's user model"),
        (["--policy", "random", "--k", "0"], "--k: expected >= 1"),
    ],
)
def test_replay_user_errors_are_one_line(data_dir, capsys, args, message):
    code = main(["ope", "replay", "--data", str(data_dir), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_policy_spec_parsing():
    spec = parse_policy_spec("greedy_supervised,tau=0.5,eps=0.1")
    assert (spec.base, spec.temperature, spec.epsilon) == ("greedy_supervised", 0.5, 0.1)
    run = parse_policy_spec("run:logs/x")
    assert (run.base, run.run_dir) == ("ppo", "logs/x")
    with pytest.raises(UserError, match="is not a number"):
        parse_policy_spec("random,eps=x")


def test_sessions_flag_errors(preset, capsys):
    code = main(simulate_args(preset, "--sessions", "0"))
    assert code == 2 and "--sessions: expected >= 1" in capsys.readouterr().err
    for bad in ("1.5", "-0.1", "nan"):
        code = main(simulate_args(preset, "--q-ratio-power", bad))
        err = capsys.readouterr().err
        assert code == 2 and "--q-ratio-power: expected in [0, 1]" in err, bad
        assert err.count("\n") == 1


def run_bench_script(preset: tuple[Path, Path], out: Path, *extra: str) -> dict:
    """``bench_ope_sessions.py`` on the tiny preset (popularity behaviour, ``random`` target,
    100 logged sessions) in a subprocess; its JSON."""
    path, cache = preset
    cmd = [
        sys.executable,
        "benchmarks/bench_ope_sessions.py",
        "--env",
        str(path),
        "--cache-dir",
        str(cache),
        "--behaviour",
        "popularity,eps=0.3",
        "--target",
        "random",
        "--sessions",
        "100",
        *extra,
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).parents[2])
    return json.loads(out.read_text())


@pytest.mark.slow  # builds a tiny preset's artifacts and simulates
def test_bench_script_quick_subprocess(preset, tmp_path):
    result = run_bench_script(preset, tmp_path / "bench.json", "--n-bootstrap", "10")
    assert result["sessions"] == 100 and result["truth_sessions"] == 100
    assert result["default_estimator"] == "magic" and result["seed"] == 0
    assert result["kl_per_step__random"] == result["targets"]["random"]["kl_per_step"]
    # Each flat relative error is its estimate against the flat truth, |e - t| / |t|.
    truth = result["true_value__random"]
    for name in SESSION_ESTIMATOR_NAMES:
        estimate = result[f"estimate__random__{name}"]
        assert result[f"relative_error__random__{name}"] == pytest.approx(
            abs(estimate - truth) / abs(truth)
        )


def test_ppo_base_uses_the_runs_action_probabilities(tmp_path):
    """``ppo`` softens the loaded run's policy (a stand-in here: no trained run needed)."""
    import types

    from rlrec.agents.policy_specs import SimulatorContext
    from rlrec.envs.config import EnvConfig
    from tests.envs.conftest import N_ITEMS, make_sim_model

    class Agent:
        n_actions = N_ITEMS

        def action_probabilities(self, obs):
            p = np.zeros((len(obs["item_history"]), N_ITEMS))
            p[:, 7] = 1.0
            return p

    ctx = SimulatorContext(
        sim_model=make_sim_model(),
        dataset=write_tiny_dataset(tmp_path / "data"),
        env_config=EnvConfig(catalog_size=N_ITEMS, history_length=5),
        encoder_loader=None,
        run=types.SimpleNamespace(policy=Agent()),
    )
    policy = ctx.policy(parse_policy_spec("ppo,eps=0.5"), seed=0)
    p = policy.action_probabilities({"item_history": np.zeros((2, 5), dtype=np.int64)})
    np.testing.assert_allclose(p[:, 7], 0.5 + 0.5 / N_ITEMS)
    no_run = SimulatorContext(ctx.sim_model, ctx.dataset, ctx.env_config, None)
    with pytest.raises(UserError, match="no trained run"):
        no_run.policy(parse_policy_spec("ppo"), seed=0)


def test_decision_lines_name_the_detected_model_bias():
    from rlrec.cli.ope_sessions import _decision_lines

    lines = _decision_lines({"verdict": "cannot tell", "bias_bound": {"dm": -0.25, "magic": 0.0}})
    assert lines[-1].startswith("  Q-model bias detected") and "dm -0.25" in lines[-1]
    assert "magic" not in lines[-1]  # no bias detected: nothing to say
    assert not any("bias" in x for x in _decision_lines({"bias_bound": {"magic": 0.0}}))


@pytest.mark.slow  # builds a tiny preset's artifacts and simulates in two worker processes
def test_bench_script_point_seeds_reports_the_on_policy_floor(preset, tmp_path):
    """--point-seeds: every seed's signed errors, and the A/B test on the log's users beside
    the estimators; the truth pools batches (TRUTH_MULTIPLE x the logged sessions)."""
    result = run_bench_script(preset, tmp_path / "bench.json", "--point-seeds", "2")
    assert result["point_seeds"] == 2 and result["point_truth_sessions"] == 1600
    for est in ("dm", "wdr", "switch", "magic", "on_policy"):
        errors = result[f"point_relative_errors__random__{est}"]
        assert len(errors) == 2 and all(np.isfinite(errors))
        assert result[f"point_mean_relative_error__random__{est}"] == pytest.approx(np.mean(errors))
        assert result[f"point_max_relative_error__random__{est}"] == pytest.approx(
            np.max(np.abs(errors))
        )
    # Two logs of other users: their on-policy means differ, so their errors do.
    floor = result["point_relative_errors__random__on_policy"]
    assert floor[0] != floor[1]
