from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlrec.analytics.cross_sell import (
    MODEL,
    CrossSellTask,
    category_pairs,
    evaluate_next_category,
    ranking_metrics,
)
from rlrec.analytics.periods import DAY_MS, period_log
from rlrec.data import load_dataset
from rlrec.data.prepare import prepare
from tests.analytics.conftest import T0


def test_ranking_metrics_by_hand() -> None:
    scores = np.array([[0.9, 0.5, 0.1, -np.inf], [0.1, 0.2, 0.3, 0.4]])
    targets = np.array([[False, True, False, True], [True, False, False, False]])
    m = ranking_metrics(scores, targets, k=2)
    # Row 0: top-2 = [0, 1], one of two targets hit at rank 2. Row 1: top-2 = [3, 2], no hit.
    assert m["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    ndcg0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert m["ndcg@2"] == pytest.approx(ndcg0 / 2)


def test_pairs_count_users_with_x_before_y(make_log) -> None:
    # u0: c0 then c1; u1: c0 then c1; u2: c1 then c0; u3: c2 only.
    user = np.array([0, 0, 1, 1, 2, 2, 3])
    cat = np.array([0, 1, 0, 1, 1, 0, 2])
    ts = T0 + np.array([0, 1, 0, 1, 0, 1, 0]) * DAY_MS + np.arange(7)
    log = period_log(make_log(user, cat, ts + 3 * np.arange(7) * DAY_MS // 7), DAY_MS // 4)
    pairs = category_pairs(log, min_support=1).set_index(["antecedent", "consequent"])
    assert pairs.loc[("c0", "c1"), "support"] == 2
    assert pairs.loc[("c0", "c1"), "confidence"] == pytest.approx(2 / 3)
    assert pairs.loc[("c0", "c1"), "lift"] == pytest.approx((2 / 3) / (3 / 4))
    assert pairs.loc[("c1", "c0"), "support"] == 1


def _cutoffs(ds) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    cut = ds.meta["split"]["cutoffs_ms"]
    return int(cut["valid"]), int(cut["test"])


def test_model_beats_association_rules_on_synthetic(default_world: Path) -> None:
    ds = load_dataset(default_world)
    log = period_log(ds, DAY_MS)
    calls = []

    def uniform(task: CrossSellTask) -> np.ndarray:  # the hook an encoder head plugs into
        calls.append(len(task.user))
        return np.zeros(task.allowed.shape)

    result = evaluate_next_category(log, 10, _cutoffs(ds), extra_scorers={"uniform": uniform})
    m = result.metrics
    assert m[MODEL]["recall@10"] > m["association_rules"]["recall@10"] + 0.05, m
    assert m[MODEL]["recall@10"] > m["markov"]["recall@10"], m
    assert calls == [m[MODEL]["targets"]] and m["uniform"]["recall@10"] < m[MODEL]["recall@10"]
    assert result.params["coefficients"] is not None
    first = result.predictions.groupby("user").first()
    assert (first["rank"] == 1).all() and result.predictions["rank"].max() == 10


def test_model_beats_association_rules_on_taobao(taobao_csv: Path, tmp_path: Path) -> None:
    ds = load_dataset(prepare([taobao_csv], preset="taobao", out=tmp_path / "taobao"))
    result = evaluate_next_category(period_log(ds, DAY_MS), 10, _cutoffs(ds))
    m = result.metrics
    assert m[MODEL]["targets"] >= 30
    assert m[MODEL]["recall@10"] > m["association_rules"]["recall@10"], m
