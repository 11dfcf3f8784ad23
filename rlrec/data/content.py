"""What a prepared log has, and the one-line refusal of a stage that needs more.

A log of visits or transactions (user and time, maybe a monetary value) prepares like any
other (:mod:`rlrec.data.readers`), so that the stages that need nothing else (``rlrec churn``)
can read it. Stages that need items or categories call :func:`require_items` or
:func:`require_categories` first, so they refuse such a dataset with one line that says what
is missing and how to prepare the log instead of failing later on a placeholder item.
"""

from __future__ import annotations

from rlrec.data.dataset import PreparedDataset
from rlrec.errors import UserError

__all__ = [
    "ITEMLESS_STAGES",
    "require_categories",
    "require_items",
]

ITEMLESS_STAGES = "rlrec churn"
"""The commands that read a log without items (named in the refusal)."""


def require_items(dataset: PreparedDataset, stage: str) -> None:
    """Refuse a dataset without items at the entry of ``stage``.

    Args:
        dataset: The loaded dataset.
        stage: What needs the items, for the message (e.g. ``fit``).

    Raises:
        UserError: If the dataset was prepared from a log without an item column.
    """
    if not dataset.has_items:
        raise UserError(
            f"{dataset.path} has no item column: {stage} needs items; prepare the log with "
            f"--columns ...,item=COL (this log supports: {ITEMLESS_STAGES})"
        )


def require_categories(dataset: PreparedDataset, stage: str) -> None:
    """Refuse a dataset without items or categories at the entry of ``stage``.

    Args:
        dataset: The loaded dataset.
        stage: What needs the categories, for the message (e.g. ``fit``).

    Raises:
        UserError: If the dataset has no items, or its events carry no categories (neither
            from the log nor derived from co-occurrence).
    """
    require_items(dataset, stage)
    if not dataset.has_categories:
        raise UserError(
            f"{dataset.path} has no category column: {stage} needs categories; prepare the log "
            "with --columns ...,category=COL, or derive them with --derive-categories"
        )
