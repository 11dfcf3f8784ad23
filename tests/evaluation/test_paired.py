from __future__ import annotations

import numpy as np
import pytest

from rlrec.evaluation.paired import (
    PAIRED_METRICS,
    paired_comparison,
    paired_figures,
    paired_lines,
)


def _values(rng: np.random.Generator, n: int, p: float) -> dict[str, np.ndarray]:
    hits = (rng.random(n) < p).astype(float)
    return {"ndcg@10": hits * 0.5, "hr@10": hits, "category_acc@1": hits}


def test_identical_models_are_level_with_a_zero_interval() -> None:
    rng = np.random.default_rng(0)
    model = _values(rng, 200, 0.3)
    out = paired_comparison(model, {"copy": dict(model)}, np.arange(200) // 4)
    for metric in PAIRED_METRICS:
        cell = out["best"][metric]
        assert cell == {
            "baseline": "copy",
            "difference": 0.0,
            "ci95": [0.0, 0.0],
            "verdict": "level",
        }
    assert out["n_clusters"] == 50
    assert "over users" in out["method"]


def test_a_model_better_on_every_target_is_above_and_the_reverse_below() -> None:
    n = 120
    good = {"hr@10": np.ones(n), "ndcg@10": np.ones(n)}
    bad = {"hr@10": np.zeros(n), "ndcg@10": np.full(n, 0.25)}
    clusters = np.arange(n) % 30
    above = paired_comparison(good, {"bad": bad}, clusters)
    assert above["best"]["hr@10"]["verdict"] == "above"
    assert above["best"]["ndcg@10"]["difference"] == pytest.approx(0.75)
    assert "category_acc@1" not in above["best"]  # neither side predicts categories
    below = paired_comparison(bad, {"good": good}, clusters)
    assert below["best"]["hr@10"]["verdict"] == "below"


def test_the_strongest_baseline_per_metric_is_the_one_compared() -> None:
    rng = np.random.default_rng(1)
    n = 400
    model = _values(rng, n, 0.4)
    weak, strong = _values(rng, n, 0.1), _values(rng, n, 0.6)
    strong = {k: v for k, v in strong.items() if k != "category_acc@1"}  # items only
    out = paired_comparison(model, {"weak": weak, "strong": strong}, np.arange(n))
    assert out["best"]["ndcg@10"]["baseline"] == "strong"
    assert out["best"]["category_acc@1"]["baseline"] == "weak"
    assert set(out["baselines"]["strong"]) == {"ndcg@10", "hr@10"}
    for name, base in (("weak", weak), ("strong", strong)):
        for metric, cell in out["baselines"][name].items():
            assert cell["difference"] == pytest.approx(model[metric].mean() - base[metric].mean())
            assert cell["ci95"][0] <= cell["difference"] <= cell["ci95"][1]


def test_correlated_targets_of_one_user_widen_the_interval() -> None:
    # 40 users x 25 targets; each user's difference is shared by all their targets. Treating
    # the 1,000 targets as independent would understate the noise about five times.
    rng = np.random.default_rng(2)
    user = np.repeat(np.arange(40), 25)
    effect = rng.normal(0.0, 0.2, 40)[user]
    model = {"hr@10": 0.5 + effect}
    base = {"hr@10": np.full(1000, 0.5)}
    by_user = paired_comparison(model, {"b": base}, user, seed=3)["best"]["hr@10"]["ci95"]
    by_target = paired_comparison(model, {"b": base}, np.arange(1000), seed=3)
    lo, hi = by_target["best"]["hr@10"]["ci95"]
    assert (by_user[1] - by_user[0]) > 3.0 * (hi - lo)
    # The user-level interval has about the width of the users' mean's +-1.96 standard errors.
    se = effect[::25].std(ddof=1) / np.sqrt(40)
    assert by_user[1] - by_user[0] == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_the_same_seed_gives_the_same_interval_and_bad_input_is_refused() -> None:
    rng = np.random.default_rng(4)
    model, base = _values(rng, 300, 0.5), _values(rng, 300, 0.4)
    clusters = np.arange(300) // 3
    first = paired_comparison(model, {"b": base}, clusters, n_resamples=200, seed=7)
    assert paired_comparison(model, {"b": base}, clusters, n_resamples=200, seed=7) == first
    other = paired_comparison(model, {"b": base}, clusters, n_resamples=200, seed=8)
    assert other["best"]["hr@10"]["ci95"] != first["best"]["hr@10"]["ci95"]
    with pytest.raises(ValueError, match="n_resamples"):
        paired_comparison(model, {"b": base}, clusters, n_resamples=0)
    with pytest.raises(ValueError, match="b hr@10"):
        paired_comparison(model, {"b": {"hr@10": np.zeros(5)}}, clusters)
    empty = paired_comparison({"hr@10": np.zeros(0)}, {"b": {"hr@10": np.zeros(0)}}, [])
    assert empty["best"] == {} and empty["baselines"] == {}


def test_figures_and_lines_read_the_verdicts() -> None:
    n = 60
    good = {"hr@10": np.ones(n), "ndcg@10": np.ones(n)}
    bad = {"hr@10": np.zeros(n), "ndcg@10": np.zeros(n)}
    out = paired_comparison(good, {"bad": bad}, np.arange(n))
    flat = paired_figures(out, "log")
    assert flat["log_encoder_minus_best_hr_at_10"] == 1.0
    assert flat["log_encoder_minus_best_ndcg_at_10_verdict"] == "above"
    assert flat["log_encoder_minus_best_hr_at_10_baseline"] == "bad"
    assert flat["log_encoder_minus_best_hr_at_10_ci95_low"] == 1.0
    assert flat["log_encoder_above_baselines_95"] is True
    mixed = paired_comparison(good, {"good": dict(good)}, np.arange(n))
    assert paired_figures(mixed, "log")["log_encoder_above_baselines_95"] is False
    assert paired_figures({"best": {}}, "log")["log_encoder_above_baselines_95"] is False
    lines = paired_lines(out)
    assert lines[0].startswith("encoder minus the strongest baseline, cluster bootstrap")
    assert any("hr@10" in line and "above it with 95% confidence" in line for line in lines)
