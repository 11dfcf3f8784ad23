"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

Each function takes plain arrays or the JSON payloads of the verbs and returns a
``matplotlib.figure.Figure``; :func:`save_png` writes it. One palette and one style for all,
so that a policy or an estimator keeps its colour across figures.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic PNGs

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = [
    "ACCENT",
    "MUTED",
    "PALETTE",
    "TRUTH",
    "encoder_panels",
    "fidelity",
    "fitted_vs_truth",
    "grouped_bars",
    "heatmap",
    "interval_bars",
    "learning_curves",
    "ope_estimates",
    "png_bytes",
    "sensitivity",
]

ACCENT = "#2563eb"
MUTED = "#94a3b8"
TRUTH = "#dc2626"
PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#8b5cf6", "#ef4444", "#14b8a6", "#64748b")
_STYLE: Any = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e2e8f0",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#cbd5e1",
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "font.family": "DejaVu Sans",
}


def _figure(width: float, height: float) -> Figure:
    with plt.rc_context(_STYLE):
        fig = Figure(figsize=(width, height), dpi=110)
    return fig


def _axes(fig: Figure, *args: Any) -> Any:
    with plt.rc_context(_STYLE):
        return fig.add_subplot(*args)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (metadata stripped, so the same figure gives the same bytes)."""
    buffer = io.BytesIO()
    with plt.rc_context(_STYLE):
        fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _steps_label(x: float, _pos: int) -> str:
    return f"{x / 1000:.0f}k" if abs(x) >= 1000 else f"{x:.0f}"


def learning_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """One panel per TensorBoard scalar: value against env steps.

    Args:
        curves: Tag -> (steps (N,), values (N,)), in the order to draw (at most 6 panels).
    """
    items = list(curves.items())[:6]
    cols = min(3, max(len(items), 1))
    rows = int(np.ceil(len(items) / cols)) or 1
    fig = _figure(4.0 * cols, 2.7 * rows)
    for i, (tag, (steps, values)) in enumerate(items):
        ax = _axes(fig, rows, cols, i + 1)
        steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
        few = len(values) < 5
        ax.plot(steps, values, color=ACCENT if few else MUTED, linewidth=1.5 if few else 0.8)
        if not few:
            # A centred moving average: the trend without the per-rollout noise.
            w = max(3, len(values) // 10)
            kernel = np.ones(w) / w
            smooth = np.convolve(
                np.pad(values, (w // 2, w - 1 - w // 2), mode="edge"), kernel, "valid"
            )
            ax.plot(steps, smooth, color=ACCENT, linewidth=1.8)
        ax.set_title(tag)
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
    fig.tight_layout()
    return fig


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str, cbar_label: str) -> Figure:
    """A row-stochastic matrix as a heatmap, rows = from, columns = to, values annotated."""
    m = np.asarray(matrix, dtype=np.float64)
    k = len(labels)
    size = 1.2 + 0.42 * k
    fig = _figure(size + 1.2, size)
    ax = _axes(fig, 1, 1, 1)
    ax.grid(False)
    image = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=max(float(m.max()), 1e-9))
    ax.set_xticks(range(k), labels, rotation=90)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("next category")
    ax.set_ylabel("current category")
    ax.set_title(title)
    if k <= 16:
        threshold = 0.6 * float(m.max())
        for r in range(k):
            for c in range(k):
                ax.text(
                    c,
                    r,
                    f"{m[r, c]:.2f}".lstrip("0") if m[r, c] < 1 else "1",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if m[r, c] > threshold else "#334155",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)
    fig.tight_layout()
    return fig


def fidelity(distributions: Mapping[str, Any]) -> Figure:
    """Simulated against logged: session-length distribution and next-category probabilities.

    Args:
        distributions: The ``distributions`` entry of ``fidelity.json``
            (:func:`rlrec.evaluation.fidelity.fidelity_distributions`).
    """
    fig = _figure(10.0, 3.6)
    ax = _axes(fig, 1, 2, 1)
    lengths = np.asarray(distributions["session_length"]["lengths"])
    sim = np.asarray(distributions["session_length"]["simulated"])
    test = np.asarray(distributions["session_length"]["test"])
    width = 0.4
    ax.bar(lengths - width / 2, test, width, color=MUTED, label="logged (test split)")
    ax.bar(lengths + width / 2, sim, width, color=ACCENT, label="simulated")
    ax.set_xlabel(f"session length in steps (last bar: >= {int(lengths[-1])})")
    ax.set_ylabel("share of sessions")
    ax.set_title("Session length")
    ax.legend()

    ax = _axes(fig, 1, 2, 2)
    trans = distributions["transitions"]
    p_test = np.asarray(trans["test"], dtype=np.float64).ravel()
    p_sim = np.asarray(trans["simulated"], dtype=np.float64).ravel()
    diagonal = np.eye(len(trans["labels"]), dtype=bool).ravel()
    ax.scatter(p_test[~diagonal], p_sim[~diagonal], s=10, color=ACCENT, alpha=0.6, label="switch")
    ax.scatter(p_test[diagonal], p_sim[diagonal], s=18, color=PALETTE[1], label="stay")
    top = max(float(p_test.max(initial=0)), float(p_sim.max(initial=0)), 1e-3) * 1.05
    ax.plot([0, top], [0, top], color=TRUTH, linewidth=1, linestyle="--", label="perfect fit")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("logged P(next category | category)")
    ax.set_ylabel("simulated")
    ax.set_title(f"Category transitions (top {len(trans['labels'])})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def interval_bars(
    rows: Sequence[tuple[str, float, float, float]],
    title: str,
    xlabel: str,
    highlight: str | None = None,
    reference: tuple[float, float, float] | None = None,
    reference_label: str = "true value",
) -> Figure:
    """Horizontal bars with 95% intervals, one row per (name, mean, lo, hi), top to bottom.

    Args:
        rows: (name, value, interval low, interval high); NaN intervals draw no whisker.
        title: Figure title.
        xlabel: Axis label.
        highlight: Name drawn in the accent colour (the others muted).
        reference: (value, lo, hi) drawn as a vertical line with a band (e.g. a true value).
        reference_label: Legend text of the reference.
    """
    fig = _figure(7.5, 0.9 + 0.42 * max(len(rows), 1))
    ax = _axes(fig, 1, 1, 1)
    y = np.arange(len(rows))[::-1]
    for yi, (name, value, lo, hi) in zip(y, rows, strict=True):
        color = ACCENT if name == highlight or highlight is None else MUTED
        ax.barh(yi, value, color=color, height=0.6)
        if np.isfinite(lo) and np.isfinite(hi):
            ax.errorbar(
                value,
                yi,
                xerr=[[max(value - lo, 0)], [max(hi - value, 0)]],
                color="#0f172a",
                capsize=3,
                linewidth=1,
            )
    if reference is not None:
        value, lo, hi = reference
        ax.axvspan(lo, hi, color=TRUTH, alpha=0.12)
        ax.axvline(value, color=TRUTH, linewidth=1.5, label=reference_label)
        ax.legend(loc="lower right")
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def ope_estimates(targets: Mapping[str, Mapping[str, Any]], default_estimator: str) -> Figure:
    """Per target: every estimator's value and interval beside the simulator's true value.

    Args:
        targets: The ``targets`` entry of ``rlrec ope sessions --simulate --json``.
        default_estimator: Estimator drawn in the accent colour.
    """
    names = list(targets)
    n_est = max((len(t["estimates"]) for t in targets.values()), default=1)
    fig = _figure(4.6 * max(len(names), 1), 1.0 + 0.38 * n_est)
    for i, name in enumerate(names):
        t = targets[name]
        ax = _axes(fig, 1, max(len(names), 1), i + 1)
        estimates = list(t["estimates"].items())
        y = np.arange(len(estimates))[::-1]
        for yi, (est, e) in zip(y, estimates, strict=True):
            value = np.nan if e["value"] is None else float(e["value"])
            lo, hi = (np.nan if v is None else float(v) for v in e["ci95"])
            color = ACCENT if est == default_estimator else "#334155"
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [yi, yi], color=color, linewidth=2, alpha=0.5)
            ax.plot([value], [yi], "o", color=color, markersize=5)
        if "true_value" in t:
            lo, hi = t["true_ci95"]
            ax.axvspan(lo, hi, color=TRUTH, alpha=0.12)
            ax.axvline(t["true_value"], color=TRUTH, linewidth=1.5)
        ax.set_yticks(y, [e for e, _ in estimates])
        ax.set_xlabel("expected session return")
        truth = f" (true {t['true_value']:.2f}, red)" if "true_value" in t else ""
        ax.set_title(f"target {name}{truth}")
        ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def grouped_bars(
    groups: Sequence[str], series: Mapping[str, Sequence[float | None]], title: str, ylabel: str
) -> Figure:
    """Bars grouped by metric (``groups``), one bar per model (``series`` name -> values)."""
    fig = _figure(8.0, 3.4)
    _bars(_axes(fig, 1, 1, 1), groups, series, title, ylabel)
    fig.tight_layout()
    return fig


def _bars(
    ax: Any,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    ylabel: str,
) -> None:
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        vals = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width, vals, width, label=name, color=PALETTE[i % 7]
        )
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    if series:  # an empty legend is a matplotlib warning, and says nothing
        ax.legend(ncol=min(len(series), 5), loc="upper center", bbox_to_anchor=(0.5, -0.12))


def encoder_panels(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    history: Sequence[Mapping[str, Any]],
) -> Figure:
    """The ranking bars above the encoder's training curves (one point per epoch).

    Args:
        groups: Metric names of the bars.
        series: Model name -> its value per metric.
        title: Title of the bars.
        history: ``encoder.json``'s ``info.history``: records with ``stage``, ``epoch``,
            ``train_loss``, ``valid_loss`` and (causal stages) ``valid_ndcg@10``; the stages
            are drawn one after the other.
    """
    fig = _figure(8.0, 6.4)
    _bars(_axes(fig, 2, 1, 1), groups, series, title, "score")
    losses = _axes(fig, 2, 2, 3)
    ndcg = _axes(fig, 2, 2, 4)
    x = np.arange(1, len(history) + 1)

    def column(key: str) -> np.ndarray:
        return np.asarray(
            [r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in history],
            dtype=np.float64,
        )

    losses.plot(x, column("train_loss"), color=PALETTE[0], label="train loss")
    losses.plot(x, column("valid_loss"), color=PALETTE[1], label="valid loss")
    ndcg.plot(x, column("valid_ndcg@10"), color=PALETTE[2], marker="o", ms=3)
    stages = [str(r.get("stage", "")) for r in history]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:  # where fine-tuning starts
            for ax in (losses, ndcg):
                ax.axvline(i + 0.5, color="0.6", lw=0.8, ls="--")
    losses.set_title("Training: losses per epoch")
    losses.set_xlabel("epoch (pretrain, then fine-tune)")
    losses.legend(loc="upper right")
    ndcg.set_title("Validation NDCG@10 per epoch")
    ndcg.set_xlabel("epoch (pretrain, then fine-tune)")
    fig.tight_layout()
    return fig


def sensitivity(
    parameters: Mapping[str, Sequence[float]],
    ratios: Sequence[float],
    designs: Sequence[str],
    policy: str = "ppo",
    intervals: Sequence[Sequence[float] | None] | None = None,
) -> Figure:
    """Small multiples: the policy's ratio to the best baseline against each swept parameter.

    Args:
        parameters: Swept parameter -> (W,) its value in each world (one panel each).
        ratios: (W,) the ratio in each world.
        designs: (W,) each world's design (``centre``, ``one-at-a-time``,
            ``latin-hypercube``): the centre is drawn in the accent colour, the
            one-at-a-time ends as squares, the Latin-hypercube points as dots.
        policy: The policy's name, for the axis label.
        intervals: (W,) each ratio's 95% interval (or None), drawn as whiskers.
    """
    names = list(parameters) or ["(nothing swept)"]
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = _figure(2.6 * cols + 0.6, 2.3 * rows + 0.4)
    r = np.asarray(ratios, dtype=np.float64)
    kind = np.asarray(designs)
    ci = np.array(
        [[np.nan, np.nan] if c is None else c for c in (intervals or [None] * len(r))],
        dtype=np.float64,
    ).reshape(len(r), 2)
    low = float(np.nanmin(np.r_[r, ci[:, 0], 1.0]))
    high = float(np.nanmax(np.r_[r, ci[:, 1], 1.0]))
    pad = 0.05 * max(high - low, 0.02)
    for i, name in enumerate(names):
        ax = _axes(fig, rows, cols, i + 1)
        x = np.asarray(parameters.get(name, np.zeros(len(r))), dtype=np.float64)
        # Another parameter's one-at-a-time worlds sit at this one's centre: they would pile
        # up in one column and say nothing about this parameter, so only its own are drawn.
        shown = np.ones(len(r), dtype=bool)
        if (kind == "centre").any():
            shown = (kind != "one-at-a-time") | (x != x[kind == "centre"][0])
        for design, marker, color, size in (
            ("latin-hypercube", "o", MUTED, 16),
            ("one-at-a-time", "s", "#334155", 22),
            ("centre", "D", ACCENT, 30),
        ):
            sel = (kind == design) & shown
            whisker = sel & np.isfinite(ci).all(axis=1)
            if whisker.any():
                ax.vlines(x[whisker], ci[whisker, 0], ci[whisker, 1], color=color, linewidth=0.8)
            if sel.any():
                ax.scatter(x[sel], r[sel], s=size, marker=marker, color=color, label=design)
        ax.axhline(1.0, color=TRUTH, linewidth=1, linestyle="--")
        ax.set_ylim(low - pad, high + pad)
        ax.set_title(name, fontsize=9)
        if i % cols == 0:
            ax.set_ylabel(f"{policy} / best baseline")
        if i == 0:
            ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def fitted_vs_truth(rows: Sequence[tuple[str, float, float]], highlight: str | None) -> Figure:
    """Each policy's mean return in the fitted simulator beside the truth world.

    Args:
        rows: (policy, fitted return, truth return), top to bottom.
        highlight: The agent's name, labelled in the accent colour.
    """
    fig = _figure(7.5, 0.9 + 0.5 * max(len(rows), 1))
    ax = _axes(fig, 1, 1, 1)
    y = np.arange(len(rows))[::-1]
    fitted = np.array([r[1] for r in rows], dtype=np.float64)
    truth = np.array([r[2] for r in rows], dtype=np.float64)
    ax.barh(y + 0.18, fitted, height=0.36, color=MUTED, label="fitted simulator")
    ax.barh(y - 0.18, truth, height=0.36, color=ACCENT, label="truth world")
    ax.set_yticks(y, [r[0] for r in rows])
    for tick in ax.get_yticklabels():
        if tick.get_text() == highlight:
            tick.set_color(ACCENT)
    ax.set_xlabel("mean session return")
    ax.set_title("Fitted simulator vs truth world")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
