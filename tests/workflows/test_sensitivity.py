"""``rlrec sensitivity``: the design, the sweep on hand-built worlds and on a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrec.agents.baselines import CategoryMarkovPolicy, PopularPolicy, RandomPolicy
from rlrec.cli import main
from rlrec.envs.config import EnvConfig
from rlrec.models.prior import RESPONSE_PARAMETERS, RESPONSE_PRIOR, with_response
from rlrec.workflows.sensitivity import (
    SENSITIVITY_FILE,
    latin_hypercube,
    sensitivity_design,
    sweep,
)
from tests.agents.conftest import TINY_AGENT, TINY_ENV, write_yaml
from tests.envs.conftest import make_sim_model, write_tiny_dataset

ENV = EnvConfig(max_steps=15, start="cold")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    model = make_sim_model()
    dataset = write_tiny_dataset(tmp_path_factory.mktemp("sens") / "data")
    return model, dataset


def test_design_holds_the_centre_every_end_and_a_latin_hypercube() -> None:
    model = make_sim_model()
    thetas, labels, designs, names = sensitivity_design(model, 8, seed=0)
    assert names == RESPONSE_PARAMETERS  # a model built in code: nothing is identified
    assert labels[0] == "centre" and designs.count("latin-hypercube") == 8
    centre = np.array([float(getattr(model, p)) for p in RESPONSE_PARAMETERS])
    np.testing.assert_array_equal(thetas[0], centre)
    for j, name in enumerate(RESPONSE_PARAMETERS):
        r = RESPONSE_PRIOR[name]
        # Both ends of every range are worlds of their own, with the rest at the centre.
        for end in (r.low, r.high):
            rows = thetas[np.isclose(thetas[:, j], end)]
            others = np.delete(rows, j, axis=1)
            assert (others == np.delete(centre, j)).all(axis=1).any(), (name, end)
        lhs = thetas[np.array(designs) == "latin-hypercube", j]
        assert lhs.min() >= r.low and lhs.max() <= r.high
        if r.integer:
            assert np.array_equal(lhs, np.round(lhs))
        else:
            # Latin hypercube: exactly one point in each of the 8 strata of the range.
            strata = np.floor((lhs - r.low) / (r.high - r.low) * 8).astype(int)
            assert sorted(strata.tolist()) == list(range(8)), name


def test_latin_hypercube_is_seeded_and_sweeps_only_the_given_names() -> None:
    model = make_sim_model()
    a = latin_hypercube(model, ("leave_streak_factor", "leave_streak_start"), 6, seed=4)
    b = latin_hypercube(model, ("leave_streak_factor", "leave_streak_start"), 6, seed=4)
    c = latin_hypercube(model, ("leave_streak_factor", "leave_streak_start"), 6, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    fixed = [j for j, p in enumerate(RESPONSE_PARAMETERS) if not p.startswith("leave_streak")]
    assert (a[:, fixed] == a[0, fixed]).all()
    start = a[:, RESPONSE_PARAMETERS.index("leave_streak_start")]
    assert set(start.tolist()) <= {2.0, 3.0, 4.0, 5.0}


def test_a_policy_equal_to_the_best_baseline_has_ratio_one_everywhere(world) -> None:
    model, dataset = world
    n = len(model.item_ids)
    baselines = {"random": RandomPolicy(n, seed=0), "popular": PopularPolicy(n)}
    out = sweep(model, dataset, ENV, PopularPolicy(n), baselines, 3, 40, seed=1)
    # An end equal to the model's own value (leave_engaged_factor 0.7) is the centre itself.
    ends = sum(
        end != float(getattr(model, p))
        for p in RESPONSE_PARAMETERS
        for end in (RESPONSE_PRIOR[p].low, RESPONSE_PRIOR[p].high)
    )
    assert len(out["worlds"]) == 1 + ends + 3
    for w in out["worlds"]:
        assert w["best_baseline"] == "popular" and w["ratio"] == 1.0
        assert w["ratio_ci95"] == [1.0, 1.0]  # the same users, the same returns: no noise
    s = out["summary"]
    assert s["mean_ratio"] == s["worst_ratio"] == s["share_ratio_ge_1"] == 1.0
    assert s["share_ci_below_1"] == 0.0
    assert set(s["spearman"]) == set(RESPONSE_PARAMETERS)
    assert all(rho is None for rho in s["spearman"].values())  # a constant ratio


def test_the_ratio_follows_the_returns_and_the_summary_the_ratios(world) -> None:
    model, dataset = world
    n = len(model.item_ids)
    baselines = {"random": RandomPolicy(n, seed=0), "popular": PopularPolicy(n)}
    policy = CategoryMarkovPolicy.from_sim_model(model, n)
    out = sweep(model, dataset, ENV, policy, baselines, 4, 40, seed=2)
    ratios = []
    for w in out["worlds"]:
        best = max(w["returns"][b] for b in baselines)
        assert w["returns"][w["best_baseline"]] == best
        assert w["ratio"] == pytest.approx(w["returns"]["ppo"] / best)
        lo, hi = w["ratio_ci95"]
        assert lo <= w["ratio"] <= hi
        ratios.append(w["ratio"])
    s = out["summary"]
    assert s["mean_ratio"] == pytest.approx(np.mean(ratios))
    assert s["worst_ratio"] == min(ratios)
    assert s["worst_world"] == out["worlds"][int(np.argmin(ratios))]["label"]
    assert s["share_ratio_ge_1"] == pytest.approx(np.mean(np.array(ratios) >= 1.0))
    below = [w["ratio_ci95"][1] < 1.0 for w in out["worlds"]]
    assert s["share_ci_below_1"] == pytest.approx(np.mean(below))
    # Worlds where a miss drives users away more are worse for every policy: the returns
    # move with the parameter, so the sweep is not looking at one world over and over.
    miss = {w["label"]: w["returns"]["popular"] for w in out["worlds"]}
    assert miss["leave_miss_factor=1.3"] < miss["leave_miss_factor=1"]


def test_a_model_with_nothing_unidentified_is_one_world(world) -> None:
    model, dataset = world
    fixed = with_response(model, {p: float(getattr(model, p)) for p in RESPONSE_PARAMETERS})
    n = len(model.item_ids)
    out = sweep(fixed, dataset, ENV, PopularPolicy(n), {"popular": PopularPolicy(n)}, 16, 20, 0)
    assert out["message"].startswith("nothing to sweep")
    assert [w["label"] for w in out["worlds"]] == ["centre"] and out["swept"] == []


# --------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlrec.agents.config import load_agent_config
    from rlrec.agents.train import train_agent

    root = tmp_path_factory.mktemp("sens_run")
    env = write_yaml(root / "env.yaml", TINY_ENV)
    agent = write_yaml(root / "agent.yaml", {**TINY_AGENT, "total_timesteps": 64})
    result = train_agent(
        str(env), load_agent_config(str(agent)), root / "run", seed=0, cache_dir=root / "cache"
    )
    return result.run_dir


def test_sweep_of_a_tiny_run_through_the_cli_is_deterministic(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sensitivity", str(tiny_run), "--points", "2", "--episodes", "6", "--seed", "3"]
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tiny_run / SENSITIVITY_FILE).read_text())
    assert printed == written
    assert written["baselines"] == ["greedy_supervised", "random", "popular", "category_markov"]
    assert [w["design"] for w in written["worlds"]].count("latin-hypercube") == 2
    first = (tiny_run / SENSITIVITY_FILE).read_bytes()
    assert main(argv) == 0  # the text table, same seed: the same file
    text = capsys.readouterr().out
    assert "mean ratio" in text and "centre" in text and "Spearman" in text
    assert (tiny_run / SENSITIVITY_FILE).read_bytes() == first


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [(["--points", "-1"], "--points: -1"), (["--episodes", "0"], "--episodes: 0")],
)
def test_bad_counts_are_one_line_errors_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    assert main(["sensitivity", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / SENSITIVITY_FILE).exists()


def test_a_run_with_nothing_unidentified_says_so_and_exits_zero(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import yaml

    from rlrec.models.sim_model import load_sim_model

    # The same run, pointed at a copy of its user model whose response parameters are all set
    # by the user (as an env preset or exposure logs would): nothing is left to sweep.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    model = load_sim_model(config["sim_dir"])
    fixed = with_response(model, {p: float(getattr(model, p)) for p in RESPONSE_PARAMETERS})
    config["sim_dir"] = str(fixed.save(tmp_path / "sim"))
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["sensitivity", str(run), "--points", "4", "--episodes", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("nothing to sweep")
    payload = json.loads((run / SENSITIVITY_FILE).read_text())
    assert len(payload["worlds"]) == 1 and payload["swept"] == []
    assert payload["summary"]["spearman"] == {}
