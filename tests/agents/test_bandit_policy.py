"""A trained run as a bandit evaluation policy: slate marginals, action matching, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrec.agents.bandit_policy import (
    log_action_of_catalog,
    plackett_luce_slate_dist,
    run_action_dist,
)
from rlrec.agents.config import load_agent_config
from rlrec.agents.train import build_encoder, train_agent
from rlrec.cli import main
from rlrec.data.bandit import load_obd
from rlrec.envs.presets import build_artifacts, load_env_preset
from rlrec.errors import UserError
from tests.cli.test_cli_ope import write_log


def test_slate_marginals_are_draws_without_replacement():
    p = np.array([0.5, 0.3, 0.2])
    dist = plackett_luce_slate_dist(p, len_list=2, n_sim=200_000, seed=0)
    assert dist.shape == (1, 3, 2)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    # Second position: sum over the first draw i != j of p_i p_j / (1 - p_i).
    second = [sum(p[i] * p[j] / (1 - p[i]) for i in range(3) if i != j) for j in range(3)]
    np.testing.assert_allclose(dist[0, :, 0], p, atol=0.005)
    np.testing.assert_allclose(dist[0, :, 1], second, atol=0.005)
    again = plackett_luce_slate_dist(p, len_list=2, n_sim=1000, seed=3)
    np.testing.assert_array_equal(again, plackett_luce_slate_dist(p, 2, 1000, 3))
    with pytest.raises(UserError, match="fewer than the 2 slate positions"):
        plackett_luce_slate_dist(np.array([1.0, 0.0, 0.0]), 2, 10, 0)


def test_catalog_items_match_log_actions_by_raw_id_when_they_are_its_items():
    np.testing.assert_array_equal(log_action_of_catalog(np.array(["2", "0", "1"])), [2, 0, 1])
    # Not the integers 0..n-1: the catalog index.
    np.testing.assert_array_equal(log_action_of_catalog(np.array(["5", "0", "1"])), [0, 1, 2])
    np.testing.assert_array_equal(log_action_of_catalog(np.array(["a", "b"])), [0, 1])


@pytest.fixture(scope="module")
def tiny_run(tiny_presets, tmp_path_factory) -> Path:
    preset = load_env_preset(tiny_presets["env"])
    artifacts = build_artifacts(preset, tiny_presets["cache"])
    build_encoder(preset, artifacts.dataset_dir, tiny_presets["cache"])
    run = tmp_path_factory.mktemp("bandit") / "run"
    train_agent(
        tiny_presets["env"],
        load_agent_config(tiny_presets["frozen"]),
        run,
        timesteps=64,
        cache_dir=tiny_presets["cache"],
    )
    return run


@pytest.mark.slow
def test_run_directory_policy_through_rlrec_ope_bandit(tiny_run, tmp_path, capsys):
    # The tiny env's catalog has 40 items (TINY_ENV env.catalog_size).
    logs = write_log(tmp_path / "logs.csv", 400, seed=0, n_items=40, len_list=2)
    feedback = load_obd(logs)
    assert feedback.n_actions == 40
    dist = run_action_dist(tiny_run, feedback, n_sim=5000, seed=1)
    assert dist.shape == (1, 40, 2)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    args = ["ope", "bandit", "--logs", str(logs), "--policy", str(tiny_run), "--json"]
    code = main([*args, "--n-bootstrap", "20", "--n-folds", "2", "--n-sim", "5000"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert report["n_rounds"] == 400
    assert all(np.isfinite(e["value"]) for e in report["estimates"].values())

    # A log with another number of actions is refused in one line.
    other = write_log(tmp_path / "other.csv", 200, seed=1, n_items=4, len_list=2)
    assert main(["ope", "bandit", "--logs", str(other), "--policy", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the run's catalog has 40 items" in err and "has 4 actions" in err
