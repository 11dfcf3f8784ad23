"""``rlrec churn``: predict who returns after a cutoff, score it when the window is in the log.

Output directory (written atomically; replaced only with ``force``)::

    OUT/
      predictions.csv     one row per user seen before the cutoff: user, p_return,
                          expected_sessions, segment, p_alive and the covariates
      churn.json          settings, window, predictor, importances, segment survival curves,
                          the most at-risk users, the baselines' fitted parameters
      metrics.json        only when the log covers the window: {"model", "baselines",
                          "oracle" (synthetic logs), "window"}
      return_model.json   the fitted parametric return model (ReturnModel.to_json)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlrec.data.dataset import PreparedDataset, load_dataset
from rlrec.errors import UserError
from rlrec.evaluation.churn import (
    SEGMENTS,
    ChurnConfig,
    ChurnResult,
    NotEnoughHistory,
    churn_sessions,
    evaluate_churn,
    predict_churn,
)
from rlrec.fsutil import atomic_directory, check_output, write_json_atomic
from rlrec.models.calibration import SESSION_GAP_MS
from rlrec.models.lifecycle import DAY_MS, session_table

__all__ = [
    "CHURN_FILE",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "RETURN_MODEL_FILE",
    "ChurnRun",
    "format_churn",
    "parse_cutoff",
    "run_churn",
]

PREDICTIONS_FILE = "predictions.csv"
CHURN_FILE = "churn.json"
METRICS_FILE = "metrics.json"
RETURN_MODEL_FILE = "return_model.json"
TOP_AT_RISK = 20
"""Users listed in churn.json as the most at risk (lowest P(return) first, ties by raw id);
the report shows the first ten."""


@dataclass(frozen=True)
class ChurnRun:
    """What :func:`run_churn` wrote.

    Attributes:
        out: The output directory.
        summary: The content of churn.json.
        metrics: The content of metrics.json, or None when the window is not in the log.
    """

    out: Path
    summary: dict[str, Any]
    metrics: dict[str, Any] | None


def parse_cutoff(text: str) -> int:
    """Milliseconds since the epoch (UTC) of an ISO 8601 date or datetime, or unix seconds.

    Raises:
        UserError: For anything else.
    """
    raw = text.strip()
    try:
        if raw.lstrip("-").isdigit():
            return int(raw) * 1000
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        raise UserError(
            f"--cutoff {text!r}: expected an ISO 8601 date or datetime (2017-12-01, "
            "2017-12-01T12:00) or unix seconds"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _check_inputs(dataset: PreparedDataset, cutoff_ms: int, horizon_days: float) -> None:
    events = dataset.events
    if len(events) == 0:
        raise UserError(f"{dataset.path}: the dataset has no events; prepare a non-empty log")
    ts = events["timestamp"].to_numpy(np.int64)
    first, last = int(ts.min()), int(ts.max())
    if cutoff_ms <= first and cutoff_ms > first - DAY_MS:
        raise UserError(
            f"--cutoff {_iso(cutoff_ms)}: no user has an event before it in {dataset.path} (the "
            f"log starts at {_iso(first)}); choose a later cutoff"
        )
    # A cutoff up to a day after the last event forecasts the future; later is outside.
    if not (first < cutoff_ms <= last + DAY_MS):
        raise UserError(
            f"--cutoff {_iso(cutoff_ms)}: outside the data of {dataset.path} ({_iso(first)} to "
            f"{_iso(last)}); choose a cutoff after the first event and at most a day after the "
            "last"
        )
    if "value" in events and not pd.api.types.is_numeric_dtype(events["value"]):
        raise UserError(
            f"{dataset.path}/events.parquet: column 'value' is {events['value'].dtype}, not "
            "numeric; prepare the log again with a numeric value column"
        )


def _oracle(
    dataset: PreparedDataset, cutoff_ms: int, horizon_days: float, raw_order: np.ndarray
) -> pd.DataFrame | None:
    """The synthetic truth's predictions in the output's row order, when the log has a truth."""
    from rlrec.models import ground_truth

    if not (dataset.path / ground_truth.GROUND_TRUTH_JSON).is_file():
        return None
    truth = ground_truth.load_ground_truth(dataset.path)
    if truth is None or not truth.config.returns.enabled or truth.activity is None:
        return None  # a truth drawn before the return process existed has no oracle
    frame = ground_truth.oracle_return(truth, dataset, cutoff_ms / 1000.0, horizon_days)
    raw = dataset.users["raw_id"].astype(str).to_numpy()
    frame = frame.assign(raw_id=raw[frame["user"].to_numpy(np.int64)]).set_index("raw_id")
    return frame.loc[raw_order, ["p_return", "expected_sessions"]].reset_index(drop=True)


def run_churn(
    data: str | os.PathLike[str],
    cutoff: str,
    horizon_days: float,
    out: str | os.PathLike[str],
    force: bool = False,
    seed: int = 0,
) -> ChurnRun:
    """Predict returns after ``cutoff`` from a PreparedDataset and write OUT (see the module).

    Raises:
        UserError: Bad cutoff, horizon, value column, no user before the cutoff, or an OUT
            that may not be replaced.
    """
    cutoff_ms = parse_cutoff(cutoff)
    if not (horizon_days > 0 and math.isfinite(horizon_days)):
        raise UserError(f"--horizon-days {horizon_days:g}: expected a number of days > 0")
    # Refuse an output we may not replace before minutes of work, not after.
    check_output(out, "churn", force)
    dataset = load_dataset(data)
    _check_inputs(dataset, cutoff_ms, horizon_days)
    raw_ids = dataset.users["raw_id"].to_numpy()
    gap_seconds = dataset.meta.get("session_gap_seconds")
    gap_ms = int(gap_seconds * 1000) if isinstance(gap_seconds, int | float) else SESSION_GAP_MS
    sessions = churn_sessions(dataset.events, raw_ids, cutoff_ms, gap_ms)
    if len(sessions) == 0:
        raise UserError(
            f"--cutoff {_iso(cutoff_ms)}: no user has an event before it in {dataset.path}; "
            "choose a later cutoff"
        )
    config = ChurnConfig(horizon_days=float(horizon_days), seed=seed)
    try:
        result = predict_churn(sessions, cutoff_ms, config)
    except NotEnoughHistory as exc:
        raise UserError(f"{dataset.path}: {exc}; choose a later cutoff or a longer log") from None

    last_ms = int(dataset.events["timestamp"].max())
    window_end = cutoff_ms + horizon_days * DAY_MS
    metrics = None
    if last_ms >= cutoff_ms:
        everything = session_table(dataset.events, gap_ms=gap_ms)
        rank_of = dict(zip(sessions["raw_id"], sessions["rank"], strict=False))
        raw_of_user = np.asarray(raw_ids, dtype=object).astype(str)
        ranks = np.array(
            [rank_of.get(r, -1) for r in raw_of_user[everything["user"].to_numpy()]],
            dtype=np.int64,
        )
        all_sessions = pd.DataFrame({"rank": ranks, "start_ms": everything["start_ms"]})
        oracle = _oracle(dataset, cutoff_ms, horizon_days, result.predictions["user"].to_numpy())
        metrics = evaluate_churn(result, all_sessions, cutoff_ms, oracle)
        metrics["window"]["complete"] = bool(last_ms >= window_end - DAY_MS)
    summary = _summary(dataset, result, cutoff_ms, last_ms, metrics)
    with atomic_directory(out, "churn", force=force) as tmp:
        result.predictions.to_csv(tmp / PREDICTIONS_FILE, index=False, float_format="%.9g")
        write_json_atomic(tmp / CHURN_FILE, summary)
        if metrics is not None:
            write_json_atomic(tmp / METRICS_FILE, metrics)
        if result.return_model is not None:
            (tmp / RETURN_MODEL_FILE).write_text(result.return_model.to_json() + "\n")
    return ChurnRun(out=Path(out), summary=summary, metrics=metrics)


def _summary(
    dataset: PreparedDataset,
    result: ChurnResult,
    cutoff_ms: int,
    last_ms: int,
    metrics: dict[str, Any] | None,
) -> dict[str, Any]:
    pred = result.predictions
    segments = pred["segment"].to_numpy()
    curves: dict[str, Any] = {}
    model_curve = result.survival["model"]
    for name, _ in SEGMENTS:
        mask = segments == name
        if mask.any():
            curves[name] = {
                "users": int(mask.sum()),
                "survival": model_curve[mask].mean(axis=0).tolist(),
            }
    at_risk = pred.sort_values(["p_return", "user"], kind="stable").head(TOP_AT_RISK)
    columns = [
        c
        for c in (
            "user",
            "p_return",
            "expected_sessions",
            "segment",
            "recency_days",
            "frequency",
            "monetary",
        )
        if c in at_risk
    ]
    model = result.return_model
    return {
        "dataset": str(dataset.path),
        "cutoff": _iso(cutoff_ms),
        "cutoff_ms": cutoff_ms,
        "horizon_days": result.info["horizon_days"],
        "log_end": _iso(last_ms),
        "window_in_log": metrics is not None,
        "n_users": len(pred),
        "info": result.info,
        "segments": {name: int((segments == name).sum()) for name, _ in SEGMENTS},
        "segment_thresholds": dict(SEGMENTS),
        "curve_days": result.curve_days.tolist(),
        "survival_by_segment": curves,
        "importances": result.importances,
        "return_model": None
        if model is None
        else {
            "feature_names": list(model.feature_names),
            "beta": model.beta.tolist(),
            "gamma": model.gamma.tolist(),
            "gamma_0": model.gamma_0,
            "shape": model.shape,
            "scale_days": model.scale_days,
            "frailty_var": model.frailty_var,
            "dropout_sd": model.dropout_sd,
        },
        "baseline_params": {
            name: frame.attrs["params"]
            for name, frame in result.baselines.items()
            if "params" in frame.attrs
        },
        "most_at_risk": at_risk[columns].to_dict(orient="records"),
        "calibration": None if metrics is None else metrics["model"]["calibration"],
    }


def format_churn(run: ChurnRun) -> str:
    """The human-readable summary ``rlrec churn`` prints."""
    s = run.summary
    lines = [
        f"churn at {s['cutoff']} for {s['horizon_days']:g} days: {s['n_users']} users "
        f"({', '.join(f'{k} {v}' for k, v in s['segments'].items())}); "
        f"predictor {s['info'].get('model')}",
    ]
    blend = s["info"].get("blend") or {}
    if s["info"].get("blend_p_return"):
        where = (
            f"chosen on {blend['cutoff']} + {blend['horizon_days']:g} days"
            if "users" in blend
            else blend.get("reason", "no validation")
        )
        lines.append(
            f"blend: p_return {s['info']['blend_p_return']}; expected_sessions "
            f"{s['info']['blend_expected_sessions']} ({where})"
        )
    m = run.metrics
    if m is None:
        lines.append(f"the log ends at {s['log_end']}: no outcomes to score against")
    else:
        w = m["window"]
        lines.append(
            f"window: {w['returned']} of {w['users']} users returned "
            f"({'complete' if w.get('complete') else 'the log ends inside the window'})"
        )
        lines.append(f"{'predictor':<14} {'auc':>7} {'mae':>8} {'rmse':>8} {'c_index':>8}")
        rows = [("model", m["model"]), *m["baselines"].items()]
        if "oracle" in m:
            rows.append(("oracle", m["oracle"]))

        def fmt(v: float | None, width: int, digits: int) -> str:
            return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"

        for name, r in rows:
            lines.append(
                f"{name:<14} {fmt(r['auc'], 7, 4)} {fmt(r['mae'], 8, 3)} "
                f"{fmt(r['rmse'], 8, 3)} {fmt(r['c_index'], 8, 4)}"
            )
    lines.append(f"written to {run.out}")
    return "\n".join(lines)
