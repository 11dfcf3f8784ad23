"""Session-kNN, V-SKNN, item-kNN and re-visit on tiny logs computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlrec.evaluation.history import revisit_scores
from rlrec.evaluation.neighbors import (
    fit_item_knn,
    fit_session_index,
    item_knn_scores,
    knn_candidates,
    session_knn_scores,
    top_per_row,
)
from rlrec.models.sequences import Steps

N_ITEMS = 6


def _steps(sessions: list[list[int]]) -> Steps:
    items = np.array([i for s in sessions for i in s], dtype=np.int64)
    offsets = np.r_[0, np.cumsum([len(s) for s in sessions])].astype(np.int64)
    return Steps(offsets=offsets, items=items, categories=np.zeros_like(items))


@pytest.fixture
def index():  # type: ignore[no-untyped-def]
    # S0 = {0, 1, 2} (oldest), S1 = {1, 3}, S2 = {2, 3, 4}, S3 = {5} (newest); S0 repeats 1.
    train = _steps([[0, 1, 2, 1], [1, 3], [2, 3, 4], [5]])
    return fit_session_index(train, np.array([10, 20, 30, 40]), N_ITEMS)


def test_session_index_holds_item_sets_recency_and_idf(index) -> None:  # type: ignore[no-untyped-def]
    assert index.sessions.toarray()[0].tolist() == [1, 1, 1, 0, 0, 0]  # a set: 1 once
    assert index.sizes.tolist() == [3, 2, 3, 1]
    assert index.recency.tolist() == [0, 1, 2, 3]
    # idf = log(sessions / steps on the item): item 1 has 3 steps in 4 sessions.
    assert index.idf[1] == pytest.approx(math.log(4 / 3))
    assert index.idf[4] == pytest.approx(math.log(4))


def test_sknn_scores_sum_the_cosines_of_the_k_nearest(index) -> None:  # type: ignore[no-untyped-def]
    cand = knn_candidates(index, np.array([[-1, -1, 1, 2]]))  # current session {1, 2}
    assert sorted(cand.col.tolist()) == [0, 1, 2]  # S3 shares nothing
    cos = {0: 2 / math.sqrt(6), 1: 1 / math.sqrt(4), 2: 1 / math.sqrt(6)}
    for c, value in zip(cand.col, cand.cosine, strict=True):
        assert value == pytest.approx(cos[int(c)])
    # k = 2 of all 3 candidates: S0 and S1.
    s = session_knn_scores(index, cand, "sknn", k=2, sample_size=10)[0]
    expected = [cos[0], cos[0] + cos[1], cos[0], cos[1], 0.0, 0.0]
    assert s.tolist() == pytest.approx(expected)
    # Sampling the 2 most recent candidates first (S1, S2), then k = 2: S1 and S2.
    s = session_knn_scores(index, cand, "sknn", k=2, sample_size=2)[0]
    assert s.tolist() == pytest.approx([0.0, cos[1], cos[2], cos[1] + cos[2], cos[2], 0.0])


def test_vsknn_weights_positions_steps_and_idf(index) -> None:  # type: ignore[no-untyped-def]
    cand = knn_candidates(index, np.array([[-1, -1, 1, 2]]))
    # Linear decay: item 1 at position 1 of 2 weighs 0.5, item 2 weighs 1; / 2 distinct items.
    vec = {0: (0.5 + 1.0) / 2, 1: 0.5 / 2, 2: 1.0 / 2}
    step = {0: 1, 1: 2, 2: 1}  # S1 holds only item 1, one step back from the current item
    for c, v, st in zip(cand.col, cand.vector, cand.step, strict=True):
        assert v == pytest.approx(vec[int(c)])
        assert st == step[int(c)]
    s = session_knn_scores(index, cand, "vsknn", k=3, sample_size=10, idf_weight=0.0)[0]
    w = {c: vec[c] / step[c] for c in vec}
    assert s.tolist() == pytest.approx([w[0], w[0] + w[1], w[0] + w[2], w[1] + w[2], w[2], 0.0])
    # k = 2 keeps S0 and S2; the IDF term multiplies each item's votes by 1 + 2 idf(i).
    s = session_knn_scores(index, cand, "vsknn", k=2, sample_size=10, idf_weight=2.0)[0]
    base = np.array([w[0], w[0], w[0] + w[2], w[2], w[2], 0.0])
    assert s.tolist() == pytest.approx((base * (1 + 2.0 * index.idf)).tolist())


def test_vsknn_step_is_the_most_recent_shared_item_with_repeats(index) -> None:  # type: ignore[no-untyped-def]
    # Prefix 3, 1, 3, 0: item 3's latest position is 3 of 4 (one step back), item 1 is 3 back.
    cand = knn_candidates(index, np.array([[3, 1, 3, 0]]))
    by_col = dict(zip(cand.col.tolist(), zip(cand.step, cand.vector, strict=True), strict=True))
    assert by_col[1][0] == 2  # S1 = {1, 3}: item 3, two steps back (current item 0 is 1 back)
    assert by_col[1][1] == pytest.approx((2 / 4 + 3 / 4) / 3)
    assert by_col[0][0] == 1  # S0 holds the current item 0
    assert by_col[2][0] == 2  # S2 holds item 3


def test_vsknn_step_is_exact_far_back() -> None:
    # 120 distinct items, the shared one 117 steps back: beyond one 50-step block.
    train = _steps([[0, 200], [5, 201]])
    idx = fit_session_index(train, np.array([1, 2]), 202)
    prefix = np.arange(3, 123)[None, :].copy()
    prefix[0, 3] = 5  # 120 - 3 = 117 steps back
    prefix[0, 0] = 0  # 120 steps back
    cand = knn_candidates(idx, prefix)
    steps = dict(zip(cand.col.tolist(), cand.step.tolist(), strict=True))
    assert steps == {0: 120, 1: 117}


def test_item_knn_is_shrunk_cosine_of_co_occurrence() -> None:
    train = _steps([[0, 1], [0, 1, 2], [1, 2]])
    sim = fit_item_knn(train, 3, shrinkage=0.0).toarray()
    # Sessions holding: item 0: 2, item 1: 3, item 2: 2; together (0,1): 2, (0,2): 1, (1,2): 2.
    assert sim[0, 1] == pytest.approx(2 / math.sqrt(6))
    assert sim[0, 2] == pytest.approx(1 / 2)
    assert np.diag(sim).tolist() == [0, 0, 0]
    shrunk = fit_item_knn(train, 3, shrinkage=20.0).toarray()
    assert shrunk[0, 2] == pytest.approx(1 / (2 + 20))
    pop = np.array([2.0, 3.0, 2.0])
    s = item_knn_scores(fit_item_knn(train, 3, 0.0), np.array([0, 2]), k=1, popularity=pop)
    assert s[0].tolist() == pytest.approx([0, 2 / math.sqrt(6), 0])
    assert s[1].tolist() == pytest.approx([0, 2 / math.sqrt(6), 0])


def test_top_per_row_breaks_ties_by_the_next_key() -> None:
    row = np.array([0, 0, 0, 1, 1])
    first = np.array([1.0, 2.0, 2.0, 5.0, 4.0])
    second = np.array([0, 1, 7, 0, 0])
    assert top_per_row(row, (first, second), 1).tolist() == [False, False, True, True, False]
    assert top_per_row(row, (first,), 5).all()


def test_revisit_ranks_the_users_recent_items_by_recency() -> None:
    timeline = np.array([5, 3, 5, 7, 2, 9])
    s = revisit_scores(timeline, end=np.array([5, 5]), start=np.array([0, 3]), window=3, n_items=10)
    # Row 0: 2 (1 back) = 1, 7 (2 back) = 2/3, 5 (3 back) = 1/3, 3 is outside the window.
    assert s[0, [2, 7, 5, 3]].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    # Row 1 may not look before index 3 (its session's, or user's, first step).
    assert s[1].nonzero()[0].tolist() == [2, 7]
    # An item seen twice keeps its most recent position.
    s = revisit_scores(timeline, np.array([5]), np.array([0]), window=5, n_items=10)
    assert s[0, 5] == pytest.approx(1 - 2 / 5)
