"""A lifecycle run that acts by its adaptive plan: saved, loaded, evaluated; refused elsewhere."""

from __future__ import annotations

import dataclasses
import json

import pytest

import rlrec.agents.robust as robust
import rlrec.agents.train as train
from rlrec.agents.config import load_agent_config
from rlrec.agents.train import (
    ADAPTIVE_CANDIDATE_FILE,
    ADAPTIVE_FILE,
    load_run,
    require_stateless,
    train_agent,
)
from rlrec.cli import main
from rlrec.errors import UserError
from tests.agents.conftest import TINY_AGENT, TINY_ENV, write_yaml

pytestmark = pytest.mark.slow


def prefer(name_start: str, real):
    """``select_robust`` that picks the first candidate whose name starts with ``name_start``."""

    def choose(*args, **kwargs):
        choice = real(*args, **kwargs)
        picked = [c for c in choice.ratios if c.startswith(name_start)]
        return dataclasses.replace(choice, chosen=picked[0]) if picked else choice

    return choose


def test_an_adaptive_run_round_trip(tmp_path, monkeypatch, capsys):
    env = {**TINY_ENV, "env": {**TINY_ENV["env"], "episode": "lifecycle", "horizon_days": 2}}
    env_path = write_yaml(tmp_path / "life.yaml", env)
    agent = {**TINY_AGENT, "planner": True, "selection_draws": 1, "selection_episodes": 40}
    agent_path = write_yaml(tmp_path / "agent.yaml", agent)
    monkeypatch.setattr(robust, "select_robust", prefer("adaptive[", robust.select_robust))
    monkeypatch.setattr(train, "select_robust", prefer("adaptive", train.select_robust))
    run = tmp_path / "run"
    train_agent(env_path, load_agent_config(agent_path), run, timesteps=64, cache_dir=tmp_path)
    record = json.loads((run / "robust.json").read_text())
    assert record["plan"]["chosen"].startswith("adaptive[")
    assert record["final"]["kept"] == "adaptive"
    assert (run / ADAPTIVE_FILE).is_file() and not (run / ADAPTIVE_CANDIDATE_FILE).exists()
    loaded = load_run(run)
    assert loaded.adaptive is not None and loaded.acting_policy is loaded.adaptive
    assert main(["evaluate", str(run), "--episodes", "20", "--seed", "1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["policies"]["ppo"]["sessions_per_user"] >= 1.0
    assert payload["agent_acts_by"] == "adaptive_plan"
    assert main(["evaluate", str(run), "--episodes", "20", "--seed", "1"]) == 0
    assert "the ppo row is the run's adaptive plan" in capsys.readouterr().out
    with pytest.raises(UserError, match="adaptive plan"):
        require_stateless(loaded, "rlrec export")
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 2
    assert "adaptive plan" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()
