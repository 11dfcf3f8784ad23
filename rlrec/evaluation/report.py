"""``rlrec report``: one self-contained HTML page (and PNG plots) from a run's artifacts.

Reads the quickstart layout (:mod:`rlrec.workflows.quickstart`; the file names are repeated here
because evaluation never imports agents) or a plain ``rlrec train`` run directory:

==================  ===========================================  ==========================
section             input                                        plot
==================  ===========================================  ==========================
fitted vs truth     ``eval_truth.json`` beside ``eval.json``      ``truth.png``
sensitivity         ``sensitivity.json`` (or ``run/...``)        ``sensitivity.png``
learning curves     ``run/tensorboard`` (or ``tensorboard/``)    ``learning_curves.png``
migration matrix    ``sim/`` (or the run's ``sim_dir``)          ``migration.png``
fidelity            ``fidelity.json`` (``distributions``)        ``fidelity.png``
policy comparison   ``evaluate.json`` (or ``run/eval.json``)     ``policies.png``
OPE                 ``ope_sessions.json``                        ``ope.png``
encoder ranking     ``encoder_eval.json``                        ``encoder.png``
==================  ===========================================  ==========================

A section whose input is missing says so on the page, except the two optional ones (fitted vs
truth, sensitivity), which appear only when their file exists. An ``rlrec analyze`` output
saved as ``analysis/`` in the folder gets a link to its page in the navigation. Images are
embedded as base64 PNG and the CSS is inline, so ``report.html`` opens anywhere on its own; the
same PNGs are written to ``plots/``. A headline at the top gives the key numbers: PPO against
greedy (return ratio), the agent against the best non-oracle baseline in the truth world (when
there is one), the encoder's NDCG@10 against its best baseline, the simulator's fidelity (KS,
JS) and the most accurate OPE estimator's error.

This module only reads inputs and renders: the page is a Jinja2 template
(``templates/report.html.j2``, autoescaped), the numbers it draws are computed in
:mod:`rlrec.evaluation.fidelity` (distributions, migration matrix) and
:mod:`rlrec.evaluation.compare` (ratios to the best baseline, fitted-vs-truth gaps).
"""

from __future__ import annotations

import base64
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlrec.errors import UserError, quote_value
from rlrec.evaluation.fidelity import migration_matrix

__all__ = [
    "ANALYSIS_DIR",
    "REPORT_FILE",
    "Card",
    "ReportInputs",
    "ReportResult",
    "Section",
    "Table",
    "TruncatedLogWarning",
    "find_inputs",
    "headline_cards",
    "headline_numbers",
    "read_scalars",
    "render_html",
    "truncated_event_files",
    "write_report",
]

REPORT_FILE = "report.html"
ANALYSIS_DIR = "analysis"
"""Folder of an ``rlrec analyze`` output that the report links to when it holds a page."""
SENS = "sensitivity.json"
TRUTH_EVAL = "eval_truth.json"
PLOTS_DIR = "plots"
TEMPLATE = "report.html.j2"
# Learning-curve tags in the order they are drawn (those present, at most six panels).
CURVE_TAGS = (
    "charts/episode_return",
    "rollout/ep_rew_mean",
    "charts/engage_rate",
    "charts/session_length",
    "charts/category_coverage",
    "train/value_loss",
    "train/approx_kl",
    "train/entropy_loss",
)
TITLES = {
    "learning_curves": "Learning curves",
    "migration": "Category migration matrix",
    "fidelity": "Simulator fidelity",
    "policies": "Policy comparison in the simulator",
    "truth": "Fitted simulator vs truth world",
    "sensitivity": "Sensitivity to what the logs cannot identify",
    "ope": "Off-policy evaluation against the simulator's truth",
    "encoder": "Encoder ranking metrics",
    "churn": "Retention and churn",
}
"""Section key (plot file stem) -> heading."""


@dataclass(frozen=True)
class Table:
    """A compact table: plain-text cells (the template escapes them).

    Attributes:
        header: Column headings.
        rows: Rows of cell text.
        highlight: Index of a row to emphasise (the agent), or None.
    """

    header: list[str]
    rows: list[list[str]]
    highlight: int | None = None


@dataclass
class Section:
    """One section of the page: a plot, a compact table and a caption, or why it is missing.

    Attributes:
        key: Plot file stem (``plots/<key>.png``) and HTML anchor.
        title: Section heading.
        caption: What the plot shows and what to look for.
        image: PNG bytes, or None when the section is missing.
        table: A table, or None.
        missing: Why the section is empty (names the input it needs), or None.
    """

    key: str
    title: str
    caption: str = ""
    image: bytes | None = None
    table: Table | None = None
    missing: str | None = None


@dataclass
class ReportResult:
    """What :func:`write_report` returns.

    Attributes:
        html: The ``report.html`` path.
        plots: The PNG files written.
        headline: Key numbers (None where the input is missing).
        sections: Section key -> whether it has content.
    """

    html: Path
    plots: list[Path] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, bool] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


