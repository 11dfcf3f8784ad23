"""Simulator observations as raw-id request histories (what a client would send)."""

from __future__ import annotations

import numpy as np

from rlrec.serving.scorer import Scorer


def histories_of(obs: dict[str, np.ndarray], scorer: Scorer) -> list[list[tuple[str, float]]]:
    """Each user's observed item tokens as ``(raw id, time)`` events, oldest first."""
    out = []
    for row in np.asarray(obs["item_history"]):
        tokens = row[row > 0]
        out.append([(str(scorer.item_raw[t - 1]), float(i)) for i, t in enumerate(tokens)])
    return out
