"""The shared definitions: best non-oracle baseline, ratios, fitted-vs-truth gaps, summaries."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.evaluation.compare import (
    best_baseline,
    fitted_vs_truth,
    is_baseline,
    paired_ratio_ci95,
    ratio,
    sensitivity_summary,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("popular", True),
        ("random", True),
        ("category_markov", True),
        ("greedy_supervised", True),
        ("ppo", False),
        ("planner", False),
        ("oracle_myopic", False),
        ("oracle_anything", False),
    ],
)
def test_is_baseline(name: str, expected: bool) -> None:
    assert is_baseline(name) is expected


def test_best_baseline_skips_the_agent_planner_and_oracles() -> None:
    returns = {"ppo": 9.0, "planner": 8.0, "oracle_myopic": 7.0, "popular": 5.0, "random": 1.0}
    assert best_baseline(returns) == ("popular", 5.0)
    assert best_baseline({"ppo": 1.0, "oracle_myopic": 2.0}) is None
    # A tie goes to the first listed, so the choice does not depend on dict hashing.
    assert best_baseline({"popular": 3.0, "category_markov": 3.0}) == ("popular", 3.0)


@pytest.mark.parametrize(
    ("value", "reference", "expected"),
    [(3.0, 2.0, 1.5), (0.0, 2.0, 0.0), (1.0, 0.0, None), (1.0, -1.0, None)],
)
def test_ratio(value: float, reference: float, expected: float | None) -> None:
    assert ratio(value, reference) == expected
    assert ratio(float("nan"), 1.0) is None and ratio(1.0, float("inf")) is None


def _p(mean: float) -> dict:
    return {"return_mean": mean, "return_ci95": [mean - 0.1, mean + 0.1]}


def test_fitted_vs_truth_gaps_and_the_agent_ratio() -> None:
    fitted = {"ppo": _p(6.0), "popular": _p(5.0), "random": _p(0.0), "oracle_myopic": _p(8.0)}
    truth = {
        "ppo": _p(4.5),
        "popular": _p(4.0),
        "random": _p(1.0),
        "oracle_myopic": _p(9.0),
        "extra": _p(2.0),  # not in the fitted evaluation: no gap to show
    }
    out = fitted_vs_truth(fitted, truth)
    assert list(out["policies"]) == ["ppo", "popular", "random", "oracle_myopic"]
    assert out["policies"]["ppo"]["gap"] == pytest.approx(-0.25)
    assert out["policies"]["popular"]["gap"] == pytest.approx(-0.2)
    assert out["policies"]["random"]["gap"] is None  # fitted return 0: no relative gap
    assert out["policies"]["ppo"]["truth_ci95"] == [4.4, 4.6]
    assert (out["agent"], out["best_baseline"]) == ("ppo", "popular")
    assert out["agent_ratio"] == pytest.approx(4.5 / 4.0)


def test_sensitivity_summary() -> None:
    ratios = [1.1, 0.9, 1.3, 1.0]
    out = sensitivity_summary(
        ratios,
        ["a", "b", "c", "d"],
        {"up": [3.0, 1.0, 4.0, 2.0], "down": [2.0, 4.0, 1.0, 3.0], "flat": [1.0] * 4},
    )
    assert out["n_worlds"] == 4
    assert out["mean_ratio"] == pytest.approx(1.075)
    assert (out["worst_ratio"], out["worst_world"]) == (0.9, "b")
    assert out["share_ratio_ge_1"] == 0.75  # 1.0 counts: level with the best baseline
    assert out["share_ci_below_1"] is None  # no intervals given
    # Ranks of the ratio: 3, 1, 4, 2 -> "up" has the same ranks, "down" the reverse.
    assert out["spearman"]["up"] == pytest.approx(1.0)
    assert out["spearman"]["down"] == pytest.approx(-1.0)
    assert out["spearman"]["flat"] is None


def test_paired_ratio_interval_is_narrower_than_the_unpaired_noise() -> None:
    rng = np.random.default_rng(0)
    users = rng.gamma(2.0, 2.0, size=400)  # how long each user stays: shared by both policies
    ours, theirs = 1.1 * users + rng.normal(0, 0.2, 400), users
    lo, hi = paired_ratio_ci95(ours, theirs, seed=1)
    assert lo < 1.1 < hi and lo > 1.0
    # Resampling users in pairs cancels the user-to-user spread; independent resampling
    # (what two separate intervals amount to) would be several times wider.
    boot = rng.integers(0, 400, size=(2000, 400))
    unpaired = ours[boot].mean(axis=1) / theirs[rng.integers(0, 400, size=(2000, 400))].mean(1)
    assert hi - lo < 0.5 * (np.quantile(unpaired, 0.975) - np.quantile(unpaired, 0.025))
    assert paired_ratio_ci95(ours, theirs, seed=1) == [lo, hi]  # seeded
    assert paired_ratio_ci95(np.ones(1), np.ones(1), seed=0) is None
    assert paired_ratio_ci95(np.full(5, 2.0), np.full(5, 4.0), seed=0) == [0.5, 0.5]
