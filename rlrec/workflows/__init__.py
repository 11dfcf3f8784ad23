"""End-to-end pipelines above the agents and the evaluation: the main job and checks of a run.

* :mod:`rlrec.workflows.analyze`: trends, migration drift, cross-sell and demand of a log;
* :mod:`rlrec.workflows.quickstart`: every stage of the main job on the embedded default;
* :mod:`rlrec.workflows.evaluate`: a run's policy against every baseline, in the fitted
  simulator or the truth world;
* :mod:`rlrec.workflows.sensitivity`: a run's ratio to the best baseline across the prior of
  what the log cannot identify;
* :mod:`rlrec.workflows.sweep`: many runs (a grid of settings, several seeds) in parallel on
  Ray, on one machine or a cluster.

Workflows may import every layer below them (data, models, envs, evaluation, analytics,
agents); only the
CLI imports workflows. The names below load on first use (they import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.workflows.analyze import AnalyzeConfig, AnalyzeResult, run_analysis
    from rlrec.workflows.churn import run_churn
    from rlrec.workflows.evaluate import evaluate_run
    from rlrec.workflows.quickstart import QuickstartConfig, QuickstartResult, run_quickstart
    from rlrec.workflows.sweep import SweepConfig, SweepResult, parallel_map, run_sweep

# Name -> module of every public name (torch loads on use).
_LAZY: dict[str, str] = {
    "AnalyzeConfig": "rlrec.workflows.analyze",
    "AnalyzeResult": "rlrec.workflows.analyze",
    "run_analysis": "rlrec.workflows.analyze",
    "run_churn": "rlrec.workflows.churn",
    "evaluate_run": "rlrec.workflows.evaluate",
    "QuickstartConfig": "rlrec.workflows.quickstart",
    "QuickstartResult": "rlrec.workflows.quickstart",
    "run_quickstart": "rlrec.workflows.quickstart",
    "SweepConfig": "rlrec.workflows.sweep",
    "SweepResult": "rlrec.workflows.sweep",
    "parallel_map": "rlrec.workflows.sweep",
    "run_sweep": "rlrec.workflows.sweep",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "AnalyzeConfig",
    "AnalyzeResult",
    "QuickstartConfig",
    "QuickstartResult",
    "SweepConfig",
    "SweepResult",
    "evaluate_run",
    "parallel_map",
    "run_analysis",
    "run_churn",
    "run_quickstart",
    "run_sweep",
]
