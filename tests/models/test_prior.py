"""The response prior: draws stay in their ranges, identified parameters stay points."""

from __future__ import annotations

import numpy as np
import pytest

from rlrec.errors import UserError
from rlrec.models.prior import (
    RESPONSE_PARAMETERS,
    RESPONSE_PRIOR,
    prior_draws,
    unidentified,
    with_response,
)
from tests.envs.conftest import make_sim_model


def test_draws_cover_the_ranges_and_integers_are_whole() -> None:
    model = make_sim_model()
    draws = prior_draws(model, 4000, np.random.default_rng(0))
    assert draws.shape == (4000, len(RESPONSE_PARAMETERS))
    for j, name in enumerate(RESPONSE_PARAMETERS):
        r = RESPONSE_PRIOR[name]
        col = draws[:, j]
        assert col.min() >= r.low and col.max() <= r.high, name
        # Spread over the range, not a point (uniform: both quarters are hit).
        assert (
            col.min()
            < r.low + 0.25 * (r.high - r.low)
            < r.high - 0.25 * (r.high - r.low)
            < col.max()
        )
        if r.integer:
            assert np.all(col == np.round(col))
            assert set(np.unique(col)) == set(range(int(r.low), int(r.high) + 1))


def test_user_set_parameters_are_points_and_same_seed_same_draws() -> None:
    model = with_response(make_sim_model(), {"leave_streak_factor": 1.0})
    assert "leave_streak_factor" not in unidentified(model)
    assert model.provenance["leave_streak_factor"].source == "user"
    a = prior_draws(model, 50, np.random.default_rng(3))
    b = prior_draws(model, 50, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    j = RESPONSE_PARAMETERS.index("leave_streak_factor")
    assert np.all(a[:, j] == 1.0)


def test_with_response_refuses_unknown_names_and_bad_values() -> None:
    model = make_sim_model()
    with pytest.raises(UserError, match="not one of"):
        with_response(model, {"boredom": 1.0})
    with pytest.raises(UserError, match="leave_streak_factor must be >= 1"):
        with_response(model, {"leave_streak_factor": 0.5})
