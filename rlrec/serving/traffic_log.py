r"""The served-traffic log: what a server showed, with its propensities, for the next OPE.

Format: JSON Lines, one record per line, appended only. Two record types:

``served`` (one per answered request)::

    {"type": "served", "request_id": "...", "time": 1733472000.123 (unix seconds),
     "model_version": "...", "mode": "greedy" | "sample", "k": 10, "exclude_seen": true,
     "history": [[item, time, event-or-null], ...]   (the request's events, raw ids as sent),
     "items": [...raw ids...], "propensities": [...], "position_propensities": [...]}

``feedback`` (``POST /feedback``: what the user did)::

    {"type": "feedback", "request_id": "...", "time": ..., "reward": 3.0, "item": "..." | null}

``propensities`` and ``position_propensities`` are defined in :mod:`rlrec.serving.scorer`;
``position_propensities[0]`` is the probability with which the behaviour policy put the
slate's first item first (``p(a_1)`` in ``sample`` mode, 1 in ``greedy`` mode).

Writing is safe under concurrency: every record is one ``write`` of one whole line to a file
opened with ``O_APPEND``, under an exclusive ``flock`` (threads of one worker also share a
lock), so the lines of several threads and worker processes never interleave. Records are
handed to the OS at once but not fsynced (an fsync per request would cost more than the
request): a machine crash can lose the tail, and a torn last line is skipped and counted by
the reader.

Reading for OPE (:func:`evaluate_traffic`, ``rlrec ope served``): each ``sample``-mode record
is one bandit round whose action is the slate's first item, with behaviour propensity
``position_propensities[0]``; its reward is the sum of the request's feedback rewards that
name that item or no item (feedback on the other positions belongs to them, not to the first
item), and ``--missing-reward`` (default 0: no feedback means no engagement) where none came.
``greedy`` records are deterministic (propensity 1 for one action and 0 for the rest), which
supports no other policy, so they are counted and left out. The target's probability of the
logged first item is its served distribution on the same history (same ``exclude_seen``): IPW
and self-normalised IPW (:mod:`rlrec.evaluation.ope.bandit`) with a seeded bootstrap.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlrec.errors import UserError, quote_value
from rlrec.evaluation.ope.bandit import (
    InverseProbabilityWeighting,
    LoggedRounds,
    SelfNormalizedIPW,
    estimate_policy_value,
)
from rlrec.evaluation.ope.base import Estimate
from rlrec.serving.scorer import MODES, Scorer, SlateRequest

__all__ = [
    "ServedRecord",
    "TrafficLog",
    "TrafficLogWriter",
    "evaluate_traffic",
    "read_traffic_log",
]


class TrafficLogWriter:
    """Append records to a JSON Lines traffic log (see the module docstring).

    Args:
        path: The log file; created (0644) if missing, never truncated.

    Raises:
        UserError: If the file cannot be opened for appending.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"--log {self.path}: cannot append ({exc.strerror})") from None
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line (one ``write`` under the file's lock)."""
        data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def served(
        self,
        request_id: str,
        model_version: str,
        request: SlateRequest,
        history: Sequence[tuple[str, float, str | None]],
        items: Sequence[str],
        propensities: Sequence[float],
        position_propensities: Sequence[float],
    ) -> None:
        """Append a ``served`` record."""
        self.append(
            {
                "type": "served",
                "request_id": request_id,
                "time": time.time(),
                "model_version": model_version,
                "mode": request.mode,
                "k": request.k,
                "exclude_seen": request.exclude_seen,
                "history": [list(e) for e in history],
                "items": list(items),
                "propensities": list(propensities),
                "position_propensities": list(position_propensities),
            }
        )

    def feedback(self, request_id: str, reward: float, item: str | None) -> None:
        """Append a ``feedback`` record."""
        self.append(
            {
                "type": "feedback",
                "request_id": request_id,
                "time": time.time(),
                "reward": reward,
                "item": item,
            }
        )

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


@dataclass(frozen=True)
class ServedRecord:
    """One ``served`` record, validated.

    Attributes:
        request_id: The request's id.
        model_version: The model that answered.
        mode: ``greedy`` or ``sample``.
        exclude_seen: Whether seen items were excluded.
        history: ``(item, time)`` of the request's events.
        items: The slate's raw ids.
        first_propensity: Behaviour probability of the slate's first item at position 1.
    """

    request_id: str
    model_version: str
    mode: str
    exclude_seen: bool
    history: list[tuple[str, float]]
    items: list[str]
    first_propensity: float


@dataclass(frozen=True)
class TrafficLog:
    """A traffic log read back.

    Attributes:
        served: The ``served`` records, in file order.
        rewards: request id -> item (None: the whole slate) -> summed feedback reward.
        torn_lines: Lines dropped because the file ended inside them.
    """

    served: list[ServedRecord]
    rewards: dict[str, dict[str | None, float]]
    torn_lines: int


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, complete) of each line; the last may lack its newline."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line, line.endswith(b"\n")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_traffic_log(path: str | os.PathLike[str]) -> TrafficLog:
    """Read and validate a traffic log written by :class:`TrafficLogWriter`.

    Raises:
        UserError: Naming the file, line and field of the first bad record.
    """
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: no such traffic log; start 'rlrec serve' with --log FILE")
    served: list[ServedRecord] = []
    rewards: dict[str, dict[str | None, float]] = {}
    torn = 0
    for number, raw, complete in _lines(source):
        where = f"{source}:{number}"
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            if not complete:
                torn += 1  # the writer stopped inside its last line
                continue
            raise UserError(f"{where}: not a JSON record; is this an rlrec traffic log?") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object")
        kind = record.get("type")
        request_id = record.get("request_id")
        if not isinstance(request_id, str):
            raise UserError(f"{where}: request_id missing or not a string")
        if kind == "feedback":
            reward, item = record.get("reward"), record.get("item")
            if not _finite(reward):
                raise UserError(f"{where}: reward {quote_value(reward)} is not a finite number")
            if item is not None and not isinstance(item, str):
                raise UserError(f"{where}: item must be a string or null")
            slot = rewards.setdefault(request_id, {})
            slot[item] = slot.get(item, 0.0) + float(reward)  # type: ignore[arg-type]
        elif kind == "served":
            served.append(_served_record(record, where))
        else:
            raise UserError(f"{where}: type {quote_value(kind)}, expected served or feedback")
    return TrafficLog(served=served, rewards=rewards, torn_lines=torn)


