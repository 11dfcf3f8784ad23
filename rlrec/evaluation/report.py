"""``rlrec report``: one self-contained HTML page (and PNG plots) from a run's artifacts.

Reads the quickstart layout (:mod:`rlrec.workflows.quickstart`; the file names are repeated here
because evaluation never imports agents) or a plain ``rlrec train`` run directory:

==================  ===========================================  ==========================
section             input                                        plot
==================  ===========================================  ==========================
learning curves     ``run/tensorboard`` (or ``tensorboard/``)    ``learning_curves.png``
migration matrix    ``sim/`` (or the run's ``sim_dir``)          ``migration.png``
fidelity            ``fidelity.json`` (``distributions``)        ``fidelity.png``
policy comparison   ``evaluate.json`` (or ``run/eval.json``)     ``policies.png``
OPE                 ``ope_sessions.json``                        ``ope.png``
encoder ranking     ``encoder_eval.json``                        ``encoder.png``
==================  ===========================================  ==========================

A section whose input is missing says so on the page. Images are embedded as base64 PNG and
the CSS is inline, so ``report.html`` opens anywhere on its own; the same PNGs are written to
``plots/``. A headline at the top gives the key numbers: PPO against greedy (return ratio),
the encoder's NDCG@10 against its best baseline, the simulator's fidelity (KS, JS) and the
most accurate OPE estimator's error.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlrec.errors import UserError, quote_value

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
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
TOP_CATEGORIES = 12
TITLES = {
    "learning_curves": "Learning curves",
    "migration": "Category migration matrix",
    "fidelity": "Simulator fidelity",
    "policies": "Policy comparison in the simulator",
    "ope": "Off-policy evaluation against the simulator's truth",
    "encoder": "Encoder ranking metrics",
}
"""Section key (plot file stem) -> heading."""


@dataclass
class Section:
    """One section of the page: a plot, a compact table and a caption, or why it is missing.

    Attributes:
        key: Plot file stem (``plots/<key>.png``) and HTML anchor.
        title: Section heading.
        caption: What the plot shows and what to look for.
        image: PNG bytes, or None when the section is missing.
        table: An HTML table (escaped), or "".
        missing: Why the section is empty (names the input it needs), or None.
    """

    key: str
    title: str
    caption: str = ""
    image: bytes | None = None
    table: str = ""
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
            ``ope`` and ``summary`` (absent keys: no such file).
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
    for key, candidates in names.items():
        for name in candidates:
            if (root / name).is_file():
                found.files[key] = _read_json(root / name)
                break
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


# --------------------------------------------------------------------------- data


def fidelity_distributions(
    model: Any, dataset: Any, n_sessions: int = 20_000, seed: int = 0, top: int = TOP_CATEGORIES
) -> dict[str, Any]:
    """The distributions behind the fidelity plot: simulated organic sessions against test.

    Args:
        model: A :class:`rlrec.models.sim_model.SimModel` fitted on ``dataset``.
        dataset: The :class:`rlrec.data.dataset.PreparedDataset`.
        n_sessions: Organic sessions to simulate.
        seed: Seed of the simulation.
        top: Categories in the transition matrices (the most frequent in the test split).

    Returns:
        ``session_length``: ``lengths`` (1..L, the last pooling longer sessions),
        ``simulated`` and ``test`` shares; ``transitions``: ``labels`` (raw category ids),
        ``simulated`` and ``test`` (top, top) row-normalised next-category probabilities
        among consecutive steps within the top categories.
    """
    from rlrec.models.transition import simulate_organic, step_log

    fold = np.asarray(model.category_of_dataset_category)
    test = step_log(dataset, "test", fold)
    sim = simulate_organic(model, n_sessions, seed)
    test_len, sim_len = np.diff(test.offsets), np.diff(sim.offsets)
    cap = int(max(5, min(30, np.percentile(test_len, 95) if len(test_len) else 5)))
    lengths = np.arange(1, cap + 1)

    def shares(x: np.ndarray) -> list[float]:
        counts = np.bincount(np.minimum(x, cap), minlength=cap + 1)[1:].astype(float)
        return (counts / max(counts.sum(), 1.0)).tolist()

    k = model.n_categories
    freq = np.bincount(test.category, minlength=k)
    keep = np.argsort(-freq, kind="stable")[: min(top, k)]

    def transitions(offsets: np.ndarray, category: np.ndarray) -> list[list[float]]:
        same = np.ones(len(category), dtype=bool)
        same[offsets[1:-1] - 1] = False  # the last step of a session has no successor
        if len(category):
            same[-1] = False
        src = category[:-1][same[:-1]] if len(category) > 1 else np.zeros(0, np.int64)
        dst = category[1:][same[:-1]] if len(category) > 1 else np.zeros(0, np.int64)
        counts = np.zeros((k, k))
        np.add.at(counts, (src, dst), 1.0)
        sub = counts[np.ix_(keep, keep)]
        return (sub / np.maximum(sub.sum(axis=1, keepdims=True), 1.0)).tolist()

    return {
        "session_length": {
            "lengths": lengths.tolist(),
            "simulated": shares(sim_len),
            "test": shares(test_len),
        },
        "transitions": {
            "labels": [str(model.category_ids[c]) for c in keep],
            "simulated": transitions(sim.offsets, sim.category),
            "test": transitions(test.offsets, test.category),
        },
    }


def migration_matrix(
    model: Any, top: int = TOP_CATEGORIES
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The fitted migration matrix ``A = stay_bar I + (1 - stay_bar) S`` over the top categories.

    ``stay_bar`` averages the stay curve over the streak occupancy of the model's own
    sessions (as in the fidelity's ground-truth errors); the top categories are those with
    the largest stationary share of ``A``; rows are renormalised within them.

    Returns:
        (top, top) matrix, the categories' raw ids, and (top,) stationary shares.
    """
    from rlrec.evaluation.fidelity import streak_occupancy

    w = streak_occupancy(model, 64)
    stay = model.stay_probability(np.arange(1, 65))
    stay_bar = float(np.dot(w, stay) / max(w.sum(), 1e-12))
    k = model.n_categories
    full = stay_bar * np.eye(k) + (1.0 - stay_bar) * np.asarray(model.switch_matrix)
    pi = np.asarray(model.initial_category, dtype=np.float64)
    for _ in range(500):  # power iteration: where an average long session spends its time
        pi = pi @ full
    keep = np.argsort(-pi, kind="stable")[: min(top, k)]
    sub = full[np.ix_(keep, keep)]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    return sub, [str(model.category_ids[c]) for c in keep], pi[keep]


