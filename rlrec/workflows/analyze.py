"""``rlrec analyze``: interest trends, migration drift, cross-sell and category demand of a log.

One command over a PreparedDataset (:mod:`rlrec.analytics` holds the analyses); writes an
analysis directory atomically (``--force`` to replace an earlier one):

=============================  ============================================================
file                           content
=============================  ============================================================
``summary.json``               the answers (rising and falling categories, change points,
                               cross-sell and demand metrics of the model and baselines)
``trends.csv``                 trend test per category (slope, p, BH q, direction)
``trend_shares.csv``           share per period and category with 95% intervals
``trends_by_segment.csv``      trend tests per user segment (new/returning, high/low)
``drift_distance.csv``         total variation between consecutive periods' switch matrices
``change_point_tests.csv``     each binary-segmentation test (split, G, permutation p)
``migration_matrix.csv``       the pooled switch matrix (rows: from, columns: to)
``migration_top.csv``          the most frequent switches
``migration_flows.csv``        inflow, outflow, net and role (feeder, drain) per category
``cross_sell_pairs.csv``       pairs X -> Y with support, confidence, lift (engaged, bought)
``cross_sell_predictions.csv`` each user's next new categories (the model's top 10)
``demand_forecast.csv``        held-out and future forecasts with intervals and baselines
``report.html``, ``plots/``    the page and its PNG plots
=============================  ============================================================

Tables are CSV, or Parquet with ``table_format="parquet"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from rlrec.errors import UserError

__all__ = [
    "SUMMARY_FILE",
    "AnalyzeConfig",
    "AnalyzeResult",
    "format_summary",
    "run_analysis",
]

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of :func:`run_analysis`.

    Attributes:
        period: Period length (``1d``, ``1w``, ``12h``, ...).
        top_k_categories: Categories kept by steps; the rest fold into ``__other__`` (as the
            transition fit folds them).
        alpha: False discovery rate of the trend lists (Benjamini-Hochberg).
        change_alpha: Significance level of each change-point test.
        bootstrap: Poisson-bootstrap replicates of the drift distances.
        permutations: Within-user shuffles of periods per change-point test.
        k: Cut-off of the cross-sell recall@k and NDCG@k.
        min_support: Users a cross-sell pair needs to be listed.
        holdout: Periods held out to evaluate the demand forecasts.
        horizon: Periods forecast after the log.
        table_format: ``csv`` or ``parquet``.
        seed: Seed of the bootstrap, the permutations and the ranker's subsample.
    """

    period: str = "1d"
    top_k_categories: int = 50
    alpha: float = 0.05
    change_alpha: float = 0.01
    bootstrap: int = 100
    permutations: int = 199
    k: int = 10
    min_support: int = 5
    holdout: int = 3
    horizon: int = 2
    table_format: Literal["csv", "parquet"] = "csv"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.top_k_categories >= 2, "--top-k must be >= 2"),
            (0 < self.alpha < 1 and 0 < self.change_alpha < 1, "alpha must be in (0, 1)"),
            (self.bootstrap >= 0 and self.permutations >= 1, "--bootstrap >= 0, permutations >= 1"),
            (self.k >= 1 and self.min_support >= 1, "--k and --min-support must be >= 1"),
            (self.holdout >= 1 and self.horizon >= 1, "--holdout and --horizon must be >= 1"),
            (self.table_format in ("csv", "parquet"), "--format must be csv or parquet"),
            (
                1.0 / (self.permutations + 1) < self.change_alpha,
                "permutations too few for change_alpha: 1 / (permutations + 1) must be below it",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass(frozen=True)
class AnalyzeResult:
    """What :func:`run_analysis` returns.

    Attributes:
        out: The analysis directory.
        summary: The content of ``summary.json``.
    """

    out: Path
    summary: dict[str, Any]


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def run_analysis(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: AnalyzeConfig | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    extra_scorers: Mapping[str, Any] | None = None,
) -> AnalyzeResult:
    """Run every analysis of ``data_dir`` and write the analysis directory ``out``.

    Args:
        data_dir: A PreparedDataset directory.
        out: The analysis directory (written atomically; replaced only with ``force``).
        config: Settings; defaults when None.
        force: Replace an earlier analysis at ``out``.
        progress: Called with a label after each stage.
        extra_scorers: More next-new-category models (name -> a
            :class:`rlrec.analytics.cross_sell.CrossSellScorer`), evaluated beside the
            baselines: the hook for the encoder's ``next_new_category`` head.

    Raises:
        UserError: For a dataset that cannot be analysed (no categories, a period longer than
            the log, too few periods) or an output that may not be replaced.
    """
    from rlrec.analytics.cross_sell import MODEL, category_pairs, evaluate_next_category
    from rlrec.analytics.demand import demand_forecast
    from rlrec.analytics.drift import migration_drift
    from rlrec.analytics.periods import parse_period, period_log
    from rlrec.analytics.report import write_analysis_report
    from rlrec.analytics.trends import category_trends, segment_trends
    from rlrec.data.dataset import load_dataset
    from rlrec.fsutil import atomic_directory, check_output, write_json_atomic

    config = config or AnalyzeConfig()
    period_ms = parse_period(config.period)
    check_output(out, "analysis", force)  # before the work: a refusal costs nothing
    started = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    last = [started]

    def step(label: str) -> None:
        now = time.perf_counter()
        stage_seconds[label] = round(stage_seconds.get(label, 0.0) + now - last[0], 2)
        last[0] = now
        if progress is not None:
            progress(label)

    ds = load_dataset(data_dir)
    log = period_log(ds, period_ms, config.top_k_categories)
    starts = log.period_starts()
    lo, hi = log.active_range()
    step("periods")

    trends = category_trends(log, (lo, hi), config.alpha)
    segments = segment_trends(log, config.alpha, (lo, hi))
    step("trends")

    index, cur, nxt = log.switches()
    drift = migration_drift(
        log.period[index],
        cur,
        nxt,
        log.session[index],
        log.category_ids,
        starts,
        alpha=config.change_alpha,
        bootstrap=config.bootstrap,
        permutations=config.permutations,
        seed=config.seed,
        active=(lo, hi),
        user=log.user[index],
    )
    step("drift")

    split = ds.meta.get("split", {}).get("cutoffs_ms", {})
    cutoffs = (int(split["valid"]), int(split["test"])) if {"valid", "test"} <= set(split) else None
    cross = evaluate_next_category(
        log, config.k, cutoffs, extra_scorers, progress=step, seed=config.seed
    )
    pairs = pd.concat(
        [category_pairs(log, config.min_support, basis) for basis in ("engaged", "bought")],
        ignore_index=True,
    )
    step("cross-sell")

    demand = demand_forecast(log, config.holdout, config.horizon)
    step("demand")

    matrix = drift.matrix
    stationary = matrix.stationary_distribution()
    flows = matrix.flows()
    cps = drift.change_points
    recall = f"recall@{config.k}"
    baselines = {name: m for name, m in cross.metrics.items() if name != MODEL}
    summary: dict[str, Any] = {
        "dataset": str(Path(data_dir).resolve()),
        "period": config.period,
        "periods": {
            "count": log.n_periods,
            "first": starts[0],
            "last": starts[-1],
            "trend_periods": [starts[lo], starts[hi]],
        },
        "categories": list(log.category_ids),
        "rising": trends.rising,
        "falling": trends.falling,
        "gainers": trends.gainers(),
        "change_points": [starts[p] for p in cps.periods],
        "stationarity_p_value": cps.stationarity_p,
        "migration": {
            "switches": int(matrix.counts.sum()),
            "stationary_top": [
                {"category": log.category_ids[c], "share": float(stationary[c])}
                for c in np.argsort(-stationary)[:5]
            ],
            "mixing_time": matrix.mixing_time(),
            "feeders": [str(c) for c in flows[flows["role"] == "feeder"]["category"][:5]],
            "drains": [str(c) for c in flows[flows["role"] == "drain"]["category"][::-1][:5]],
            "mean_tv": float(np.nanmean(drift.distance["tv"])) if len(drift.distance) else None,
        },
        "cross_sell": {
            "task": "next new category: each first entry of a user into a category after the "
            "test cut, ranked against the categories the user has not met",
            "k": config.k,
            "model": cross.metrics[MODEL],
            "baselines": baselines,
            "params": cross.params,
            "top_pairs": pairs[pairs["basis"] == "engaged"].head(10).to_dict(orient="records"),
        },
        "config": asdict(config),
        "seed": config.seed,
    }
    if isinstance(demand, str):
        summary["demand"] = {"unavailable": demand}
    else:
        summary["demand"] = {
            "model": demand.metrics["model"],
            "baselines": {n: m for n, m in demand.metrics.items() if n != "model"},
            "interval_coverage": demand.coverage,
            "info": demand.info,
        }
    summary["headline"] = {
        "top_rising": trends.rising[0] if trends.rising else None,
        "cross_sell_model_recall": cross.metrics[MODEL][recall],
        "cross_sell_rules_recall": cross.metrics["association_rules"][recall],
        "demand_model_wape": None if isinstance(demand, str) else demand.metrics["model"]["wape"],
        "demand_last_period_wape": (
            None if isinstance(demand, str) else demand.metrics["last_period"]["wape"]
        ),
    }

    users = ds.users["raw_id"].astype(str).to_numpy()
    predictions = cross.predictions.assign(user=users[cross.predictions["user"].to_numpy()])
    ids = list(log.category_ids)
    tables: dict[str, pd.DataFrame] = {
        "trends": trends.tests,
        "trend_shares": trends.shares,
        "trends_by_segment": segments,
        "drift_distance": drift.distance,
        "change_point_tests": cps.tests.assign(split_start=[starts[p] for p in cps.tests["split"]]),
        "migration_matrix": pd.DataFrame(matrix.matrix, index=ids, columns=ids)
        .rename_axis("from")
        .reset_index(),
        "migration_top": matrix.top_transitions(50),
        "migration_flows": flows.assign(
            stationary=stationary[[ids.index(c) for c in flows["category"]]]
        ),
        "cross_sell_pairs": pairs,
        "cross_sell_predictions": predictions,
    }
    if not isinstance(demand, str):
        tables["demand_forecast"] = demand.table
    summary["stage_seconds"] = stage_seconds
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary = _clean(summary)
    with atomic_directory(out, "analysis", force) as tmp:
        for name, frame in tables.items():
            if config.table_format == "parquet":
                frame.to_parquet(tmp / f"{name}.parquet", index=False)
            else:
                frame.to_csv(tmp / f"{name}.csv", index=False)
        write_analysis_report(
            tmp,
            summary,
            trends=trends,
            drift=drift,
            pairs=pairs,
            demand=None if isinstance(demand, str) else demand,
            period_starts=starts,
        )
        write_json_atomic(tmp / SUMMARY_FILE, summary)
    step("written")
    return AnalyzeResult(out=Path(out), summary=summary)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a few readable lines."""
    k = summary["cross_sell"]["k"]
    recall = f"recall@{k}"
    cross = summary["cross_sell"]
    lines = [
        f"periods: {summary['periods']['count']} x {summary['period']} "
        f"({summary['periods']['first']} .. {summary['periods']['last']})",
        f"rising: {', '.join(summary['rising'][:5]) or 'none'}",
        f"falling: {', '.join(summary['falling'][:5]) or 'none'}",
        "largest gains in share (95% interval): "
        + ", ".join(
            f"{g['category']} {100 * g['gain']:+.2f} pp "
            f"[{100 * g['gain_low']:+.2f}, {100 * g['gain_high']:+.2f}]"
            for g in summary["gainers"][:3]
            if g["gain"] is not None and g["gain_low"] is not None and g["gain_high"] is not None
        ),
        f"change points: {', '.join(summary['change_points']) or 'none'} "
        f"(stationarity p = {summary['stationarity_p_value']})",
        f"cross-sell {recall}: model {_num(cross['model'][recall])}, "
        + ", ".join(f"{n} {_num(m[recall])}" for n, m in cross["baselines"].items()),
    ]
    demand = summary["demand"]
    if "unavailable" in demand:
        lines.append(f"demand: unavailable ({demand['unavailable']})")
    else:
        lines.append(
            f"demand WAPE: model {_num(demand['model']['wape'])}, "
            + ", ".join(f"{n} {_num(m['wape'])}" for n, m in demand["baselines"].items())
        )
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"
