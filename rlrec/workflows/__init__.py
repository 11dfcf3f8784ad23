"""End-to-end pipelines above the agents and the evaluation: the main job and checks of a run.

* :mod:`rlrec.workflows.quickstart`: every stage of the main job on the embedded default;
* :mod:`rlrec.workflows.evaluate`: a run's policy against every baseline, in the fitted
  simulator or the truth world.

Workflows may import every layer below them (data, models, envs, evaluation, agents); only the
CLI imports workflows. The names below load on first use (they import torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlrec.workflows.evaluate import evaluate_run
    from rlrec.workflows.quickstart import QuickstartConfig, QuickstartResult, run_quickstart

# Name -> module of every public name (torch loads on use).
_LAZY: dict[str, str] = {
    "evaluate_run": "rlrec.workflows.evaluate",
    "QuickstartConfig": "rlrec.workflows.quickstart",
    "QuickstartResult": "rlrec.workflows.quickstart",
    "run_quickstart": "rlrec.workflows.quickstart",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "QuickstartConfig",
    "QuickstartResult",
    "evaluate_run",
    "run_quickstart",
]
