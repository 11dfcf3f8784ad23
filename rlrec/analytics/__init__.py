"""Behaviour analytics of a log: interest trends, migration drift, cross-sell, category demand.

Placed after ``evaluation`` and before ``agents`` in the layer order: it reads the data layer
(:class:`rlrec.data.PreparedDataset`), the transition fit (:mod:`rlrec.models.transition`) and
the report machinery (:mod:`rlrec.evaluation.report`); ``rlrec.workflows.analyze`` runs it end
to end. One module per analysis:

* :mod:`rlrec.analytics.periods`: the log cut into periods, categories folded as the fit folds;
* :mod:`rlrec.analytics.trends`: shares per period, rising and falling categories, segments;
* :mod:`rlrec.analytics.drift`: the switch matrix per period, distances, change points;
* :mod:`rlrec.analytics.cross_sell`: pairs with lift, next-new-category model vs baselines;
* :mod:`rlrec.analytics.demand`: views, carts and buys per category, forecast and checked;
* :mod:`rlrec.analytics.report`: the analysis page.

The names below load on first use (statsmodels and matplotlib import slowly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.analytics.cross_sell import (
        CrossSellScorer,
        CrossSellTask,
        category_pairs,
        evaluate_next_category,
    )
    from rlrec.analytics.demand import demand_forecast
    from rlrec.analytics.drift import MigrationMatrix, change_points, migration_drift
    from rlrec.analytics.periods import PeriodLog, parse_period, period_log
    from rlrec.analytics.report import write_analysis_report
    from rlrec.analytics.trends import category_trends, segment_trends

# Name -> module of every public name.
_LAZY: dict[str, str] = {
    "CrossSellScorer": "rlrec.analytics.cross_sell",
    "CrossSellTask": "rlrec.analytics.cross_sell",
    "category_pairs": "rlrec.analytics.cross_sell",
    "evaluate_next_category": "rlrec.analytics.cross_sell",
    "demand_forecast": "rlrec.analytics.demand",
    "MigrationMatrix": "rlrec.analytics.drift",
    "change_points": "rlrec.analytics.drift",
    "migration_drift": "rlrec.analytics.drift",
    "PeriodLog": "rlrec.analytics.periods",
    "parse_period": "rlrec.analytics.periods",
    "period_log": "rlrec.analytics.periods",
    "write_analysis_report": "rlrec.analytics.report",
    "category_trends": "rlrec.analytics.trends",
    "segment_trends": "rlrec.analytics.trends",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "CrossSellScorer",
    "CrossSellTask",
    "MigrationMatrix",
    "PeriodLog",
    "category_pairs",
    "category_trends",
    "change_points",
    "demand_forecast",
    "evaluate_next_category",
    "migration_drift",
    "parse_period",
    "period_log",
    "segment_trends",
    "write_analysis_report",
]
