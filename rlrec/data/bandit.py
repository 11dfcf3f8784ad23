"""Logged bandit feedback: the :class:`BanditFeedback` arrays and the Open Bandit Dataset reader.

A *round* is one impression: the logging (behaviour) policy showed item ``action`` in slot
``position`` of a slate of ``len_list`` slots, with probability ``pscore``, and the user
clicked (``reward`` 1) or not (0). This is the layout of the Open Bandit Dataset (Saito et
al., NeurIPS 2021), where every row of ``random.csv`` / ``bts.csv`` is one (item, position)
impression with its marginal propensity.

Off-policy estimators (:mod:`rlrec.evaluation.ope.bandit`) read ``action``, ``position``, ``reward``
and ``pscore``; reward models (:mod:`rlrec.evaluation.ope.reward_model`) also read ``context``,
``affinity`` and ``action_context``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rlrec.errors import UserError, quote_value

__all__ = [
    "OBD_REQUIRED_COLUMNS",
    "OBD_VALUE_RULES",
    "BanditFeedback",
    "ValueRule",
    "load_obd",
]

OBD_REQUIRED_COLUMNS = ("item_id", "position", "click", "propensity_score")
"""Columns every Open Bandit Dataset log must have."""


@dataclass(frozen=True)
class ValueRule:
    """A rule on one column of a logged-feedback file, in numpy and in SQL.

    Attributes:
        column: The file's column.
        expected: What a valid value is, for messages.
        ok: (n,) values -> (n,) bool, true where valid.
        ok_sql: The same test in SQL, with ``{c}`` standing for the quoted column.
    """

    column: str
    expected: str
    ok: Callable[[np.ndarray], np.ndarray]
    ok_sql: str


OBD_VALUE_RULES: tuple[ValueRule, ...] = (
    ValueRule("item_id", "must be >= 0", lambda v: v >= 0, "{c} >= 0"),
    ValueRule("position", "must be a 1-based slot (>= 1)", lambda v: v >= 1, "{c} >= 1"),
    ValueRule("click", "must be 0 or 1", lambda v: (v == 0) | (v == 1), "{c} IN (0, 1)"),
    ValueRule(
        "propensity_score",
        "must lie in (0, 1]",
        lambda v: (v > 0) & (v <= 1),
        "{c} > 0 AND {c} <= 1",
    ),
)
"""The value rules of an Open Bandit Dataset log: ``rlrec ope bandit`` (:func:`load_obd`) and
``rlrec data prepare --preset obd`` both enforce exactly these."""

_USER_FEATURE = re.compile(r"^user_feature_\d+$")
_AFFINITY = re.compile(r"^user-item_affinity_(\d+)$")
_ITEM_FEATURE = re.compile(r"^item_feature_(\d+)$")


@dataclass(frozen=True)
class BanditFeedback:
    """Logged bandit feedback with slate positions, as arrays.

    Attributes:
        action: (n_rounds,) int64, the item shown, in ``[0, n_actions)``.
        position: (n_rounds,) int64, the 0-based slot it was shown in, in ``[0, len_list)``.
        reward: (n_rounds,) float64, the observed reward (a click: 0 or 1).
        pscore: (n_rounds,) float64, the behaviour policy's probability of showing ``action``
            at ``position`` in that round, in (0, 1].
        context: (n_rounds, dim_context) float64, round (user) features; one-hot encoded
            categoricals for the Open Bandit Dataset. May have 0 columns.
        n_actions: Size of the action space (items).
        len_list: Number of slots per slate.
        affinity: (n_rounds, n_actions) float64 user-item features, or None.
        action_context: (n_actions, dim_action_context) float64 item features, or None.
        source: Where the feedback came from (a file path or a description), for messages.
    """

    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    context: np.ndarray
    n_actions: int
    len_list: int
    affinity: np.ndarray | None = None
    action_context: np.ndarray | None = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = self.action.shape[0]
        if n == 0:
            raise UserError(f"{self.source}: the log has no rounds; pass a non-empty log")
        for name in ("position", "reward", "pscore"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise UserError(
                    f"{self.source}: {name} has shape {arr.shape}, expected ({n},) like action"
                )
        if self.context.ndim != 2 or self.context.shape[0] != n:
            raise UserError(
                f"{self.source}: context has shape {self.context.shape}, expected ({n}, d)"
            )
        if self.affinity is not None and self.affinity.shape != (n, self.n_actions):
            raise UserError(
                f"{self.source}: affinity has shape {self.affinity.shape}, "
                f"expected ({n}, {self.n_actions})"
            )
        if self.action_context is not None and (
            self.action_context.ndim != 2 or self.action_context.shape[0] != self.n_actions
        ):
            raise UserError(
                f"{self.source}: action_context has shape {self.action_context.shape}, "
                f"expected ({self.n_actions}, d)"
            )
        if self.action.min() < 0 or self.action.max() >= self.n_actions:
            raise UserError(
                f"{self.source}: actions must lie in [0, {self.n_actions}), "
                f"found {self.action.min()}..{self.action.max()}"
            )
        if self.position.min() < 0 or self.position.max() >= self.len_list:
            raise UserError(
                f"{self.source}: positions must lie in [0, {self.len_list}), "
                f"found {self.position.min()}..{self.position.max()}"
            )
        if not (np.all(self.pscore > 0) and np.all(self.pscore <= 1)):
            raise UserError(f"{self.source}: propensity scores must lie in (0, 1]")

    @property
    def n_rounds(self) -> int:
        """Number of logged rounds."""
        return int(self.action.shape[0])

    @property
    def mean_reward(self) -> float:
        """The logged policy's on-policy value estimate: the mean observed reward."""
        return float(self.reward.mean())