@dataclass
class ReportInputs:
    """Where each input of the report is, or None when absent.

    Attributes:
        root: The directory given.
        run_dir: The PPO run directory (``root/run`` or ``root`` itself).
        sim_dir: A SimModel directory.
        files: Input name -> JSON payload for ``evaluate``, ``encoder_eval``, ``fidelity``,
            ``ope``, ``summary``, ``sensitivity``, and ``eval_truth`` with ``eval_fitted``
            (the ``eval.json`` beside it) (absent keys: no such file).
    """

    root: Path
    run_dir: Path | None = None
    sim_dir: Path | None = None
    files: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a binary file?); rerun its stage") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); rerun its stage"
        ) from None


def find_inputs(directory: str | os.PathLike[str]) -> ReportInputs:
    """Locate the report's inputs under ``directory`` (quickstart layout or a run directory).

    Raises:
        UserError: If ``directory`` does not exist or holds none of the inputs.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; pass a quickstart output or a run directory")
    found = ReportInputs(root=root)
    for candidate in (root / "run", root):
        if (candidate / "config.yaml").is_file():
            found.run_dir = candidate
            break
    if (root / "sim" / "sim_model.json").is_file():
        found.sim_dir = root / "sim"
    elif found.run_dir is not None:
        try:
            config = yaml.safe_load((found.run_dir / "config.yaml").read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            config = {}  # the learning-curve section still reads; the run's loader says more
        if not isinstance(config, dict):
            config = {}
        sim_dir = Path(str(config.get("sim_dir") or ""))
        if config.get("sim_dir") and (sim_dir / "sim_model.json").is_file():
            found.sim_dir = sim_dir
    names = {
        "evaluate": ["evaluate.json"],
        "encoder_eval": ["encoder_eval.json"],
        "fidelity": ["fidelity.json"],
        "ope": ["ope_sessions.json"],
        "summary": ["summary.json"],
    }
    if found.run_dir is not None:
        names["evaluate"].append(str(found.run_dir.relative_to(root) / "eval.json"))
        names["sensitivity"] = ["sensitivity.json", str(found.run_dir.relative_to(root) / SENS)]
    else:
        names["sensitivity"] = [SENS]
    # The truth-world evaluation is paired with the fitted one in the same folder only: both
    # must come from one run and one set of users.
    for folder in dict.fromkeys([root] + ([found.run_dir] if found.run_dir else [])):
        if (folder / TRUTH_EVAL).is_file():
            found.files["eval_truth"] = _read_json(folder / TRUTH_EVAL)
            for name in ("eval.json", "evaluate.json"):
                if (folder / name).is_file():
                    found.files["eval_fitted"] = _read_json(folder / name)
                    break
            break
    for key, candidates in names.items():
        for name in candidates:
            if (root / name).is_file():
                found.files[key] = _read_json(root / name)
                break
    from rlrec.evaluation.churn_report import find_churn

    churn_dir = find_churn(root)
    if churn_dir is not None:
        found.files["churn"] = {
            "dir": str(churn_dir),
            "summary": _read_json(churn_dir / "churn.json"),
            "metrics": _read_json(churn_dir / "metrics.json")
            if (churn_dir / "metrics.json").is_file()
            else None,
        }
    if found.run_dir is None and found.sim_dir is None and not found.files:
        raise UserError(
            f"{root}: nothing to report; expected a quickstart output (fidelity.json, "
            "evaluate.json, run/, ...) or a run directory of 'rlrec train' (config.yaml)"
        )
    return found


class TruncatedLogWarning(UserWarning):
    """An event file ends inside a record: its curves stop at its last complete record."""


def truncated_event_files(tensorboard_dir: str | os.PathLike[str]) -> list[Path]:
    """The event files under ``tensorboard_dir`` that do not end on a record boundary.

    TensorBoard's reader stops quietly at a partial record (a process killed while writing,
    a copy cut short), so the curves lose their tail without a word; this walks the TFRecord
    framing (8-byte length, 4-byte CRC, data, 4-byte CRC) to find such files.
    """
    bad = []
    for path in sorted(Path(tensorboard_dir).rglob("events.out.tfevents.*")):
        size, offset = path.stat().st_size, 0
        with path.open("rb") as fh:
            while offset < size:
                head = fh.read(8)
                if len(head) < 8:
                    break
                offset += 8 + 4 + int.from_bytes(head, "little") + 4
                fh.seek(offset)
        if offset != size:
            bad.append(path)
    return bad


def read_scalars(
    tensorboard_dir: str | os.PathLike[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar series in the event files under ``tensorboard_dir``.

    A truncated event file (see :func:`truncated_event_files`) gives a
    :class:`TruncatedLogWarning` naming it; its complete records are still read.

    Returns:
        Tag -> (steps (N,), values (N,)) sorted by step; a tag written by several event
        directories (a resumed run) is merged, later writes winning at equal steps.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(tensorboard_dir)
    for path in truncated_event_files(root):
        warnings.warn(
            f"{path}: truncated TensorBoard event file; its curves stop at its last complete "
            "record",
            TruncatedLogWarning,
            stacklevel=2,
        )
    series: dict[str, dict[int, float]] = {}
    folders = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            points = series.setdefault(tag, {})
            for event in acc.Scalars(tag):
                points[int(event.step)] = float(event.value)
    return {
        tag: (np.array(sorted(p)), np.array([p[s] for s in sorted(p)])) for tag, p in series.items()
    }


# --------------------------------------------------------------------------- cell text


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def _ci(pair: Any, digits: int = 3) -> str:
    if not pair or pair[0] is None:
        return "–"
    return f"[{_fmt(float(pair[0]), digits)}, {_fmt(float(pair[1]), digits)}]"


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:+.{digits}f}%"


# --------------------------------------------------------------------------- sections


def _learning_section(inputs: ReportInputs) -> Section:
    from rlrec.evaluation import plots

    section = Section("learning_curves", TITLES["learning_curves"])
    if inputs.run_dir is None:
        section.missing = "no PPO run directory (run/config.yaml): train one with 'rlrec train'"
        return section
    tb = inputs.run_dir / "tensorboard"
    scalars = read_scalars(tb) if tb.is_dir() else {}
    curves = {tag: scalars[tag] for tag in CURVE_TAGS if tag in scalars}
    if not curves:
        section.missing = f"no TensorBoard scalars under {tb}"
        return section
    section.image = plots.png_bytes(plots.learning_curves(dict(list(curves.items())[:6])))
    rows = [
        [tag, _fmt(int(steps[-1])), _fmt(float(values[0])), _fmt(float(values[-1]))]
        for tag, (steps, values) in curves.items()
    ]
    section.table = Table(["scalar", "last step", "first", "last"], rows)
    section.caption = (
        "PPO's training curves from the run's TensorBoard logs (grey: per rollout; blue: moving "
        "average). Look for the episode return rising and levelling off; a value loss that "
        "keeps growing or a KL that spikes means the updates are too large."
    )
    return section


def _migration_section(inputs: ReportInputs) -> Section:
    from rlrec.evaluation import plots
    from rlrec.models.sim_model import load_sim_model

    section = Section("migration", TITLES["migration"])
    if inputs.sim_dir is None:
        section.missing = "no SimModel (sim/): fit one with 'rlrec fit'"
        return section
    model = load_sim_model(inputs.sim_dir)
    matrix, labels, share = migration_matrix(model)
    section.image = plots.png_bytes(
        plots.heatmap(matrix, labels, "P(next category | category)", "probability")
    )
    rows = []
    for i, label in enumerate(labels[:8]):
        others = matrix[i].copy()
        others[i] = -1.0
        j = int(np.argmax(others))
        rows.append(
            [
                label,
                _fmt(float(share[i])),
                _fmt(float(matrix[i, i])),
                f"{labels[j]} ({_fmt(float(matrix[i, j]))})",
            ]
        )
    section.table = Table(["category", "time share", "stay", "likeliest switch"], rows)
    section.caption = (
        f"The fitted user model's interest migration among its {len(labels)} most visited "
        "categories (rows renormalised). A strong diagonal means users stay in a category; "
        "off-diagonal blocks are groups of related categories that users move between, "
        "which a long-term recommender can exploit."
    )
    return section


def _fidelity_section(inputs: ReportInputs) -> Section:
    from rlrec.evaluation import plots

    section = Section("fidelity", TITLES["fidelity"])
    report = inputs.files.get("fidelity")
    if report is None:
        section.missing = "no fidelity.json: run 'rlrec sim validate --json' or the quickstart"
        return section
    if "distributions" in report:
        section.image = plots.png_bytes(plots.fidelity(report["distributions"]))
    else:
        section.missing = "fidelity.json has no 'distributions' (written by the quickstart)"
    mean = report.get("mean_session_length", {})
    rows = [
        ["JS, next-category transitions", _fmt(report.get("js_category_transition"), 4)],
        ["  floor of a perfect model", _fmt(report.get("js_category_transition_floor"), 4)],
        ["KS, session length", _fmt(report.get("ks_session_length"), 4)],
        ["KS, streak length", _fmt(report.get("ks_streak_length"), 4)],
        ["largest step-outcome share gap", _fmt(report.get("event_mix_max_abs_diff"), 4)],
        [
            "mean session length (sim / test)",
            f"{_fmt(mean.get('simulated'), 2)} / {_fmt(mean.get('test'), 2)}",
        ],
    ]
    truth = report.get("ground_truth") or {}
    for key in ("transition_tv", "stay_by_streak_mae", "leave_hazard_mae"):
        if key in truth:
            rows.append([f"vs ground truth: {key}", _fmt(truth[key], 4)])
    section.table = Table(["metric", "value"], rows)
    section.caption = (
        "Organic sessions simulated from the fitted user model against the held-out test split. "
        "Bars should overlap and points should sit on the dashed diagonal; KS and JS near 0 "
        "(JS near its floor, what a perfect model scores with this much test data) mean the "
        "simulator reproduces how long sessions last and where interest moves."
    )
    return section


def _policy_section(inputs: ReportInputs) -> Section:
    from rlrec.evaluation import plots

    section = Section("policies", TITLES["policies"])
    payload = inputs.files.get("evaluate")
    if payload is None:
        section.missing = "no evaluate.json (or run/eval.json): run 'rlrec evaluate RUN_DIR'"
        return section
    policies = payload["policies"]
    bars = [
        (name, float(r["return_mean"]), float(r["return_ci95"][0]), float(r["return_ci95"][1]))
        for name, r in policies.items()
    ]
    section.image = plots.png_bytes(
        plots.interval_bars(
            bars, "Mean session return (95% interval)", "return per simulated user", "ppo"
        )
    )
    lifecycle = any("sessions_per_user" in r for r in policies.values())
    rows = []
    for r in policies.values():
        row = [
            f"{_fmt(r['return_mean'])} {_ci(r['return_ci95'], 2)}",
            _fmt(r["session_length_mean"], 2),
            _fmt(r["engage_rate"]),
            _fmt(r["buys_mean"]),
            _fmt(r["coverage"], 4),
        ]
        if lifecycle:
            row += [
                f"{_fmt(r['sessions_per_user'])} {_ci(r['sessions_per_user_ci95'], 2)}",
                *(
                    "-" if r.get(key) is None else f"{_fmt(r[key])} {_ci(r[key + '_ci95'], 3)}"
                    for key in ("retention_d7", "retention_d30")
                ),
            ]
        rows.append(row)
    names = list(policies)
    header = ["policy", "return [95% CI]", "length", "engage", "buys", "coverage"]
    if lifecycle:
        header += ["sessions", "day-7 retention", "day-30 retention"]
    section.table = Table(
        header,
        [[name, *row] for name, row in zip(names, rows, strict=True)],
        names.index("ppo") if "ppo" in names else None,
    )
    section.caption = (
        f"Every policy on the same {payload['episodes']:,} seeded simulated users (same logged "
        "starting prefixes). PPO must not fall below the best non-oracle baseline (greedy "
        "supervised, popular, category-Markov); planner is PPO's own starting plan, "
        "oracle_myopic sees the hidden interest (a one-step upper reference), random a floor."
    )
    return section


def _truth_section(inputs: ReportInputs) -> Section | None:
    """Fitted vs truth; None (no section) without ``eval_truth.json``: most runs have no truth."""
    from rlrec.evaluation import plots
    from rlrec.evaluation.compare import fitted_vs_truth

    truth = inputs.files.get("eval_truth")
    if truth is None:
        return None
    section = Section("truth", TITLES["truth"])
    fitted = inputs.files.get("eval_fitted")
    if fitted is None:
        section.missing = "eval_truth.json has no eval.json beside it: run 'rlrec evaluate RUN_DIR'"
        return section
    gap = fitted_vs_truth(fitted["policies"], truth["policies"])
    rows = gap["policies"]
    if not rows:
        section.missing = "eval.json and eval_truth.json share no policy"
        return section
    agent = gap["agent"]
    section.image = plots.png_bytes(
        plots.fitted_vs_truth([(n, r["fitted"], r["truth"]) for n, r in rows.items()], agent)
    )
    names = list(rows)
    section.table = Table(
        ["policy", "fitted simulator [95% CI]", "truth world [95% CI]", "gap (truth / fitted - 1)"],
        [
            [
                name,
                f"{_fmt(r['fitted'])} {_ci(r['fitted_ci95'], 2)}",
                f"{_fmt(r['truth'])} {_ci(r['truth_ci95'], 2)}",
                _pct(r["gap"]),
            ]
            for name, r in rows.items()
        ],
        names.index(agent) if agent in names else None,
    )
    best = gap["best_baseline"]
    section.caption = (
        "Each policy's mean return in the simulator fitted from the log and in the truth world "
        "that generated the log (the synthetic generator's own parameters), on the same seeded "
        "users. The gap is the sim-to-real error: a policy that exploits the fitted model's "
        "mistakes loses more in the truth world than the baselines do. "
        + (
            f"In the truth world the best non-oracle baseline is {best}."
            if best is not None
            else "The truth world has no non-oracle baseline."
        )
    )
    return section


def _sensitivity_section(inputs: ReportInputs) -> Section | None:
    """The sweep of ``rlrec sensitivity``; None (no section) without ``sensitivity.json``."""
    from rlrec.evaluation import plots

    payload = inputs.files.get("sensitivity")
    if payload is None:
        return None
    section = Section("sensitivity", TITLES["sensitivity"])
    worlds = payload["worlds"]
    swept = list(payload["swept"])
    policy = str(payload.get("policy", "ppo"))
    ratios = [float(w["ratio"]) for w in worlds]
    section.image = plots.png_bytes(
        plots.sensitivity(
            {name: [w["parameters"][name] for w in worlds] for name in swept},
            ratios,
            [str(w.get("design", "")) for w in worlds],
            policy,
            [w.get("ratio_ci95") for w in worlds],
        )
    )
    s = payload["summary"]
    rows = [
        ["worlds", _fmt(int(s["n_worlds"]))],
        ["mean ratio", _fmt(s["mean_ratio"])],
        ["worst ratio", f"{_fmt(s['worst_ratio'])} ({s['worst_world']})"],
        ["share of worlds with ratio >= 1", _fmt(s["share_ratio_ge_1"], 2)],
    ]
    if s.get("share_ci_below_1") is not None:
        rows.append(
            [
                "share of worlds a baseline wins beyond noise (95% CI < 1)",
                _fmt(s["share_ci_below_1"], 2),
            ]
        )
    prior = payload.get("prior", {})
    for name in swept:
        r = prior.get(name, {})
        rows.append(
            [
                f"Spearman with {name} [{_fmt(r.get('low'), 2)}, {_fmt(r.get('high'), 2)}]",
                _fmt(s["spearman"].get(name), 2),
            ]
        )
    section.table = Table(["summary", "value"], rows)
    message = str(payload.get("message") or "")
    section.caption = (
        (message + ". " if message else "")
        + f"{policy}'s mean return over the best non-oracle baseline's "
        f"({', '.join(payload.get('baselines', []))}) in {len(worlds)} worlds that differ only in "
        "what organic logs cannot identify: how users respond to recommendations. Each panel "
        "puts the ratio against one swept parameter (diamond: the fitted model's values; "
        "squares: one parameter at an end of its prior; dots: Latin-hypercube points over all "
        f"of them; whiskers: 95% paired-bootstrap intervals), {payload['episodes']:,} seeded "
        "users per world. Points below the dashed "
        "line are worlds where a baseline does better; a steep trend names the assumption the "
        "policy's gain rests on."
    )
    return section


def _ope_section(inputs: ReportInputs) -> Section:
    from rlrec.evaluation import plots

    section = Section("ope", TITLES["ope"])
    payload = inputs.files.get("ope")
    if payload is None:
        section.missing = "no ope_sessions.json: run 'rlrec ope sessions --simulate RUN_DIR --json'"
        return section
    targets = payload.get("targets", {})
    if not targets:
        section.missing = "ope_sessions.json has no targets"
        return section
    default = payload.get("default_estimator", "")
    section.image = plots.png_bytes(plots.ope_estimates(targets, default))
    rows = []
    verdicts = []
    for name, t in targets.items():
        coverage = t.get("measured_coverage") or {}
        for est, e in t["estimates"].items():
            rel = (t.get("relative_error") or {}).get(est)
            covers = (t.get("truth_in_ci95") or {}).get(est)
            measured = (coverage.get(est) or {}).get("coverage")
            rows.append(
                [
                    name,
                    est + (" (default)" if est == default else ""),
                    _fmt(e["value"]),
                    _ci(e["ci95"]),
                    _fmt(t.get("kl_per_step")),
                    _ope_method(e.get("interval_method", "")),
                    _fmt(measured),
                    _fmt(t.get("true_value")),
                    _fmt(rel),
                    _fmt(covers),
                ]
            )
        if "verdict" in t:
            verdicts.append(f"{name}: {t['verdict']}.")
    section.table = Table(
        [
            "target",
            "estimator",
            "estimate",
            "95% CI",
            "KL/step",
            "interval",
            "measured coverage",
            "true",
            "rel. error",
            "covers",
        ],
        rows,
    )
    section.caption = (
        f"{payload.get('sessions', 0):,} sessions logged in the simulator by "
        f"{payload.get('behaviour', '?')}; each target's value estimated from "
        "them alone, beside its true on-policy value (red line and band). Good estimators sit "
        "on the red line with intervals that cover it; IS-type estimators widen as the target "
        "moves away from the behaviour (KL per step, nats), DM can be biased. Intervals of "
        "the estimators that read the Q-model refit it on every resample ('+ bias': DM's and "
        "MAGIC's also reach towards WDR by the model bias the data shows); 'measured "
        "coverage' is the share of benchmark seeds whose interval held the truth "
        "(docs/ope.md). " + " ".join(verdicts)
    )
    return section


def _ope_method(method: str) -> str:
    """Short name of an OPE interval method for the table."""
    if "refitted" in method:
        return "Q-refit bootstrap" + (" + bias" if "detectable bias" in method else "")
    return "session bootstrap" if method else "-"


def _encoder_section(inputs: ReportInputs) -> Section:
    from rlrec.evaluation import plots
    from rlrec.evaluation.ranking import CATEGORY_METRICS, ITEM_METRICS

    section = Section("encoder", TITLES["encoder"])
    report = inputs.files.get("encoder_eval")
    if report is None:
        section.missing = "no encoder_eval.json: run 'rlrec encoder eval ENC_DIR --json'"
        return section
    models: dict[str, dict[str, float]] = {}
    for name in ("encoder", "encoder_knn"):
        if name in report:
            models[name] = report[name]
    models.update(report.get("baselines", {}))
    metrics = [*ITEM_METRICS, CATEGORY_METRICS[0]]
    series = {name: [m.get(k) for k in metrics] for name, m in models.items()}
    title = "Next-step prediction on the test split (full ranking)"
    history = _encoder_history(inputs.root)
    section.image = plots.png_bytes(
        plots.encoder_panels(metrics, series, title, history)
        if history
        else plots.grouped_bars(metrics, series, title, "score")
    )
    columns = [*ITEM_METRICS, *CATEGORY_METRICS]
    rows = [[name] + [_fmt(m.get(c), 4) for c in columns] for name, m in models.items()]
    section.table = Table(["model", *columns], rows, 0 if "encoder" in models else None)
    section.caption = (
        "The pretrained transformer encoder against popularity, item-Markov, category-Markov, "
        "last-category, item-kNN, session-kNN (SKNN, V-SKNN) and re-visit baselines: "
        + str(report.get("protocol", {}).get("description", ""))
        + " The encoder should lead on NDCG@10; its states are what PPO starts from."
        + (
            " encoder_knn: the encoder's next-item distribution mixed with the session-kNN's "
            f"({mix.get('knn')}) vote shares at weight {mix.get('weight')}, chosen on valid."
            if isinstance(mix := report.get("encoder_knn_params"), dict)
            else ""
        )
        + (
            " Below: its training curves per epoch (encoder/encoder.json; TensorBoard under "
            "encoder/tensorboard), pretraining then fine-tuning; the kept epoch is the best "
            "valid NDCG@10."
            if history
            else ""
        )
    )
    from rlrec.evaluation.paired import paired_lines

    for name, paired in (report.get("paired") or {}).items():  # one per model
        if isinstance(paired, dict) and paired.get("best"):
            lines = paired_lines(paired, name)
            cells = "; ".join(" ".join(line.split()) for line in lines[1:])  # no column padding
            section.caption += f" {lines[0]} {cells}."
    return section


def _churn_section(inputs: ReportInputs) -> Section | None:
    """The output of ``rlrec churn`` (here or in ``churn/``); None without one."""
    from rlrec.evaluation import plots
    from rlrec.evaluation.churn_report import churn_figure, section_parts

    payload = inputs.files.get("churn")
    if payload is None:
        return None
    summary, metrics = payload["summary"], payload["metrics"]
    section = Section("churn", TITLES["churn"])
    section.image = plots.png_bytes(churn_figure(summary, metrics))
    section.caption, header, rows = section_parts(Path(payload["dir"]), summary, metrics)
    section.table = Table(header, rows)
    return section


def _encoder_history(root: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``root/encoder/encoder.json``, or [] (absent or malformed)."""
    path = root / "encoder" / "encoder.json"
    if not path.is_file():
        return []
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []  # the encoder's own loader names the problem where it matters
    info = payload.get("info") if isinstance(payload, dict) else None
    history = info.get("history") if isinstance(info, dict) else None
    if not isinstance(history, list):
        return []
    return [r for r in history if isinstance(r, dict)]