# --------------------------------------------------------------------------- html pieces


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
    return html.escape(str(value))


def _ci(pair: Any, digits: int = 3) -> str:
    if not pair or pair[0] is None:
        return "–"
    return f"[{_fmt(float(pair[0]), digits)}, {_fmt(float(pair[1]), digits)}]"


def _table(header: list[str], rows: list[list[str]], highlight: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="hl"' if i == highlight else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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
    rows = []
    for tag, (steps, values) in curves.items():
        rows.append(
            [
                html.escape(tag),
                _fmt(int(steps[-1])),
                _fmt(float(values[0])),
                _fmt(float(values[-1])),
            ]
        )
    section.table = _table(["scalar", "last step", "first", "last"], rows)
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
                html.escape(label),
                _fmt(float(share[i])),
                _fmt(float(matrix[i, i])),
                f"{html.escape(labels[j])} ({_fmt(float(matrix[i, j]))})",
            ]
        )
    section.table = _table(["category", "time share", "stay", "likeliest switch"], rows)
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
    section.table = _table(["metric", "value"], rows)
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
    rows = [
        [
            html.escape(name),
            f"{_fmt(r['return_mean'])} {_ci(r['return_ci95'], 2)}",
            _fmt(r["session_length_mean"], 2),
            _fmt(r["engage_rate"]),
            _fmt(r["buys_mean"]),
            _fmt(r["coverage"], 4),
        ]
        for name, r in policies.items()
    ]
    names = list(policies)
    section.table = _table(
        ["policy", "return [95% CI]", "length", "engage", "buys", "coverage"],
        rows,
        names.index("ppo") if "ppo" in names else None,
    )
    section.caption = (
        f"Every policy on the same {payload['episodes']:,} seeded simulated users (same logged "
        "starting prefixes). PPO should beat greedy supervised (the encoder's next-item guess) "
        "with non-overlapping intervals; oracle_myopic sees the hidden interest and is a "
        "one-step upper reference, random a floor."
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
    for name, t in targets.items():
        for est, e in t["estimates"].items():
            rel = (t.get("relative_error") or {}).get(est)
            covers = (t.get("truth_in_ci95") or {}).get(est)
            rows.append(
                [
                    html.escape(name),
                    html.escape(est) + (" (default)" if est == default else ""),
                    _fmt(e["value"]),
                    _ci(e["ci95"]),
                    _fmt(t.get("true_value")),
                    _fmt(rel),
                    _fmt(covers),
                ]
            )
    section.table = _table(
        ["target", "estimator", "estimate", "95% CI", "true", "rel. error", "covers"], rows
    )
    section.caption = (
        f"{payload.get('sessions', 0):,} sessions logged in the simulator by "
        f"{html.escape(str(payload.get('behaviour', '?')))}; each target's value estimated from "
        "them alone, beside its true on-policy value (red line and band). Good estimators sit "
        "on the red line with intervals that cover it; IS-type estimators widen as the target "
        "moves away from the behaviour (KL), DM is narrow but can be biased."
    )
    return section


def _encoder_section(inputs: ReportInputs) -> Section:
    from rlrec.evaluation import plots
    from rlrec.evaluation.ranking import CATEGORY_METRICS, ITEM_METRICS

    section = Section("encoder", TITLES["encoder"])
    report = inputs.files.get("encoder_eval")
    if report is None:
        section.missing = "no encoder_eval.json: run 'rlrec encoder eval ENC_DIR --json'"
        return section
    models: dict[str, dict[str, float]] = {}
    if "encoder" in report:
        models["encoder"] = report["encoder"]
    models.update(report.get("baselines", {}))
    metrics = [*ITEM_METRICS, CATEGORY_METRICS[0]]
    section.image = plots.png_bytes(
        plots.grouped_bars(
            metrics,
            {name: [m.get(k) for k in metrics] for name, m in models.items()},
            "Next-step prediction on the test split (full ranking)",
            "score",
        )
    )
    columns = [*ITEM_METRICS, *CATEGORY_METRICS]
    rows = [
        [html.escape(name)] + [_fmt(m.get(c), 4) for c in columns] for name, m in models.items()
    ]
    section.table = _table(["model", *columns], rows, 0 if "encoder" in models else None)
    section.caption = (
        "The pretrained transformer encoder against popularity, item-Markov, category-Markov "
        "and last-category baselines: "
        + html.escape(report.get("protocol", {}).get("description", ""))
        + " The encoder should lead on NDCG@10; its states are what PPO starts from."
    )
    return section


SECTIONS: tuple[tuple[str, Callable[[ReportInputs], Section]], ...] = (
    ("policies", _policy_section),
    ("learning_curves", _learning_section),
    ("encoder", _encoder_section),
    ("fidelity", _fidelity_section),
    ("migration", _migration_section),
    ("ope", _ope_section),
)
"""The page's sections in order: key and builder."""


# --------------------------------------------------------------------------- headline


def headline_numbers(inputs: ReportInputs) -> dict[str, Any]:
    """The key numbers at the top of the page (None where the input is missing).

    Returns:
        ``ppo_vs_greedy_return_ratio``, ``encoder_ndcg10``, ``best_baseline_ndcg10``,
        ``best_baseline``, ``ks_session_length``, ``js_category_transition``,
        ``best_ope_estimator``, ``best_ope_relative_error`` (|relative error| of the most
        accurate estimator for the ``ppo`` target, else the first; picked with hindsight),
        ``default_ope_estimator``, ``default_ope_relative_error`` (what a user without the
        truth would report) and ``ope_target``.
    """
    out: dict[str, Any] = dict.fromkeys(
        (
            "ppo_vs_greedy_return_ratio",
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
    if "ppo" in policies and "greedy_supervised" in policies:
        greedy = float(policies["greedy_supervised"]["return_mean"])
        if greedy != 0:
            out["ppo_vs_greedy_return_ratio"] = float(policies["ppo"]["return_mean"]) / greedy
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


def _cards(h: Mapping[str, Any]) -> str:
    def card(label: str, value: str, note: str, good: bool | None = None) -> str:
        cls = "" if good is None else (" good" if good else " bad")
        return (
            f'<div class="card{cls}"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{value}</div><div class="note">{note}</div></div>'
        )

    ratio = h["ppo_vs_greedy_return_ratio"]
    enc, base = h["encoder_ndcg10"], h["best_baseline_ndcg10"]
    ks, js = h["ks_session_length"], h["js_category_transition"]
    err = h["best_ope_relative_error"]
    cards = [
        card(
            "PPO vs greedy",
            "–" if ratio is None else f"{ratio:.2f}&times;",
            "mean session return ratio",
            None if ratio is None else ratio > 1.0,
        ),
        card(
            "Encoder NDCG@10",
            _fmt(enc, 4),
            "no encoder evaluation"
            if enc is None
            else f"best baseline {html.escape(str(h['best_baseline']))} {_fmt(base, 4)}",
            None if enc is None or base is None else enc >= base,
        ),
        card(
            "Simulator fidelity",
            f"KS {_fmt(ks, 3)}",
            f"session length; JS transitions {_fmt(js, 4)}",
            None if ks is None else ks < 0.1,
        ),
        card(
            "Best OPE estimator",
            "–" if err is None else f"{100 * err:.1f}%",
            "no OPE check"
            if err is None
            else f"{html.escape(str(h['best_ope_estimator']))} error on "
            f"{html.escape(str(h['ope_target']))}"
            + (
                ""
                if h["default_ope_relative_error"] is None
                else f"; default {html.escape(str(h['default_ope_estimator']))} "
                f"{100 * h['default_ope_relative_error']:.1f}%"
            ),
            None if err is None else err < 0.1,
        ),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


# --------------------------------------------------------------------------- page

_CSS = """
:root { --ink:#0f172a; --muted:#64748b; --line:#e2e8f0; --accent:#2563eb; --bg:#f8fafc; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:var(--bg); }
main { max-width: 1040px; margin: 0 auto; padding: 32px 24px 64px; }
header h1 { margin:0 0 4px; font-size:28px; }
header p { margin:0; color:var(--muted); }
nav { margin:16px 0 8px; display:flex; flex-wrap:wrap; gap:8px; }
nav a { font-size:13px; color:var(--accent); text-decoration:none; padding:3px 10px;
  border:1px solid var(--line); border-radius:999px; background:#fff; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(220px,1fr)); gap:14px;
  margin:20px 0 8px; }
.card { background:#fff; border:1px solid var(--line); border-radius:12px; padding:14px 16px;
  border-top:4px solid var(--line); }
.card.good { border-top-color:#10b981; } .card.bad { border-top-color:#f59e0b; }
.card .label { font-size:12px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
.card .value { font-size:30px; font-weight:700; margin:2px 0; }
.card .note { font-size:13px; color:var(--muted); }
section { background:#fff; border:1px solid var(--line); border-radius:12px; padding:20px 24px;
  margin-top:22px; }
section h2 { margin:0 0 6px; font-size:19px; }
.caption { color:#334155; margin:0 0 12px; font-size:14px; }
figure { margin:0 0 12px; text-align:center; }
figure img { max-width:100%; height:auto; }
.missing { color:#92400e; background:#fffbeb; border:1px solid #fde68a; border-radius:8px;
  padding:10px 14px; font-size:14px; }
table { border-collapse:collapse; width:100%; font-size:13px; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:5px 10px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:600; font-size:12px; text-transform:uppercase; }
tr.hl td { background:#eff6ff; font-weight:600; }
footer { margin-top:28px; color:var(--muted); font-size:12px; }
"""

# Sets data-images on <body> once every image has loaded with a non-zero size: a headless
# browser test reads it from the dumped DOM.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
});
"""


def render_html(
    title: str, subtitle: str, headline: Mapping[str, Any], sections: list[Section]
) -> str:
    """The self-contained page: inline CSS, base64 images, no external reference."""
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        body = [f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>']
        if s.missing:
            body.append(f'<p class="missing">Not available: {html.escape(s.missing)}.</p>')
        if s.caption and (s.image is not None or s.table):
            body.append(f'<p class="caption">{s.caption}</p>')
        if s.image is not None:
            data = base64.b64encode(s.image).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(s.title)}" data-file="{PLOTS_DIR}/{s.key}.png" '
                f'src="data:image/png;base64,{data}"></figure>'
            )
        body.append(s.table)
        body.append("</section>")
        parts.append("".join(body))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script>{_SCRIPT}</script></head><body><main>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"{_cards(headline)}<nav>{nav}</nav>{''.join(parts)}"
        "<footer>Written by <code>rlrec report</code>. Plots are also in plots/.</footer>"
        "</main></body></html>\n"
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
}
"""Section key -> the input it reads, for the message of a malformed one."""

_TEXT_HEADLINES = ("best_baseline", "best_ope_estimator", "default_ope_estimator", "ope_target")


def _build(key: str, section: Callable[[ReportInputs], Section], inputs: ReportInputs) -> Section:
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
    sections = [_build(key, section, inputs) for key, section in SECTIONS]
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
    page = render_html("rlrec report", f"{what} {inputs.root.resolve()}", headline, sections)
    html_path = target / REPORT_FILE
    tmp = html_path.with_name(f".{html_path.name}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, html_path)
    return ReportResult(
        html=html_path,
        plots=written,
        headline=headline,
        sections={s.key: s.image is not None or bool(s.table) for s in sections},
    )
