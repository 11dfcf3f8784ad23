"""The analysis page: ``report.html`` and ``plots/*.png`` of ``rlrec analyze``.

Four sections, each a plot and a compact table, rendered by the main report's machinery
(:func:`rlrec.evaluation.report.render_html`, the same Jinja2 template, inline CSS and base64
images, so the page opens anywhere on its own and is checked the same way in headless
Chromium):

* **trends**: share per period of the strongest rising and falling categories, with their 95%
  intervals (``trends.png``);
* **drift**: total variation between consecutive periods' switch matrices with bootstrap
  intervals, change points as vertical lines (``drift.png``);
* **cross-sell**: the pairs with the highest lift as a graph (arrows X -> Y, width by lift) and
  recall@k of the model against the baselines (``cross_sell.png``);
* **demand**: forecast against actual views of the largest categories, with the model's
  interval on the held-out and future periods and the last-period baseline (``demand.png``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rlrec.analytics.demand import DemandResult
from rlrec.analytics.drift import DriftResult
from rlrec.analytics.trends import TrendResult
from rlrec.evaluation.plots import ACCENT, MUTED, PALETTE, TRUTH, png_bytes
from rlrec.evaluation.report import PLOTS_DIR, REPORT_FILE, Card, Section, Table, render_html

__all__ = [
    "cross_sell_figure",
    "demand_figure",
    "drift_figure",
    "trends_figure",
    "write_analysis_report",
]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ticks(ax: Any, starts: list[str], positions: np.ndarray) -> None:
    step = max(1, len(positions) // 8)
    ax.set_xticks(positions[::step])
    ax.set_xticklabels([starts[int(p)][:10] for p in positions[::step]], rotation=30, ha="right")


def trends_figure(trends: TrendResult, n: int = 3) -> Figure:
    """Share per period (with 95% bands) of the top ``n`` rising and falling categories."""
    fig = Figure(figsize=(10, 4.2), dpi=100)
    panels = (("Rising", trends.rising), ("Falling", trends.falling))
    shares = trends.shares
    for i, (label, names) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        chosen = list(names[:n])
        if not chosen:
            order = trends.tests.sort_values("slope", ascending=(label == "Falling"))
            chosen = [str(c) for c in order["category"].head(n)]
            label += " (none significant: largest slopes)"
        for j, name in enumerate(chosen):
            rows = shares[shares["category"] == name]
            x = rows["period"].to_numpy()
            color = PALETTE[j % len(PALETTE)]
            ax.plot(x, rows["share"], color=color, lw=1.8, label=name)
            ax.fill_between(x, rows["share_low"], rows["share_high"], color=color, alpha=0.18)
        ax.set_title(label)
        ax.set_ylabel("share of events")
        starts = list(dict.fromkeys(shares["start"]))
        _ticks(ax, starts, np.unique(shares["period"].to_numpy()))
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


def drift_figure(drift: DriftResult, period_starts: list[str]) -> Figure:
    """TV distance between consecutive periods with bootstrap intervals and change points."""
    fig = Figure(figsize=(10, 3.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    d = drift.distance
    x = d["period"].to_numpy()
    tv = d["tv"].to_numpy(dtype=float)
    low = np.nan_to_num(tv - d["tv_low"].to_numpy(dtype=float), nan=0.0).clip(0)
    high = np.nan_to_num(d["tv_high"].to_numpy(dtype=float) - tv, nan=0.0).clip(0)
    ax.errorbar(x, tv, yerr=[low, high], fmt="o-", color=ACCENT, ms=4, lw=1.4, capsize=2)
    for p in drift.change_points.periods:
        ax.axvline(p - 0.5, color=TRUTH, ls="--", lw=1.5)
        ax.text(p - 0.4, np.nanmax(tv) if np.isfinite(tv).any() else 1, "change", color=TRUTH)
    ax.set_ylabel("TV to the period before")
    ax.set_title("Drift of the category switch matrix")
    if len(x):
        _ticks(ax, period_starts, x)
    fig.tight_layout()
    return fig


def cross_sell_figure(pairs: pd.DataFrame, metrics: dict[str, Any], k: int, n: int = 15) -> Figure:
    """Left: the top-lift pairs as a directed graph; right: recall@k per method."""
    fig = Figure(figsize=(10, 4.6), dpi=100)
    ax = fig.add_subplot(1, 2, 1)
    top = pairs[pairs["basis"] == "engaged"].head(n)
    nodes = list(dict.fromkeys([*top["antecedent"], *top["consequent"]]))
    angle = 2 * np.pi * np.arange(len(nodes)) / max(len(nodes), 1)
    pos = {name: (np.cos(a), np.sin(a)) for name, a in zip(nodes, angle, strict=True)}
    lift = top["lift"].to_numpy(dtype=float)
    width = 0.8 + 3.0 * (lift - lift.min()) / max(np.ptp(lift), 1e-9) if len(lift) else lift
    for (_, row), w in zip(top.iterrows(), width, strict=True):
        (x0, y0), (x1, y1) = pos[row["antecedent"]], pos[row["consequent"]]
        ax.annotate(
            "",
            xy=(x1 * 0.9, y1 * 0.9),
            xytext=(x0 * 0.9, y0 * 0.9),
            arrowprops={"arrowstyle": "-|>", "color": ACCENT, "lw": w, "alpha": 0.6},
        )
    for name, (x, y) in pos.items():
        ax.scatter([x], [y], s=60, color=PALETTE[1], zorder=3)
        ax.text(x * 1.12, y * 1.12, name, ha="center", va="center", fontsize=7)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.4, 1.4)
    ax.set_axis_off()
    ax.set_title(f"Top {len(top)} pairs by lift (engaged X, later Y)")
    ax2 = fig.add_subplot(1, 2, 2)
    names = list(metrics)
    values = [metrics[m].get(f"recall@{k}") or 0.0 for m in names]
    colors = [ACCENT if i == 0 else MUTED for i in range(len(names))]
    ax2.barh(names[::-1], values[::-1], color=colors[::-1])
    ax2.set_xlabel(f"recall@{k}, next new category")
    ax2.set_title("Model vs baselines")
    fig.tight_layout()
    return fig


def demand_figure(demand: DemandResult, n: int = 4) -> Figure:
    """Views per period of the ``n`` largest categories: actual, forecast, interval."""
    table = demand.table[demand.table["event"] == "view"]
    biggest = (
        table[table["kind"] == "holdout"].groupby("category")["actual"].sum().nlargest(n).index
    )
    fig = Figure(figsize=(10, 5.2), dpi=100)
    for i, name in enumerate(biggest):
        ax = fig.add_subplot(2, 2, i + 1)
        rows = table[table["category"] == name].sort_values("period")
        ax.plot(rows["period"], rows["actual"], "o-", color="#0f172a", ms=3, lw=1.2, label="actual")
        ax.plot(rows["period"], rows["model"], "s-", color=ACCENT, ms=3, lw=1.2, label="model")
        ax.fill_between(rows["period"], rows["low"], rows["high"], color=ACCENT, alpha=0.15)
        ax.plot(rows["period"], rows["last_period"], "--", color=MUTED, lw=1.2, label="last period")
        ax.set_title(str(name))
        ax.set_ylabel("views")
        periods = rows["period"].to_numpy()
        ax.set_xticks(periods)
        ax.set_xticklabels([str(d)[5:10] for d in rows["start"]], rotation=30, ha="right")
        if i == 0:
            ax.legend(loc="best")
    fig.suptitle("Views per period: held-out and future forecasts (95% interval)")
    fig.tight_layout()
    return fig


def _trend_table(trends: TrendResult) -> Table:
    rows = []
    tests = trends.tests.set_index("category")
    for direction, names in (("rising", trends.rising[:5]), ("falling", trends.falling[:5])):
        for name in names:
            t = tests.loc[name]
            rows.append(
                [
                    direction,
                    name,
                    _fmt(float(t["slope"])),
                    f"{float(t['q_value']):.2g}",
                    f"{100 * t['share_first']:.2f}% → {100 * t['share_last']:.2f}%",
                    f"[{100 * t['gain_low']:+.2f}, {100 * t['gain_high']:+.2f}] pp",
                ]
            )
    if not rows:
        rows = [["none", "no category rises or falls at the false discovery rate", "", "", "", ""]]
        # The largest gains still answer "what grew most", said to be not significant.
        for g in trends.gainers(3):
            t = tests.loc[g["category"]]
            rows.append(
                [
                    "largest gain (not significant)",
                    str(g["category"]),
                    _fmt(float(t["slope"])),
                    _fmt(float(t["q_value"]), 2),
                    f"{100 * t['share_first']:.2f}% → {100 * t['share_last']:.2f}%",
                    f"[{100 * t['gain_low']:+.2f}, {100 * t['gain_high']:+.2f}] pp",
                ]
            )
    header = ["direction", "category", "slope (log-odds/period)", "q (BH)", "share"]
    return Table([*header, "gain 95% interval"], rows)


def _metrics_table(block: dict[str, Any], keys: list[str]) -> Table:
    rows = [["model", *[_fmt(block["model"].get(k)) for k in keys]]]
    for name, m in block["baselines"].items():
        rows.append([name, *[_fmt(m.get(k)) for k in keys]])
    return Table(["method", *keys], rows, highlight=0)


def write_analysis_report(
    directory: str | os.PathLike[str],
    summary: dict[str, Any],
    *,
    trends: TrendResult,
    drift: DriftResult,
    pairs: pd.DataFrame,
    demand: DemandResult | None,
    period_starts: list[str],
) -> Path:
    """Write ``report.html`` and ``plots/*.png`` into ``directory``; returns the page."""
    root = Path(directory)
    k = int(summary["cross_sell"]["k"])
    recall = f"recall@{k}"
    cross = summary["cross_sell"]
    metrics = {"model": cross["model"], **cross["baselines"]}
    cps = drift.change_points
    sections = [
        Section(
            "trends",
            "Interest trends",
            caption=(
                "Share of events per period with 95% intervals (Wilson on the effective "
                "count under user clustering). Rising and falling: within-user trend test "
                "(logit with one intercept per user, user-clustered sandwich, categories "
                "with 20 users or more), Benjamini-Hochberg q < "
                f"{summary['config']['alpha']}; strongest gain in share first."
            ),
            image=png_bytes(trends_figure(trends)),
            table=_trend_table(trends),
        ),
        Section(
            "drift",
            "Migration drift",
            caption=(
                "Total variation between consecutive periods' switch matrices (session "
                "bootstrap 95% intervals); dashed lines: change points (binary segmentation, "
                "within-user permutation tests). "
                f"Stationarity p = {_fmt(cps.stationarity_p)}; mixing time "
                f"{summary['migration']['mixing_time']} switches."
            ),
            image=png_bytes(drift_figure(drift, period_starts)),
            table=Table(
                ["segment", "best split", "G", "p (permutation)", "change"],
                [
                    [
                        f"{period_starts[int(r.start)]} .. {period_starts[int(r.stop) - 1]}",
                        period_starts[int(r.split)],
                        f"{r.statistic:.1f}",
                        f"{r.p_value:.3f}",
                        "yes" if r.change else "no",
                    ]
                    for r in cps.tests.itertuples()
                ],
            ),
        ),
        Section(
            "cross_sell",
            "Cross-sell",
            caption=(
                "Pairs: users whose first X came before their first Y (lift over Y's user "
                f"share). Metrics: {cross['task']}; {recall} and NDCG@{k}."
            ),
            image=png_bytes(cross_sell_figure(pairs, metrics, k)),
            table=_metrics_table(cross, [recall, f"ndcg@{k}", "targets", "users"]),
        ),
    ]
    if demand is None:
        sections.append(
            Section("demand", "Category demand", missing=str(summary["demand"]["unavailable"]))
        )
    else:
        sections.append(
            Section(
                "demand",
                "Category demand",
                caption=(
                    "Views, carts and buys per category: one-step forecasts of the held-out "
                    "periods (rolling origin) and of the next periods; WAPE and MAPE over "
                    f"categories and event types; interval coverage {demand.coverage:.0%}."
                ),
                image=png_bytes(demand_figure(demand)),
                table=_metrics_table(summary["demand"], ["wape", "mape", "wape_view", "wape_buy"]),
            )
        )
    plots = root / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    for s in sections:
        if s.image is not None:
            (plots / f"{s.key}.png").write_bytes(s.image)
    head = summary["headline"]
    cards = [
        Card("Top rising category", head["top_rising"] or "none", "within-user test, BH", None),
        Card(
            "Change points",
            str(len(summary["change_points"])),
            ", ".join(summary["change_points"][:3]) or "migration looks stationary",
        ),
        Card(
            f"Cross-sell {recall}",
            _fmt(head["cross_sell_model_recall"]),
            f"association rules {_fmt(head['cross_sell_rules_recall'])}",
            _better(head["cross_sell_model_recall"], head["cross_sell_rules_recall"]),
        ),
        Card(
            "Demand WAPE",
            _fmt(head["demand_model_wape"]),
            f"last period {_fmt(head['demand_last_period_wape'])}",
            _better(head["demand_last_period_wape"], head["demand_model_wape"]),
        ),
    ]
    page = render_html(
        "rlrec analyze",
        f"{summary['dataset']} · {summary['periods']['count']} periods of {summary['period']}",
        {},
        sections,
        cards=cards,
        writer="rlrec analyze",
    )
    path = root / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def _q(q: float) -> str:
    """A q-value for the table (``< 1e-16`` below double precision's resolution near 1)."""
    return "< 1e-16" if q < 1e-16 else f"{q:.2g}"


def _better(high: Any, low: Any) -> bool | None:
    """Whether ``high`` beats ``low`` (None when either is missing)."""
    if high is None or low is None:
        return None
    return bool(high > low)