SECTIONS: tuple[tuple[str, Callable[[ReportInputs], Section | None]], ...] = (
    ("policies", _policy_section),
    ("truth", _truth_section),
    ("sensitivity", _sensitivity_section),
    ("learning_curves", _learning_section),
    ("encoder", _encoder_section),
    ("fidelity", _fidelity_section),
    ("migration", _migration_section),
    ("ope", _ope_section),
    ("churn", _churn_section),
)
"""The page's sections in order: key and builder (None: an optional section without input)."""


# --------------------------------------------------------------------------- headline


def headline_numbers(inputs: ReportInputs) -> dict[str, Any]:
    """The key numbers at the top of the page (None where the input is missing).

    Returns:
        ``fitted_agent_ratio`` (PPO's return over the best non-oracle baseline's in the
        fitted simulator), ``fitted_best_baseline``, ``truth_agent``, ``truth_agent_ratio``
        (the agent's return over the best non-oracle baseline's in the truth world),
        ``truth_best_baseline``, ``encoder_ndcg10``, ``best_baseline_ndcg10``,
        ``best_baseline``, ``ks_session_length``, ``js_category_transition``,
        ``best_ope_estimator``, ``best_ope_relative_error`` (|relative error| of the most
        accurate estimator for the ``ppo`` target, else the first; picked with hindsight),
        ``default_ope_estimator``, ``default_ope_relative_error`` (what a user without the
        truth would report) and ``ope_target``.
    """
    from rlrec.evaluation.compare import best_baseline, fitted_vs_truth, ratio

    out: dict[str, Any] = dict.fromkeys(
        (
            "fitted_agent_ratio",
            "fitted_best_baseline",
            "truth_agent",
            "truth_agent_ratio",
            "truth_best_baseline",
            "encoder_ndcg10",
            "best_baseline_ndcg10",
            "best_baseline",
            "ks_session_length",
            "js_category_transition",
            "best_ope_estimator",
            "best_ope_relative_error",
            "default_ope_estimator",
            "default_ope_relative_error",
            "ope_target",
        )
    )
    policies = (inputs.files.get("evaluate") or {}).get("policies", {})
    means = {name: float(r["return_mean"]) for name, r in policies.items()}
    found = best_baseline(means)
    if "ppo" in means and found is not None:
        out["fitted_best_baseline"] = found[0]
        out["fitted_agent_ratio"] = ratio(means["ppo"], found[1])
    truth = inputs.files.get("eval_truth")
    if truth is not None:
        gap = fitted_vs_truth({}, truth.get("policies", {}))
        out["truth_agent"] = gap["agent"]
        out["truth_agent_ratio"] = gap["agent_ratio"]
        out["truth_best_baseline"] = gap["best_baseline"]
    enc = inputs.files.get("encoder_eval") or {}
    if "encoder" in enc:
        out["encoder_ndcg10"] = enc["encoder"].get("ndcg@10")
    scored = {n: m["ndcg@10"] for n, m in enc.get("baselines", {}).items() if "ndcg@10" in m}
    if scored:
        best = max(scored, key=lambda n: scored[n])
        out["best_baseline"], out["best_baseline_ndcg10"] = best, scored[best]
    fid = inputs.files.get("fidelity") or {}
    out["ks_session_length"] = fid.get("ks_session_length")
    out["js_category_transition"] = fid.get("js_category_transition")
    ope = inputs.files.get("ope") or {}
    targets = ope.get("targets", {})
    if targets:
        name = "ppo" if "ppo" in targets else next(iter(targets))
        errors = {
            k: abs(v)
            for k, v in (targets[name].get("relative_error") or {}).items()
            if v is not None and math.isfinite(v)
        }
        if errors:
            best = min(errors, key=lambda k: errors[k])
            out["ope_target"] = name
            out["best_ope_estimator"], out["best_ope_relative_error"] = best, errors[best]
            default = ope.get("default_estimator")
            if default in errors:
                out["default_ope_estimator"] = default
                out["default_ope_relative_error"] = errors[default]
    return out


