"""End-to-end pipelines above the agents and the evaluation: the main job and checks of a run.

* :mod:`rlrec.workflows.quickstart`: every stage of the main job on the embedded default;
* :mod:`rlrec.workflows.evaluate`: a run's policy against every baseline, in the fitted
  simulator or the truth world;
* :mod:`rlrec.workflows.sensitivity`: a run's ratio to the best baseline across the prior of
  what the log cannot identify.

Workflows may import every layer below them (data, models, envs, evaluation, agents); only the
CLI imports workflows. The names below load on first use (they import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.workflows.churn import run_churn
    from rlrec.workflows.evaluate import evaluate_run
    from rlrec.workflows.quickstart import QuickstartConfig, QuickstartResult, run_quickstart

# Name -> module of every public name (torch loads on use).
_LAZY: dict[str, str] = {
    "run_churn": "rlrec.workflows.churn",
    "evaluate_run": "rlrec.workflows.evaluate",
    "QuickstartConfig": "rlrec.workflows.quickstart",
    "QuickstartResult": "rlrec.workflows.quickstart",
    "run_quickstart": "rlrec.workflows.quickstart",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "QuickstartConfig",
    "QuickstartResult",
    "evaluate_run",
    "run_churn",
    "run_quickstart",
]
