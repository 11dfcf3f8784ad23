"""Event logs in: readers, validation, sessionization, time split, PreparedDataset.

The names below are the layer's public API; the DuckDB-backed ones (preparation, readers,
statistics, the Open Bandit loader) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.data.dataset import PreparedDataset, SessionArrays, load_dataset
from rlrec.data.ragged import Ragged
from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.data.bandit import BanditFeedback, load_obd
    from rlrec.data.content import require_categories, require_items
    from rlrec.data.prepare import PrepareConfig, prepare
    from rlrec.data.readers import PRESETS, ReadOptions, Source, open_source
    from rlrec.data.schema import EVENT_TYPES
    from rlrec.data.stats import dataset_stats

# Name -> module of the names loaded on first use (DuckDB and pandas import slowly).
_LAZY: dict[str, str] = {
    "BanditFeedback": "rlrec.data.bandit",
    "load_obd": "rlrec.data.bandit",
    "require_categories": "rlrec.data.content",
    "require_items": "rlrec.data.content",
    "PrepareConfig": "rlrec.data.prepare",
    "prepare": "rlrec.data.prepare",
    "PRESETS": "rlrec.data.readers",
    "ReadOptions": "rlrec.data.readers",
    "Source": "rlrec.data.readers",
    "open_source": "rlrec.data.readers",
    "EVENT_TYPES": "rlrec.data.schema",
    "dataset_stats": "rlrec.data.stats",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "EVENT_TYPES",
    "PRESETS",
    "BanditFeedback",
    "PrepareConfig",
    "PreparedDataset",
    "Ragged",
    "ReadOptions",
    "SessionArrays",
    "Source",
    "dataset_stats",
    "load_dataset",
    "load_obd",
    "open_source",
    "prepare",
    "require_categories",
    "require_items",
]
