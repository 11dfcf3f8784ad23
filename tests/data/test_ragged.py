"""The CSR base shared by the session containers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlrec.data.dataset import SessionArrays
from rlrec.data.ragged import Ragged
from rlrec.envs.dynamics import WarmStarts
from rlrec.models.sequences import Steps
from rlrec.models.transition import OrganicSessions, StepLog


def test_ragged_properties_match_session_ids() -> None:
    # Sessions 0..3 with 2, 0, 3 and 1 rows; the lengths are counted from the ids, not offsets.
    session_of_row = np.array([0, 0, 2, 2, 2, 3])
    offsets = np.array([0, 2, 2, 5, 6])
    ragged = Ragged(offsets)
    assert ragged.n_sessions == 4
    np.testing.assert_array_equal(ragged.lengths, np.bincount(session_of_row, minlength=4))
    assert [ragged.bounds(s) for s in range(4)] == [(0, 2), (2, 2), (2, 5), (5, 6)]
    assert all(type(v) is int for v in ragged.bounds(3))


def test_empty_ragged() -> None:
    ragged = Ragged(np.zeros(1, dtype=np.int64))
    assert ragged.n_sessions == 0
    assert ragged.lengths.shape == (0,)


@pytest.mark.parametrize(
    "container",
    [SessionArrays, Steps, StepLog, OrganicSessions, WarmStarts],
    ids=lambda c: c.__name__,
)
def test_containers_share_the_base(container: type[Ragged]) -> None:
    """Each container is a Ragged whose first field is still ``offsets`` (positional callers)."""
    assert issubclass(container, Ragged)
    names = [f.name for f in dataclasses.fields(container)]
    assert names[0] == "offsets"
    assert names.count("offsets") == 1
    offsets = np.array([0, 3, 4])
    values = [offsets] + [np.zeros(4)] * (len(names) - 1)
    made = container(*values)
    assert made.n_sessions == 2
    np.testing.assert_array_equal(made.lengths, [3, 1])