@dataclass(frozen=True)
class Card:
    """One headline card.

    Attributes:
        label: What the number is.
        value: The number, formatted.
        note: A line of context.
        good: Green (True), amber (False) or neutral (None) top border.
    """

    label: str
    value: str
    note: str
    good: bool | None = None


def headline_cards(h: Mapping[str, Any]) -> list[Card]:
    """The cards at the top of the page, from :func:`headline_numbers`."""
    fitted = h["fitted_agent_ratio"]
    enc, base = h["encoder_ndcg10"], h["best_baseline_ndcg10"]
    ks, js = h["ks_session_length"], h["js_category_transition"]
    err = h["best_ope_relative_error"]
    cards = [
        Card(
            "PPO vs best baseline",
            "–" if fitted is None else f"{fitted:.2f}×",
            f"return ratio to {h['fitted_best_baseline'] or 'no baseline'} (non-oracle) in "
            "the fitted simulator",
            None if fitted is None else fitted >= 1.0,
        )
    ]
    truth = h.get("truth_agent_ratio")
    if h.get("truth_agent") is not None:
        cards.append(
            Card(
                f"{h['truth_agent']} vs best baseline, truth world",
                "–" if truth is None else f"{truth:.2f}×",
                f"return ratio to {h['truth_best_baseline'] or 'no baseline'} in the world "
                "that generated the log",
                None if truth is None else truth >= 1.0,
            )
        )
    ope_note = "no OPE check"
    if err is not None:
        ope_note = f"{h['best_ope_estimator']} error on {h['ope_target']}"
        if h["default_ope_relative_error"] is not None:
            ope_note += (
                f"; default {h['default_ope_estimator']} "
                f"{100 * h['default_ope_relative_error']:.1f}%"
            )
    cards += [
        Card(
            "Encoder NDCG@10",
            _fmt(enc, 4),
            "no encoder evaluation"
            if enc is None
            else f"best baseline {h['best_baseline']} {_fmt(base, 4)}",
            None if enc is None or base is None else enc >= base,
        ),
        Card(
            "Simulator fidelity",
            f"KS {_fmt(ks, 3)}",
            f"session length; JS transitions {_fmt(js, 4)}",
            None if ks is None else ks < 0.1,
        ),
        Card(
            "Best OPE estimator",
            "–" if err is None else f"{100 * err:.1f}%",
            ope_note,
            None if err is None else err < 0.1,
        ),
    ]
    return cards


