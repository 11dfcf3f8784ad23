"""``rlrec evaluate``: a planned agent in the fitted and the truth world, the ratio to the best
non-oracle baseline, and the never-lose check kept in robust.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlrec.agents.config import AgentConfig
from rlrec.agents.train import train_agent
from rlrec.cli import main
from rlrec.evaluation.compare import is_baseline
from rlrec.workflows.evaluate import ratio_to_best
from tests.agents.conftest import TINY_AGENT


@pytest.fixture(scope="module")
def planned_run(tiny_presets, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "planned"
    agent = AgentConfig(
        **{
            **TINY_AGENT,
            "critic_arch": (16,),
            "planner": True,
            "selection_draws": 1,
            "selection_episodes": 100,
        }
    )
    train_agent(tiny_presets["env"], agent, run, timesteps=128, cache_dir=tiny_presets["cache"])
    return run


def test_the_run_keeps_its_plan_and_the_never_lose_check(planned_run) -> None:
    robust = json.loads((planned_run / "robust.json").read_text())
    assert robust["plan"]["chosen"] in robust["plan"]["candidates"]
    assert robust["final"]["kept"] in ("trained", "start")
    assert (planned_run / "plan.npz").is_file()


@pytest.mark.parametrize("world", ["fitted", "truth"])
def test_evaluate_in_both_worlds(planned_run, world, capsys) -> None:
    code = main(["evaluate", str(planned_run), "--episodes", "60", "--world", world, "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["world"] == world
    name = "eval.json" if world == "fitted" else "eval_truth.json"
    assert json.loads((planned_run / name).read_text()) == payload
    policies = payload["policies"]
    assert {"ppo", "planner", "popular", "category_markov", "oracle_myopic"} <= set(policies)
    best = payload["best_baseline"]
    assert is_baseline(best)
    assert policies[best]["return_mean"] == max(
        r["return_mean"] for n, r in policies.items() if is_baseline(n)
    )
    ratio = policies["ppo"]["return_mean"] / policies[best]["return_mean"]
    assert payload["ratio_to_best_baseline"] == pytest.approx(ratio)
    lo, hi = payload["ratio_ci95"]
    assert lo <= ratio <= hi


def test_truth_and_fitted_differ_for_the_same_users(planned_run) -> None:
    fitted = json.loads((planned_run / "eval.json").read_text())
    truth = json.loads((planned_run / "eval_truth.json").read_text())
    assert fitted["seed"] == truth["seed"]
    # The oracle reads the hidden state of its own world: it differs between the two.
    assert fitted["policies"] != truth["policies"]


def test_ratio_bootstrap_is_paired_and_seeded() -> None:
    rng = np.random.default_rng(0)
    base = rng.exponential(5.0, 500)
    returns = {"ppo": base * 1.1, "popular": base, "random": base * 0.1, "oracle_myopic": base * 9}
    out = ratio_to_best(returns, seed=1)
    assert out["best_baseline"] == "popular"  # the oracle is never a baseline
    assert out["ratio_to_best_baseline"] == pytest.approx(1.1)
    # Paired users: a constant ratio has a zero-width interval.
    assert out["ratio_ci95"] == pytest.approx([1.1, 1.1])
    assert ratio_to_best(returns, seed=1) == out
