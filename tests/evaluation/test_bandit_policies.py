"""Evaluation policies for bandit OPE and the --policy SPEC parser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlrec.data.bandit import BanditFeedback
from rlrec.errors import UserError
from rlrec.evaluation.ope.bandit_policies import (
    BernoulliTSPolicy,
    RunDirectoryPolicy,
    UniformRandomPolicy,
    bts_action_dist,
    load_bts_prior,
    parse_policy_spec,
    uniform_action_dist,
)


def small_feedback(n_actions: int = 4, len_list: int = 2) -> BanditFeedback:
    return BanditFeedback(
        action=np.array([0, 1, 2, 3]) % n_actions,
        position=np.array([0, 1, 0, 1]) % len_list,
        reward=np.array([0.0, 1.0, 0.0, 0.0]),
        pscore=np.full(4, 0.25),
        context=np.zeros((4, 0)),
        n_actions=n_actions,
        len_list=len_list,
    )


def test_uniform_distribution() -> None:
    dist = uniform_action_dist(80, 3)
    assert dist.shape == (1, 80, 3)
    np.testing.assert_allclose(dist, 1 / 80)
    assert isinstance(parse_policy_spec("random"), UniformRandomPolicy)
    np.testing.assert_allclose(UniformRandomPolicy().action_dist(small_feedback()), 0.25)


def test_bts_is_seeded_normalised_and_follows_the_prior() -> None:
    alpha = np.array([50.0, 10.0, 1.0, 1.0])
    beta = np.array([50.0, 90.0, 99.0, 99.0])  # means 0.5, 0.1, 0.01, 0.01
    a = bts_action_dist(alpha, beta, len_list=2, n_sim=4000, seed=3)
    b = bts_action_dist(alpha, beta, len_list=2, n_sim=4000, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 4, 2)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    # Item 0 is almost always first, item 1 almost always second.
    assert a[0, 0, 0] > 0.99 and a[0, 1, 1] > 0.95
    # No item shows in two positions of one slate: each item's total is at most 1.
    assert np.all(a[0].sum(axis=1) <= 1.0 + 1e-12)


def test_bts_matches_obp_reference_distribution_within_monte_carlo_error(obd_dir) -> None:
    reference = json.loads((obd_dir / "obp_reference.json").read_text())
    ref = np.asarray(reference["all:random->bts"]["eval_action_dist_round0"])  # (80, 3)
    alpha, beta = load_bts_prior(obd_dir / "bts_prior.json")
    ours = bts_action_dist(alpha, beta, len_list=3, n_sim=100_000, seed=0)[0]
    # Both are frequencies of 100,000 draws: the difference has sd sqrt(2 p (1 - p) / n).
    sd = np.sqrt(2 * np.maximum(ref, 1e-5) * (1 - ref) / 100_000)
    assert np.max(np.abs(ours - ref) / sd) < 5.0


def test_prior_file_layouts(tmp_path) -> None:
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"alpha": [1, 2], "beta": [3, 4]}))
    alpha, _ = load_bts_prior(flat)
    np.testing.assert_array_equal(alpha, [1.0, 2.0])
    nested = tmp_path / "nested.json"
    nested.write_text(
        json.dumps({"men": {"alpha": [1, 2], "beta": [3, 4]}, "all": {"alpha": [5], "beta": [6]}})
    )
    with pytest.raises(UserError, match=r"pick one with bts:.*#CAMPAIGN"):
        load_bts_prior(nested)
    alpha, _ = load_bts_prior(nested, "all")
    np.testing.assert_array_equal(alpha, [5.0])
    policy = parse_policy_spec(f"bts:{nested}#men", n_sim=100, seed=1)
    assert isinstance(policy, BernoulliTSPolicy)
    assert policy.name == f"bts:{nested}#men"
    dist = policy.action_dist(small_feedback(n_actions=2, len_list=1))
    assert dist.shape == (1, 2, 1)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"alpha": [1, 2], "beta": [1]}', "equally long"),
        ('{"alpha": [1, 0], "beta": [1, 1]}', "must be > 0"),
        ('{"alpha": ["a"], "beta": [1]}', "lists of positive numbers"),
        ('{"x": {"beta": [1]}}', "found campaigns"),
    ],
)
def test_bad_prior_files(tmp_path, content: str, match: str) -> None:
    path = tmp_path / "prior.json"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        load_bts_prior(path)


def test_prior_size_must_match_the_log(tmp_path) -> None:
    path = tmp_path / "prior.json"
    path.write_text(json.dumps({"alpha": [1, 2, 3], "beta": [1, 1, 1]}))
    policy = parse_policy_spec(f"bts:{path}", n_sim=10)
    with pytest.raises(UserError, match=r"the prior has 3 items but .* has 4 actions"):
        policy.action_dist(small_feedback())


def test_spec_errors(tmp_path) -> None:
    with pytest.raises(UserError, match=r"expected 'random', 'bts:PRIOR\.json' or a run directory"):
        parse_policy_spec("greedy")
    with pytest.raises(UserError, match="no such prior file"):
        parse_policy_spec(f"bts:{tmp_path / 'missing.json'}")
    with pytest.raises(UserError, match="needs a prior file"):
        parse_policy_spec("bts:")
    with pytest.raises(UserError, match="not a run directory"):
        parse_policy_spec(str(tmp_path))


def test_run_directory_is_recognised_and_its_loader_is_a_hook(tmp_path, monkeypatch) -> None:
    (tmp_path / "policy.json").write_bytes(b"")
    policy = parse_policy_spec(str(tmp_path))
    assert isinstance(policy, RunDirectoryPolicy)
    with pytest.raises(UserError, match="no loader for run-directory policies"):
        policy.action_dist(small_feedback())

    def loader(run_dir, feedback):
        return np.full((feedback.n_rounds, feedback.n_actions, feedback.len_list), 0.25)

    monkeypatch.setattr("rlrec.evaluation.ope.bandit_policies.RUN_POLICY_ACTION_DIST", loader)
    assert policy.action_dist(small_feedback()).shape == (4, 4, 2)
