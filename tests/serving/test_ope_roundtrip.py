"""Served traffic -> traffic log -> ``rlrec ope served`` -> the simulator's truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlrec.agents.train import load_run
from rlrec.cli import main
from rlrec.envs.batched import BatchedInterestDrift
from rlrec.serving.scorer import Scorer
from tests.serving.conftest import require_serve_extra
from tests.serving.helpers import histories_of

pytestmark = pytest.mark.timeout(300)

N_LOGGED = 6000
N_TRUTH = 20000


def sampled_truth(run, scorer: Scorer, n: int, seed: int) -> tuple[float, float]:
    """Mean first-step reward (and its standard error) of the scorer's sample mode on fresh
    simulated users: the value the offline estimate should find."""
    env = BatchedInterestDrift(n, run.sim_model, run.dataset, run.config.env)
    obs, _ = env.reset(seed=seed)
    contexts = [scorer.context(h) for h in histories_of(obs, scorer)]
    probs = scorer.probabilities(contexts)
    for row, context in zip(probs, contexts, strict=True):
        row[:] = scorer.served_distribution(row, scorer.eligible(context, True))
    draws = np.random.default_rng(seed).random((n, 1))
    actions = np.minimum((probs.cumsum(axis=1) < draws).sum(axis=1), scorer.n_actions - 1)
    _, reward, *_ = env.step(actions)
    return float(reward.mean()), float(reward.std() / np.sqrt(n))


def test_log_of_served_traffic_evaluates_another_policy_offline(server, world, tmp_path, capsys):
    require_serve_extra()
    import httpx

    run = load_run(world["run_a"])
    scorer = Scorer.load(world["export_a"])
    env = BatchedInterestDrift(N_LOGGED, run.sim_model, run.dataset, run.config.env)
    obs, _ = env.reset(seed=7)
    requests = [
        {
            "history": [{"item": item, "time": t} for item, t in events],
            "k": 1,
            "mode": "sample",
            "seed": 1000 + i,
            "request_id": f"ope-{i}",
        }
        for i, events in enumerate(histories_of(obs, scorer))
    ]
    served = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for lo in range(0, N_LOGGED, 250):
            batch = client.post("/recommend/batch", json={"requests": requests[lo : lo + 250]})
            assert batch.status_code == 200, batch.text
            served += [r["items"][0] for r in batch.json()["responses"]]
        actions = scorer.action_of_item[[scorer.index_of[item] for item in served]]
        _, reward, *_ = env.step(actions)
        # Ignored slates send no feedback: the log's missing reward is 0 (the default).
        for i in np.flatnonzero(reward):
            fb = {"request_id": f"ope-{i}", "reward": float(reward[i]), "item": served[i]}
            assert client.post("/feedback", json=fb).status_code == 200
    # This test's records only (other tests share the server and its log).
    log = tmp_path / "traffic.jsonl"
    log.write_text(
        "".join(
            line + "\n"
            for line in server.log.read_text().splitlines()
            if json.loads(line)["request_id"].startswith("ope-")
        )
    )
    capsys.readouterr()

    def ope(policy) -> dict:
        argv = ["ope", "served", "--log", str(log), "--policy", str(policy), "--json"]
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)

    # The behaviour policy evaluated on its own log: every weight is 1 (the logged and the
    # recomputed propensities agree), so IPW is the logged mean reward.
    same = ope(world["export_a"])
    assert same["n_decisions"] == N_LOGGED and same["counts"]["no_feedback"] > 0
    assert same["estimates"]["ipw"]["value"] == pytest.approx(reward.mean(), abs=1e-9)
    assert same["effective_sample_size"] == pytest.approx(N_LOGGED)
    # Policy b (trained further) from a's traffic, against b's value in the simulator.
    other = ope(world["export_b"])
    truth, truth_se = sampled_truth(run, Scorer.load(world["export_b"]), N_TRUTH, seed=8)
    low, high = other["estimates"]["snipw"]["ci95"]
    value = other["estimates"]["snipw"]["value"]
    assert low - 2 * truth_se <= truth <= high + 2 * truth_se, (value, truth, low, high)
    assert abs(value - truth) < abs(value - reward.mean()), (value, truth, reward.mean())
    assert other["estimates"]["ipw"]["value"] == pytest.approx(truth, abs=0.05)
