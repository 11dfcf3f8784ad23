"""One base for the containers that hold sessions as flat arrays with CSR offsets.

Sessions of different lengths are kept as flat per-step (or per-event) arrays plus one
``offsets`` array: session ``s`` spans ``offsets[s]:offsets[s + 1]`` in every flat array. The
containers of the data, models and envs layers (``SessionArrays``, ``Steps``, ``StepLog``,
``OrganicSessions``, ``WarmStarts``) and of off-policy evaluation (``LoggedSessions``,
``SimulatedLog``, ``Decisions``) inherit :class:`Ragged` for the properties they share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Ragged"]


@dataclass(frozen=True)
class Ragged:
    """Sessions in CSR form: the base of the session containers.

    Attributes:
        offsets: (S + 1,) int64 start offsets into the flat arrays; ``offsets[0] == 0`` and
            ``offsets[-1]`` is the number of flat rows.
    """

    offsets: np.ndarray

    @property
    def n_sessions(self) -> int:
        """Number of sessions."""
        return int(len(self.offsets) - 1)

    @property
    def lengths(self) -> np.ndarray:
        """(S,) number of flat rows (events or steps) in each session."""
        return np.diff(self.offsets)

    def bounds(self, s: int) -> tuple[int, int]:
        """Start and end (exclusive) of session ``s`` in the flat arrays."""
        return int(self.offsets[s]), int(self.offsets[s + 1])