def load_obd(
    path_csv: str | os.PathLike[str],
    item_context_csv: str | os.PathLike[str] | None = None,
    n_actions: int | None = None,
) -> BanditFeedback:
    """Read an Open Bandit Dataset log (``random.csv`` / ``bts.csv``) into arrays.

    Positions in the file are 1-based slots and become 0-based (``position - 1``); OBP
    ranks them densely instead, which is the same whenever every slot occurs in the file.
    ``user_feature_*`` columns (hashed categoricals) are one-hot encoded into ``context``;
    ``user-item_affinity_<item>`` columns become ``affinity``. With ``item_context_csv``,
    ``item_feature_0`` stays numeric and the other item features are one-hot encoded into
    ``action_context``.

    Args:
        path_csv: The log, with columns ``item_id, position, click, propensity_score`` and
            optionally ``timestamp``, ``user_feature_*``, ``user-item_affinity_*``.
        item_context_csv: Optional item features, one row per item ``0..n_actions-1``.
        n_actions: Size of the action space; default: the number of rows of the item
            context, else the largest ``item_id`` + 1.

    Returns:
        The validated feedback, in file order.

    Raises:
        UserError: Naming the file, column and line of the first problem.
    """
    path = Path(path_csv)
    frame = _read_csv(path)
    missing = [c for c in OBD_REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; an Open Bandit Dataset log needs "
            f"{', '.join(OBD_REQUIRED_COLUMNS)}"
        )
    if len(frame) == 0:
        raise UserError(f"{path}: the log has no rows; pass a non-empty log")

    action = _integer_column(frame, "item_id", path)
    position_raw = _integer_column(frame, "position", path)
    reward = _numeric_column(frame, "click", path)
    pscore = _numeric_column(frame, "propensity_score", path)
    values = {"item_id": action, "position": position_raw, "click": reward}
    values["propensity_score"] = pscore
    for rule in OBD_VALUE_RULES:
        _check_where(path, rule.column, ~rule.ok(values[rule.column]), rule.expected)
    position = position_raw - 1

    action_context = None
    if item_context_csv is not None:
        action_context = _read_item_context(Path(item_context_csv))
    if n_actions is None:
        n_actions = action_context.shape[0] if action_context is not None else int(action.max()) + 1
    if action_context is not None and action_context.shape[0] != n_actions:
        raise UserError(
            f"{item_context_csv}: has {action_context.shape[0]} items, expected {n_actions}"
        )
    _check_where(path, "item_id", action >= n_actions, f"must be < n_actions = {n_actions}")

    user_cols = [c for c in frame.columns if _USER_FEATURE.match(str(c))]
    if user_cols:
        for col in user_cols:
            if frame[col].isna().any():
                row = int(np.flatnonzero(frame[col].isna().to_numpy())[0])
                raise UserError(f"{path}: line {row + 2}, column {col}: missing value")
        # Full one-hot (no dropped level): the reward model is L2-regularised, so the
        # redundant level is harmless and every category keeps its own weight.
        context = pd.get_dummies(frame[user_cols].astype(str), dtype=np.float64).to_numpy()
    else:
        context = np.zeros((len(frame), 0), dtype=np.float64)

    affinity = None
    affinity_cols = {
        int(m.group(1)): c for c in frame.columns if (m := _AFFINITY.match(str(c))) is not None
    }
    if affinity_cols:
        if sorted(affinity_cols) != list(range(n_actions)):
            raise UserError(
                f"{path}: user-item_affinity_* columns must be numbered 0..{n_actions - 1} "
                f"(one per item), found {len(affinity_cols)} columns"
            )
        affinity = np.column_stack(
            [_numeric_column(frame, affinity_cols[a], path) for a in range(n_actions)]
        )

    return BanditFeedback(
        action=action,
        position=position,
        reward=reward,
        pscore=pscore,
        context=context,
        n_actions=int(n_actions),
        len_list=int(position.max()) + 1,
        affinity=affinity,
        action_context=action_context,
        source=str(path),
    )


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; pass a CSV with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    # OBD files start with an unnamed index column; it carries no information.
    unnamed = [c for c in frame.columns if str(c).startswith("Unnamed:")]
    return frame.drop(columns=unnamed)