def _served_record(record: dict[str, Any], where: str) -> ServedRecord:
    mode = record.get("mode")
    if mode not in MODES:
        raise UserError(f"{where}: mode {quote_value(mode)}, expected one of {', '.join(MODES)}")
    items, position = record.get("items"), record.get("position_propensities")
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise UserError(f"{where}: items must be a list of raw id strings")
    if not isinstance(position, list) or len(position) != len(items):
        raise UserError(f"{where}: position_propensities must have one number per item")
    if not all(_finite(p) and 0 < p <= 1 for p in position):
        raise UserError(f"{where}: position_propensities must lie in (0, 1]")
    history = record.get("history")
    if not isinstance(history, list) or not all(
        isinstance(e, list) and len(e) >= 2 and isinstance(e[0], str) and _finite(e[1])
        for e in history
    ):
        raise UserError(f"{where}: history must be a list of [item, time, event] entries")
    exclude_seen = record.get("exclude_seen")
    if not isinstance(exclude_seen, bool):
        raise UserError(f"{where}: exclude_seen must be true or false")
    return ServedRecord(
        request_id=str(record["request_id"]),
        model_version=str(record.get("model_version", "")),
        mode=str(mode),
        exclude_seen=exclude_seen,
        history=[(str(e[0]), float(e[1])) for e in history],
        items=list(items),
        first_propensity=float(position[0]) if position else 1.0,
    )


def evaluate_traffic(
    log: TrafficLog,
    target: Scorer,
    target_mode: str = "sample",
    missing_reward: float | None = 0.0,
    n_bootstrap: int = 200,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Estimate a target policy's first-item value from served traffic (module docstring).

    Args:
        log: The traffic log.
        target: The target policy (an export's scorer).
        target_mode: ``sample`` (its served distribution) or ``greedy`` (its top item).
        missing_reward: Reward of a decision without feedback; None drops such decisions.
        n_bootstrap: Bootstrap resamples of the intervals.
        seed: Seed of the bootstrap.
        batch_size: Histories per scoring pass.

    Returns:
        The report: estimates (``ipw``, ``snipw``: value and interval), the behaviour's mean
        reward on the same decisions, counts, effective sample size and the largest weight.

    Raises:
        UserError: If no ``sample``-mode decision with a reward is left.
    """
    if target_mode not in MODES:
        raise UserError(f"--mode: {quote_value(target_mode)}, expected one of {', '.join(MODES)}")
    counts = {"served": len(log.served), "greedy_skipped": 0, "empty_slate": 0, "no_feedback": 0}
    rows: list[tuple[ServedRecord, float]] = []
    for record in log.served:
        if record.mode != "sample":
            counts["greedy_skipped"] += 1
            continue
        if not record.items:
            counts["empty_slate"] += 1
            continue
        feedback = log.rewards.get(record.request_id)
        if feedback is None:
            counts["no_feedback"] += 1
            if missing_reward is None:
                continue
            rows.append((record, float(missing_reward)))
            continue
        reward = feedback.get(None, 0.0) + feedback.get(record.items[0], 0.0)
        rows.append((record, reward))
    if not rows:
        raise UserError(
            "traffic log: no sample-mode decision to evaluate from (greedy traffic supports no "
            "other policy); serve the behaviour arm with mode 'sample'"
        )
    target_p = np.empty(len(rows))
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        contexts = [target.context(record.history) for record, _ in chunk]
        probs = target.probabilities(contexts)
        for j, ((record, _), context) in enumerate(zip(chunk, contexts, strict=True)):
            p = target.served_distribution(probs[j], target.eligible(context, record.exclude_seen))
            index = target.index_of.get(record.items[0])
            action = -1 if index is None else int(target.action_of_item[index])
            if target_mode == "greedy":
                best = int(np.argmax(p)) if p.sum() > 0 else -2
                target_p[lo + j] = float(action == best)
            else:
                target_p[lo + j] = p[action] if action >= 0 else 0.0
    behaviour = np.array([record.first_propensity for record, _ in rows])
    rewards = np.array([r for _, r in rows], dtype=np.float64)
    weight = target_p / behaviour
    rounds = LoggedRounds(reward=rewards, importance_weight=weight)
    estimates: dict[str, Estimate] = estimate_policy_value(
        rounds,
        [InverseProbabilityWeighting(), SelfNormalizedIPW()],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    ess = float(weight.sum() ** 2 / max(float(np.sum(weight**2)), 1e-300))
    return {
        "target": {"model_version": target.model_version, "mode": target_mode},
        "behaviour_versions": sorted({record.model_version for record, _ in rows}),
        "n_decisions": len(rows),
        "counts": {**counts, "torn_lines": log.torn_lines},
        "behaviour_mean_reward": float(rewards.mean()),
        "effective_sample_size": ess,
        "max_weight": float(weight.max()),
        "estimates": {name: est.to_dict() for name, est in estimates.items()},
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }
