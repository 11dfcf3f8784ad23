"""``rlrec ope sessions`` and ``rlrec ope replay``: sequential OPE and replay ranking metrics.

Wiring only: policy SPECs (``BASE[,tau=T][,eps=E]``) are parsed and built by
:mod:`rlrec.agents.policy_specs`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rlrec.agents.policy_specs import (
    BASES,
    data_policy,
    parse_policy_spec,
    run_simulated_check,
)
from rlrec.cli.parsing import HelpFormatter
from rlrec.errors import UserError

__all__ = [
    "add_replay_parser",
    "add_sessions_parser",
    "format_real",
    "format_simulated",
    "run_real_sessions",
]


def add_sessions_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec ope sessions``."""
    p = verbs.add_parser(
        "sessions",
        help="sequential OPE of a policy from logged sessions (simulator check or real logs)",
        description=(
            "Estimate a target policy's expected session return from logged sessions with "
            "trajectory-wise and per-decision importance sampling (IS, WIS, PDIS, WPDIS), the "
            "cross-fitted fitted-Q direct method (DM) and step-wise doubly robust estimators "
            "(DR, weighted DR) and their blend MAGIC (the default), each with a 95% interval "
            "(session bootstrap; for the estimators that read the Q-model, a bootstrap that "
            "refits it on every resample), an HCOPE lower bound and a verdict against the "
            "logging policy. With --simulate, "
            "sessions are logged in the simulator under a known behaviour policy and every "
            "estimate is compared with the target's on-policy value (relative error, per-step "
            "KL). With --data, real logged sessions are used and the behaviour policy is "
            "estimated from the logs. SPEC: BASE[,tau=T][,eps=E] with BASE in "
            f"{', '.join(BASES)} or run:RUN_DIR."
        ),
        formatter_class=HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--simulate",
        metavar="ENV_PRESET_OR_RUN_DIR",
        help="log sessions in this simulator (bundled preset, YAML, or a run directory)",
    )
    src.add_argument("--data", metavar="DATA_DIR", help="a PreparedDataset of real sessions")
    p.add_argument(
        "--behaviour",
        metavar="SPEC",
        default="greedy_supervised,tau=1,eps=0.3",
        help="known logging policy (--simulate only); greedy_supervised pretrains the preset's "
        "encoder on first use (cached under --cache-dir)",
    )
    p.add_argument(
        "--target", metavar="SPEC", action="append", required=True, help="target (repeatable)"
    )
    p.add_argument("--sessions", type=int, default=10_000, help="logged sessions (--simulate)")
    p.add_argument(
        "--truth-sessions", type=int, default=10_000, help="on-policy sessions per target"
    )
    p.add_argument("--split", default="test", help="split of real sessions (--data)")
    p.add_argument("--encoder", default=None, help="encoder checkpoint for greedy_supervised")
    p.add_argument("--seed", type=int, default=0, help="seed of the log, folds and bootstrap")
    p.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--n-folds", type=int, default=2, help="FQE cross-fitting folds")
    p.add_argument(
        "--q-ratio-power",
        type=float,
        default=0.0,
        metavar="P",
        help="weigh the Q-model's regressions by each step's target/logging probability ratio "
        "to the power P in [0, 1]; 0: unweighted (docs/ope.md: helps far targets such as "
        "popular, hurts trained agents)",
    )
    p.add_argument("--cache-dir", default="logs/cache", help="artifact cache (--simulate)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_sessions)


def format_simulated(report: dict[str, Any]) -> str:
    """A plain-text table of a ``--simulate`` report."""
    from rlrec.evaluation.ope.bootstrap import bootstrap_note

    lines = [
        f"{report['sessions']} sessions ({report['logged_steps']} steps) logged in "
        f"{report['source']} by {report['behaviour']} (mean return "
        f"{report['behaviour_value']:.3f}); propensities {report['propensities']}",
    ]
    cal = report.get("behaviour_q_calibration")
    if cal is not None:
        # The Q-model checked on the behaviour's own held-out returns (no ground truth used).
        lines.append(
            f"Q-model on the behaviour's held-out returns: first-step Q {cal['first_step_q']:.3f}"
            f" vs logged {cal['first_step_return']:.3f}, mean error {cal['mean_error']:+.3f}, "
            f"largest decile gap {cal['max_bin_error']:.3f}"
        )
    for name, t in report["targets"].items():
        lo, hi = t["true_ci95"]
        lines.append("")
        lines.append(
            f"target {name}: true value {t['true_value']:.3f} [{lo:.3f}, {hi:.3f}], KL per step "
            f"{t['kl_per_step']:.3f} nats, trajectory ESS {t['ess']:.0f}"
        )
        lines.append(
            f"  {'estimator':<10} {'estimate':>9} {'95% interval':>22} {'KL/step':>8} "
            f"{'rel. error':>10}  interval method"
        )
        for est, e in t["estimates"].items():
            ci = e["ci95"]
            ci_text = "-" if ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            value = "nan" if e["value"] is None else f"{e['value']:.3f}"
            rel = t["relative_error"][est]
            mark = " (default)" if est == report["default_estimator"] else ""
            lines.append(
                f"  {est:<10} {value:>9} {ci_text:>22} {t['kl_per_step']:>8.3f} {rel:>10.3f}"
                f"  {_method(e)}{mark}"
            )
        lines += _decision_lines(t)
        lines.append(f"  {bootstrap_note(t['bootstrap'])}")
    return "\n".join(lines)


def _method(estimate: dict[str, Any]) -> str:
    """The short name of an estimate's interval method."""
    method = str(estimate.get("interval_method", ""))
    if "refitted" in method:
        return "Q-refit bootstrap" + (" + bias" if "detectable bias" in method else "")
    return "session bootstrap" if method else "-"


def _decision_lines(t: dict[str, Any]) -> list[str]:
    """The verdict, HCOPE's bound and the measured coverage of one target's entry."""
    lines = [f"  verdict: {t['verdict']}"] if "verdict" in t else []
    bound = t.get("lower_bound") or {}
    if bound.get("value") is not None:
        lines.append(
            f"  {100 * bound['confidence']:.0f}% lower bound (HCOPE, concentration inequality): "
            f"{bound['value']:.4g}"
        )
    elif bound.get("note"):
        lines.append(f"  HCOPE lower bound: none ({bound['note']})")
    bias = {k: v for k, v in (t.get("bias_bound") or {}).items() if v}
    if bias:
        text = ", ".join(f"{name} {value:+.3g}" for name, value in bias.items())
        lines.append(
            f"  Q-model bias detected (distance to WDR's band; intervals extended by it): {text}"
        )
    coverage = t.get("measured_coverage") or {}
    if coverage:
        text = ", ".join(
            f"{name} {100 * c['coverage']:.0f}%" for name, c in coverage.items() if "coverage" in c
        )
        lines.append(f"  measured coverage of the 95% intervals (benchmark): {text}")
    return lines


def _sessions(args: argparse.Namespace) -> int:
    for flag in ("sessions", "truth_sessions"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected >= 1")
    if args.n_bootstrap < 0:
        raise UserError(f"--n-bootstrap: expected >= 0, got {args.n_bootstrap}")
    if args.n_folds < 1:
        raise UserError(f"--n-folds: expected >= 1, got {args.n_folds}")
    if not 0.0 <= args.q_ratio_power <= 1.0:  # also refuses NaN
        raise UserError(f"--q-ratio-power: expected in [0, 1], got {args.q_ratio_power}")

    def say(message: str) -> None:
        if sys.stderr.isatty():
            print(f"... {message}", file=sys.stderr)

    if args.simulate is not None:
        report = run_simulated_check(
            args.simulate,
            args.behaviour,
            args.target,
            args.sessions,
            args.truth_sessions,
            args.seed,
            args.n_bootstrap,
            args.n_folds,
            args.cache_dir,
            progress=say,
            ratio_power=args.q_ratio_power,
        )
        text = format_simulated(report)
    else:
        report = run_real_sessions(args)
        text = format_real(report)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)
    return 0


def run_real_sessions(args: argparse.Namespace) -> dict[str, Any]:
    """The ``rlrec ope sessions --data`` report: one entry per target."""
    from rlrec.data.dataset import load_dataset
    from rlrec.evaluation.ope.fqe import FQEConfig
    from rlrec.evaluation.ope.logged_sessions import evaluate_real_sessions

    specs = [parse_policy_spec(text) for text in args.target]  # mistakes before the data loads
    dataset = load_dataset(args.data)
    targets = {}
    for i, (text, spec) in enumerate(zip(args.target, specs, strict=True)):
        policy, history = data_policy(spec, dataset, args.encoder, args.seed + i)
        targets[text] = evaluate_real_sessions(
            dataset,
            policy.action_probabilities,
            text,
            split=args.split,
            history_length=history,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            fqe=FQEConfig(n_folds=args.n_folds, seed=args.seed, ratio_power=args.q_ratio_power),
        )
    return {"data": str(args.data), "targets": targets}


def format_real(report: dict[str, Any]) -> str:
    """A plain-text table of a ``--data`` report."""
    from rlrec.evaluation.ope.bootstrap import bootstrap_note

    lines = [f"real sessions of {report['data']}"]
    for name, t in report["targets"].items():
        lines += [
            "",
            f"target {name}: {t['sessions']} sessions, {t['decisions']} decisions of the "
            f"{t['split']} split; logged value {t['logged_value']:.3f}",
            f"  propensities: {t['propensities']}",
            f"  meaning: {t['meaning']}",
            f"  KL per step from the estimated behaviour {t['kl_per_step']:.3f} nats, "
            f"trajectory ESS {t['ess']:.1f}",
        ]
        features = t.get("q_features") or {}
        for name, why in (features.get("unavailable") or {}).items():
            lines.append(f"  Q-model feature {name}: {why}")
        lines.append(
            f"  {'estimator':<10} {'estimate':>10} {'95% interval':>24} {'KL/step':>8}  "
            "interval method"
        )
        for est, e in t["estimates"].items():
            ci = e["ci95"]
            ci_text = "-" if ci[0] is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"
            value = "nan" if e["value"] is None else f"{e['value']:.4g}"
            mark = " (default)" if est == t["default_estimator"] else ""
            lines.append(
                f"  {est:<10} {value:>10} {ci_text:>24} {t['kl_per_step']:>8.3f}  "
                f"{_method(e)}{mark}"
            )
        lines += _decision_lines(t)
        lines.append(f"  {bootstrap_note(t['bootstrap'])}")
    return "\n".join(lines)


def add_replay_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec ope replay``."""
    p = verbs.add_parser(
        "replay",
        help="replay ranking metrics: HR@K and NDCG@K of a policy's top K vs the actual next item",
        description=(
            "Replay held-out real sessions: at every step after a session's first, rank all "
            "items by the policy's probabilities given the previous steps (full ranking, ties "
            "count half) and score the actual next item: HR@K, NDCG@K and MRR. SPEC: "
            "random, popular, popularity, greedy_supervised (with --encoder) or run:RUN_DIR, "
            "optionally with ,tau=T and ,eps=E."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="a PreparedDataset")
    p.add_argument("--policy", required=True, metavar="SPEC", help="the policy to replay")
    p.add_argument("--k", type=int, default=10, help="cut-off of HR@K and NDCG@K")
    p.add_argument("--split", default="test", help="held-out split to replay")
    p.add_argument("--encoder", default=None, help="encoder checkpoint for greedy_supervised")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from rlrec.data.dataset import load_dataset
    from rlrec.evaluation.ope.logged_sessions import replay_metrics

    if args.k < 1:
        raise UserError(f"--k: expected >= 1, got {args.k}")
    spec = parse_policy_spec(args.policy)  # a mistyped SPEC fails before the data loads
    dataset = load_dataset(args.data)
    policy, history = data_policy(spec, dataset, args.encoder, 0)
    report = {
        "data": str(args.data),
        "policy": args.policy,
        **replay_metrics(dataset, policy.action_probabilities, args.split, history, args.k),
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        k = report["k"]
        print(
            f"{args.policy} on {report['decisions']} decisions of {report['sessions']} "
            f"{report['split']} sessions: HR@{k} {report[f'hr@{k}']:.4f}  "
            f"NDCG@{k} {report[f'ndcg@{k}']:.4f}  MRR {report['mrr']:.4f}"
        )
    return 0
