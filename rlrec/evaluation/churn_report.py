"""The "Retention and churn" section of the HTML report, from an ``rlrec churn`` output.

Kept out of :mod:`rlrec.evaluation.report` so that the report module only routes to it: four
panels (survival curves by risk segment, the calibration of ``p_return``, what drives risk,
AUC of the model beside the baselines) and a table of the most at-risk users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = [
    "CHURN_DIRS",
    "churn_figure",
    "find_churn",
    "section_parts",
]

CHURN_DIRS = (".", "churn")
"""Where the report looks for ``churn.json`` under its directory (itself, or ``churn/``)."""


def find_churn(root: Path) -> Path | None:
    """The churn output directory under ``root``, or None."""
    for name in CHURN_DIRS:
        candidate = root / name
        if (candidate / "churn.json").is_file():
            return candidate
    return None


def churn_figure(summary: dict[str, Any], metrics: dict[str, Any] | None) -> Figure:
    """Survival by segment, calibration, drivers of risk, AUC by predictor."""
    from rlrec.evaluation import plots

    fig = plots._figure(11.0, 7.0)
    ax = plots._axes(fig, 2, 2, 1)
    days = summary["curve_days"]
    for name, curve in summary["survival_by_segment"].items():
        ax.plot(days, curve["survival"], label=f"{name} ({curve['users']:,})")
    ax.set_xlabel("days after the cutoff")
    ax.set_ylabel("P(no session yet)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Survival by risk segment (mean model curve)")
    ax.legend()

    ax = plots._axes(fig, 2, 2, 2)
    calibration = summary.get("calibration")
    if calibration and calibration.get("bins"):
        bins = calibration["bins"]
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        ax.plot([b["p_mean"] for b in bins], [b["observed"] for b in bins], marker="o")
        ax.set_title(f"Calibration of p_return (ECE {calibration['ece']:.3f})")
    else:
        ax.text(0.5, 0.5, "no outcomes in the log after the cutoff", ha="center", va="center")
        ax.set_title("Calibration of p_return")
    ax.set_xlabel("predicted P(return)")
    ax.set_ylabel("observed return rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)

    ax = plots._axes(fig, 2, 2, 3)
    drivers = _drivers(summary)
    if drivers:
        names = [n for n, _ in drivers][::-1]
        values = [v for _, v in drivers][::-1]
        ax.barh(names, values)
        ax.set_xlabel(
            "AUC drop when permuted"
            if summary.get("importances")
            else "log-odds of leaving per standard deviation"
        )
    ax.set_title("What drives risk")

    ax = plots._axes(fig, 2, 2, 4)
    if metrics is not None:
        rows = [("model", metrics["model"]), *metrics["baselines"].items()]
        if "oracle" in metrics:
            rows.append(("oracle", metrics["oracle"]))
        rows = [(n, r) for n, r in rows if r.get("auc") is not None]
        ax.bar([n for n, _ in rows], [r["auc"] for _, r in rows])
        ax.set_ylim(0.5 if rows and min(r["auc"] for _, r in rows) > 0.5 else 0, 1)
        ax.tick_params(axis="x", rotation=35)
        ax.set_ylabel("AUC of p_return")
    ax.set_title("Model vs baselines")
    fig.tight_layout()
    return fig


def _drivers(summary: dict[str, Any], top: int = 8) -> list[tuple[str, float]]:
    importances = summary.get("importances") or {}
    if importances:
        ranked = sorted(importances.items(), key=lambda kv: -kv[1])
        return [(k, float(v)) for k, v in ranked[:top]]
    model = summary.get("return_model")
    if model:
        return list(zip(model["feature_names"], map(float, model["gamma"]), strict=True))[:top]
    return []


def section_parts(
    directory: Path, summary: dict[str, Any], metrics: dict[str, Any] | None
) -> tuple[str, list[str], list[list[str]]]:
    """Caption, table header and rows (the most at-risk users) of the section."""
    header = ["user", "p_return", "expected sessions", "segment", "recency (days)", "sessions"]
    rows = [
        [
            str(r["user"]),
            f"{r['p_return']:.3f}",
            f"{r['expected_sessions']:.2f}",
            str(r["segment"]),
            f"{r.get('recency_days', float('nan')):.1f}",
            f"{r.get('frequency', float('nan')):.0f}",
        ]
        for r in summary["most_at_risk"][:10]
    ]
    segments = ", ".join(f"{k} {v:,}" for k, v in summary["segments"].items())
    caption = (
        f"'rlrec churn' at {summary['cutoff']} for {summary['horizon_days']:g} days on "
        f"{summary['n_users']:,} users ({segments}; predictor {summary['info'].get('model')}), "
        f"from {directory}. "
    )
    if metrics is not None:
        model = metrics["model"]
        best = (
            max((r["auc"], n) for n, r in metrics["baselines"].items() if r.get("auc") is not None)
            if any(r.get("auc") is not None for r in metrics["baselines"].values())
            else None
        )
        caption += (
            f"Against what happened: model AUC {_num(model['auc'])}, MAE "
            f"{_num(model['mae'])} sessions"
            + (f"; best baseline {best[1]} AUC {best[0]:.3f}" if best else "")
            + (f"; oracle AUC {_num(metrics['oracle']['auc'])}" if "oracle" in metrics else "")
            + ". "
        )
    caption += "The table lists the users least likely to return."
    return caption, header, rows


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
