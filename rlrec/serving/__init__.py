"""Serving a trained policy: export, the HTTP server, and the traffic log for the next OPE.

Layer: after ``agents`` (it scores with a trained agent) and before ``workflows``. FastAPI and
uvicorn (the ``serve`` extra) are imported only by :mod:`rlrec.serving.app` (import
``ServeConfig`` and ``create_app`` from there); the export, the scorer and the traffic log,
which this package exports, work without them. Every name loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.serving.export import ExportResult, export_run, verify_export
    from rlrec.serving.scorer import Recommendation, Scorer, SlateRequest
    from rlrec.serving.traffic_log import (
        TrafficLogWriter,
        evaluate_traffic,
        read_traffic_log,
    )

_LAZY: dict[str, str] = {
    "ExportResult": "rlrec.serving.export",
    "export_run": "rlrec.serving.export",
    "verify_export": "rlrec.serving.export",
    "Recommendation": "rlrec.serving.scorer",
    "Scorer": "rlrec.serving.scorer",
    "SlateRequest": "rlrec.serving.scorer",
    "TrafficLogWriter": "rlrec.serving.traffic_log",
    "evaluate_traffic": "rlrec.serving.traffic_log",
    "read_traffic_log": "rlrec.serving.traffic_log",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "ExportResult",
    "Recommendation",
    "Scorer",
    "SlateRequest",
    "TrafficLogWriter",
    "evaluate_traffic",
    "export_run",
    "read_traffic_log",
    "verify_export",
]