# --------------------------------------------------------------------------- page


def render_html(
    title: str,
    subtitle: str,
    headline: Mapping[str, Any],
    sections: list[Section],
    *,
    cards: list[Card] | None = None,
    links: Sequence[tuple[str, str]] = (),
    writer: str = "rlrec report",
) -> str:
    """The self-contained page: inline CSS, base64 images, no external reference.

    Rendered from ``templates/report.html.j2`` with autoescape on: every string from the
    inputs (policy names, captions, table cells) is escaped by Jinja2, none by hand.

    Args:
        title: Page title.
        subtitle: Line under the title.
        headline: :func:`headline_numbers` (ignored when ``cards`` is given).
        sections: The sections, in order.
        cards: Headline cards of another page (``rlrec analyze``), instead of the run's.
        links: ``(label, relative href)`` pairs added to the navigation (e.g. the analysis
            page beside a run's report).
        writer: The command named in the footer.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rlrec.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    views = [
        {
            "key": s.key,
            "title": s.title,
            "caption": s.caption,
            "missing": s.missing,
            "table": s.table,
            "image": None if s.image is None else base64.b64encode(s.image).decode("ascii"),
        }
        for s in sections
    ]
    return env.get_template(TEMPLATE).render(
        title=title,
        subtitle=subtitle,
        cards=headline_cards(headline) if cards is None else cards,
        sections=views,
        plots_dir=PLOTS_DIR,
        links=list(links),
        writer=writer,
    )


MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)
"""What reading a JSON input of the wrong shape raises (a string where a number belongs, a
list where an object does): the section then says so instead of the page crashing."""

SECTION_INPUT = {
    "policies": "evaluate.json (or run/eval.json)",
    "learning_curves": "run/tensorboard",
    "encoder": "encoder_eval.json",
    "fidelity": "fidelity.json",
    "migration": "sim/",
    "ope": "ope_sessions.json",
    "truth": "eval_truth.json and the eval.json beside it",
    "sensitivity": "sensitivity.json",
    "churn": "churn.json and metrics.json",
}
"""Section key -> the input it reads, for the message of a malformed one."""

_TEXT_HEADLINES = (
    "best_baseline",
    "best_ope_estimator",
    "default_ope_estimator",
    "ope_target",
    "truth_agent",
    "truth_best_baseline",
    "fitted_best_baseline",
)


def _build(
    key: str, section: Callable[[ReportInputs], Section | None], inputs: ReportInputs
) -> Section | None:
    """One section, or the loader's message where an input exists but does not load.

    An older SimModel schema, say, then empties its section instead of failing the page.
    """
    try:
        return section(inputs)
    except UserError as exc:
        return Section(key, TITLES[key], missing=str(exc).rstrip("."))
    except MALFORMED as exc:
        detail = quote_value(str(exc), 60)
        return Section(
            key,
            TITLES[key],
            missing=f"{SECTION_INPUT[key]} is malformed ({type(exc).__name__}: {detail}); "
            "rerun the stage that writes it",
        )


def _headline(inputs: ReportInputs) -> dict[str, Any]:
    """:func:`headline_numbers`, leaving out the numbers of a malformed input."""
    try:
        numbers = headline_numbers(inputs)
    except MALFORMED:
        # Each headline number comes from one file: take those of the files that read.
        numbers = headline_numbers(replace(inputs, files={}))
        for key, payload in inputs.files.items():
            try:
                part = headline_numbers(replace(inputs, files={key: payload}))
            except MALFORMED:
                continue
            numbers.update({k: v for k, v in part.items() if v is not None})
    for key, value in numbers.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _TEXT_HEADLINES:
            numbers[key] = None if value is None else str(value)
        elif value is not None and not (number and math.isfinite(value)):
            numbers[key] = None  # a string where a number belongs: shown as missing
    return numbers


def write_report(
    directory: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> ReportResult:
    """Write ``report.html`` and ``plots/*.png`` for ``directory``'s artifacts.

    Args:
        directory: A quickstart output directory, any subset of it, or a run directory of
            ``rlrec train``.
        out: Where to write (default: ``directory``).

    Returns:
        The page, the plots written, the headline numbers and which sections have content.

    Raises:
        UserError: If ``directory`` holds none of the inputs.
    """
    inputs = find_inputs(directory)
    target = Path(out) if out is not None else inputs.root
    target.mkdir(parents=True, exist_ok=True)
    built = (_build(key, section, inputs) for key, section in SECTIONS)
    sections = [s for s in built if s is not None]
    written = []
    for s in sections:
        if s.image is not None:
            path = target / PLOTS_DIR / f"{s.key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_bytes(s.image)
            os.replace(tmp, path)
            written.append(path)
    headline = _headline(inputs)
    what = "quickstart output" if (inputs.root / "run").is_dir() else "run directory"
    # An ``rlrec analyze`` output saved as ANALYSIS_DIR inside the report's folder gets a link.
    analysis = inputs.root / ANALYSIS_DIR / REPORT_FILE
    links = [("Behaviour analytics", f"{ANALYSIS_DIR}/{REPORT_FILE}")] if analysis.is_file() else []
    page = render_html(
        "rlrec report", f"{what} {inputs.root.resolve()}", headline, sections, links=links
    )
    html_path = target / REPORT_FILE
    tmp = html_path.with_name(f".{html_path.name}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, html_path)
    return ReportResult(
        html=html_path,
        plots=written,
        headline=headline,
        sections={s.key: s.image is not None or s.table is not None for s in sections},
    )