def _numeric_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{path}: line {row + 2}, column {column}: expected a finite number, "
            f"got {quote_value(frame[column].iloc[row])}"
        )
    return values


def _integer_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = _numeric_column(frame, column, path)
    bad = values != np.round(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{path}: line {row + 2}, column {column}: expected an integer, "
            f"got {quote_value(values[row])}"
        )
    return values.astype(np.int64)


def _check_where(path: Path, column: str, bad: np.ndarray, expected: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{path}: line {row + 2}, column {column}: {expected}; "
            f"{int(bad.sum())} row(s) violate this"
        )


def _read_item_context(path: Path) -> np.ndarray:
    """(n_items, d) item features: ``item_feature_0`` numeric, the others one-hot."""
    frame = _read_csv(path)
    if "item_id" not in frame.columns:
        raise UserError(f"{path}: missing column item_id; an item context needs one row per item")
    item_id = _integer_column(frame, "item_id", path)
    if sorted(item_id.tolist()) != list(range(len(frame))):
        raise UserError(f"{path}: item_id must list every item 0..{len(frame) - 1} exactly once")
    frame = frame.iloc[np.argsort(item_id, kind="stable")].reset_index(drop=True)
    cols = sorted(
        (c for c in frame.columns if _ITEM_FEATURE.match(str(c))),
        key=lambda c: int(str(c).rsplit("_", 1)[1]),
    )
    if not cols:
        raise UserError(f"{path}: no item_feature_* columns found")
    blocks = []
    for col in cols:
        numeric = pd.to_numeric(frame[col], errors="coerce")
        if numeric.notna().all():
            blocks.append(numeric.to_numpy(dtype=np.float64)[:, None])
        else:
            # Hashed categoricals: one column per level.
            blocks.append(pd.get_dummies(frame[col].astype(str), dtype=np.float64).to_numpy())
    return np.hstack(blocks)
