"""The OPE containers that hold sessions as offsets share the CSR base ``Ragged``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlrec.data.ragged import Ragged
from rlrec.evaluation.ope.logged_sessions import Decisions
from rlrec.evaluation.ope.sequential import LoggedSessions, prepare_sessions
from rlrec.evaluation.ope.simulated_logging import SimulatedLog


@pytest.mark.parametrize(
    "container", [LoggedSessions, SimulatedLog, Decisions], ids=lambda c: c.__name__
)
def test_ope_containers_are_ragged(container: type[Ragged]) -> None:
    assert issubclass(container, Ragged)
    names = [f.name for f in dataclasses.fields(container)]
    assert names[0] == "offsets" and "session_offsets" not in names


def test_logged_sessions_offsets_follow_the_horizon_cut() -> None:
    # Sessions of 3, 1 and 5 steps, cut at 2 steps: 2, 1 and 2 steps kept.
    offsets = np.array([0, 3, 4, 9])
    n = int(offsets[-1])
    sessions = prepare_sessions(
        session_offsets=offsets,
        reward=np.ones(n),
        behaviour_prob=np.full(n, 0.5),
        target_prob=np.full(n, 0.5),
        horizon=2,
    )
    np.testing.assert_array_equal(sessions.offsets, [0, 2, 3, 5])
    np.testing.assert_array_equal(sessions.lengths, [2, 1, 2])
    assert sessions.n_sessions == 3 == sessions.reward.shape[0]
    assert sessions.bounds(2) == (3, 5)
    # The padded grid holds each session's kept rewards and zeros after its end.
    np.testing.assert_array_equal(sessions.reward.sum(axis=1), [2.0, 1.0, 2.0])
