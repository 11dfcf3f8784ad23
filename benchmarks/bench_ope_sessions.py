"""Accuracy of sequential OPE against the simulator's ground truth (issue 6).

Sessions are logged in the synthetic preset's simulator under a known stochastic behaviour
policy; a linear fitted Q-function (FQE) is fitted on the logs, every sequential estimator
(IS, WIS, PDIS, WPDIS, DM, DR, WDR, SWITCH-DR, MAGIC) estimates each target policy's expected
session return, and the target's true value comes from on-policy simulation with the same env
configuration (other seeds). Target of the issue: the default estimator
(``rlrec.evaluation.ope.sequential.DEFAULT_ESTIMATOR``, MAGIC) within 10% relative error for
a target whose per-step KL divergence from the behaviour policy is at most 1 nat, with
10,000 logged sessions.

Defaults: behaviour ``greedy_supervised,tau=1,eps=0.3`` (the pretrained encoder's softmax
with 30% uniform exploration: a production recommender that explores); targets at growing
distance from it: ``greedy_supervised,tau=1,eps=0.1``, ``greedy_supervised,tau=0.5,eps=0.3``,
``greedy_supervised,tau=0.5,eps=0.1``, ``random`` and ``popular,eps=0.3``.

Writes flat keys: ``sessions``, ``logged_steps``, ``truth_sessions``, ``behaviour``,
``behaviour_value``, ``default_estimator``, ``seed``, ``seconds``, ``cpu_seconds``,
``behaviour_q_calibration`` (the Q-model's calibration on the behaviour's own returns), and per
target (its SPEC with non-alphanumerics as ``_``): ``kl_per_step__T``, ``ess__T``,
``true_value__T``, ``estimate__T__E``, ``relative_error__T__E`` and ``truth_in_ci95__T__E``
for each estimator ``E``,
plus ``default_relative_error_kl_le_1_max`` (the worst default-estimator error over targets
with KL <= 1 nat), ``default_relative_error_max`` (over all targets, the farthest at ~3.3
nats) and ``targets`` (the full report).

Coverage (issue 22), ``--coverage-seeds N``: the benchmark is repeated on N logs (seeds
``seed .. seed + N - 1``; every log is fitted and bootstrapped afresh) against one truth per
target (on-policy sessions with seed ``seed + 1``, ``--truth-sessions``, default 16x the
logged sessions in batches of 40,000, so that the truth's own noise is small beside the
errors it judges: at 4x, ``random``'s truth was 1% off). It adds, for every
estimator ``E`` and target ``T``: ``coverage__T__E`` (share of seeds whose 95% interval holds
the truth), ``mean_relative_width__T__E`` (interval width / truth), ``mean_relative_error__T__E``
and ``max_relative_error__T__E``; the same two for ``E = on_policy``: the target's own
on-policy mean return on the log's users (same seed: same users, same dynamics draws), the
error an A/B test on those users would have made, which no estimator from that log can be
expected to beat; ``coverage_true_value_ci95_half_width__T``; pooled over the targets within
1 nat per step:
``coverage_E``, ``coverage_min_kl_le_1_E`` (the worst target's) and ``mean_relative_width_E``;
``hcope_valid_share`` (share of seed x target whose HCOPE lower bound is below the truth);
and ``bandit_ipw_relative_width``: the bandit IPW's mean 95%-interval width / true value on
as many rounds as there are logged sessions (``bench_ope.synthetic_logs``, 80 actions, 3
positions), the reference of the issue's width target. Seeds run in ``--workers`` processes.

Q-model bias over seeds, ``--point-seeds N``: DM, WDR, SWITCH-DR and MAGIC point estimates (no
intervals, so a seed costs its log and five FQE fits) on N logs against one truth per target
(``--truth-sessions``, default 16x the logged sessions): ``point_mean_relative_error__T__E``
(signed mean over the seeds), ``point_max_relative_error__T__E`` (largest absolute) and
``point_relative_errors__T__E`` (every seed's, signed) for ``E`` in dm, wdr, switch, magic and
on_policy (the A/B test on the log's users, as above), and ``point_kl_per_step__T``.

Usage::

    python benchmarks/bench_ope_sessions.py --out bench_ope_sessions.json
    python benchmarks/bench_ope_sessions.py --quick --out bench_ope_sessions.json  # 2,000
    python benchmarks/bench_ope_sessions.py --coverage-seeds 20 --out bench_ope_sessions.json
    python benchmarks/bench_ope_sessions.py --sessions 2000 --point-seeds 4 --out bias.json
"""

from __future__ import annotations

import os

# One BLAS thread per process: the coverage workers are the parallelism, and a threaded
# OpenBLAS on a loaded 2-core machine ran the FQE's small (225, 225) solves 15x slower.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from rlrec.agents.policy_specs import run_simulated_check  # noqa: E402
from rlrec.data.dataset import write_json_atomic  # noqa: E402
from rlrec.evaluation.ope.sequential import DEFAULT_ESTIMATOR  # noqa: E402

BEHAVIOUR = "greedy_supervised,tau=1,eps=0.3"
TARGETS = (
    "greedy_supervised,tau=1,eps=0.1",
    "greedy_supervised,tau=0.5,eps=0.3",
    "greedy_supervised,tau=0.5,eps=0.1",
    "random",
    "popular,eps=0.3",
)


TRUTH_MULTIPLE = 16
"""Default on-policy sessions of a truth, as a multiple of the logged sessions."""

POINT_ESTIMATORS = ("dm", "wdr", "switch", "magic")
"""The estimators of ``--point-seeds`` (those whose error is the Q-model's bias or its cure)."""


def _key(spec: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", spec).strip("_")


def flatten(report: dict[str, Any]) -> dict[str, Any]:
    """Flat unit-named keys of a ``run_simulated_check`` report."""
    out: dict[str, Any] = {
        "sessions": report["sessions"],
        "logged_steps": report["logged_steps"],
        "behaviour": report["behaviour"],
        "behaviour_value": report["behaviour_value"],
        "default_estimator": report["default_estimator"],
    }
    worst = None
    default = report["default_estimator"]
    for spec, t in report["targets"].items():
        k = _key(spec)
        out[f"kl_per_step__{k}"] = t["kl_per_step"]
        out[f"ess__{k}"] = t["ess"]
        out[f"true_value__{k}"] = t["true_value"]
        for est, e in t["estimates"].items():
            out[f"estimate__{k}__{est}"] = e["value"]
            out[f"relative_error__{k}__{est}"] = t["relative_error"][est]
            out[f"truth_in_ci95__{k}__{est}"] = t["truth_in_ci95"][est]
        if t["kl_per_step"] <= 1.0:
            err = t["relative_error"][default]
            worst = err if worst is None else max(worst, err)
    out["default_relative_error_kl_le_1_max"] = worst
    out["default_relative_error_max"] = max(
        t["relative_error"][default] for t in report["targets"].values()
    )
    return out


_WORKER: dict[str, Any] = {}


def _init_worker(env: str, behaviour: str, targets: list[str], cache_dir: str) -> None:
    """Build the simulator and the policies once per worker process."""
    import torch

    from rlrec.agents.policy_specs import parse_policy_spec, simulator_context

    torch.set_num_threads(1)  # one core per worker: the workers share the machine
    ctx = simulator_context(env, cache_dir)
    _WORKER["ctx"] = ctx
    _WORKER["behaviour"] = ctx.policy(parse_policy_spec(behaviour), 101)
    # The same policy seeds as run_simulated_check (seed 0): every log sees the same targets.
    _WORKER["targets"] = {
        t: ctx.policy(parse_policy_spec(t), 202 + i) for i, t in enumerate(targets)
    }


TRUTH_BATCH = 40_000
"""On-policy sessions simulated at once for a truth: larger truths pool batches of this size
(``true_value(repeats=...)``), so memory does not grow with the truth."""


def _truth(args: tuple[str, int, int]) -> tuple[str, Any]:
    from rlrec.evaluation.ope.simulated_logging import true_value

    name, sessions, seed = args
    ctx = _WORKER["ctx"]
    batch = min(sessions, TRUTH_BATCH)
    repeats = -(-sessions // batch)  # ceil: at least the sessions asked for
    return name, true_value(_WORKER["targets"][name], ctx.make_env(batch), seed, repeats)


def _on_policy_errors(seed: int, sessions: int, truths: dict[str, Any]) -> dict[str, float]:
    """Relative error of each target's own on-policy mean return on the log's users.

    The same ``seed`` starts the same users as the log, and the dynamics draw the same
    uniforms, so this is what an A/B test of the target on those users would have measured:
    the error no estimator working from that log can be expected to beat (the population's
    noise), reported beside the estimators' errors.
    """
    from rlrec.evaluation.ope.simulated_logging import log_sessions

    ctx = _WORKER["ctx"]
    out = {}
    for name, policy in _WORKER["targets"].items():
        log = log_sessions(ctx.make_env(sessions), policy, {}, seed, record_features=False)
        truth = truths[name].value
        out[name] = float((log.mean_return - truth) / truth)
    return out


def _one_seed(args: tuple[int, int, int, dict[str, Any]]) -> dict[str, Any]:
    from rlrec.evaluation.ope.fqe import FQEConfig
    from rlrec.evaluation.ope.simulated_check import (
        SimulatedCheckSettings,
        evaluate_logged_targets,
    )
    from rlrec.evaluation.ope.simulated_logging import log_sessions

    seed, sessions, n_bootstrap, truths = args
    ctx = _WORKER["ctx"]
    log = log_sessions(ctx.make_env(sessions), _WORKER["behaviour"], _WORKER["targets"], seed)
    settings = SimulatedCheckSettings(
        n_sessions=sessions, seed=seed, n_bootstrap=n_bootstrap, fqe=FQEConfig(seed=seed)
    )
    report = evaluate_logged_targets(log, settings, truths)
    for name, error in _on_policy_errors(seed, sessions, truths).items():
        report[name]["on_policy_relative_error"] = error
    return report


def _point_seed(args: tuple[int, int, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """DM, WDR, SWITCH-DR and MAGIC point estimates (no bootstrap) of every target on one log."""
    from rlrec.evaluation.ope.fqe import FQEConfig, fitted_q_evaluation
    from rlrec.evaluation.ope.sequential import (
        BlendedDR,
        SwitchDR,
        j_step_returns,
        prepare_sessions,
    )
    from rlrec.evaluation.ope.simulated_logging import log_sessions

    seed, sessions, truths = args
    ctx = _WORKER["ctx"]
    log = log_sessions(ctx.make_env(sessions), _WORKER["behaviour"], _WORKER["targets"], seed)
    out = {}
    for name, tl in log.targets.items():
        fqe = fitted_q_evaluation(
            log.offsets,
            log.reward,
            log.features,
            tl.expected_features,
            config=FQEConfig(seed=seed),
            step_ratio=tl.prob / log.behaviour_prob,
        )
        data = prepare_sessions(
            session_offsets=log.offsets,
            reward=log.reward,
            behaviour_prob=log.behaviour_prob,
            target_prob=tl.prob,
            q_factual=fqe.q_factual,
            v_target=fqe.v_target,
        )
        magic = BlendedDR(seed=seed)
        steps, weights = magic.blend(data)
        sums = magic.terms(data).sum(axis=0, keepdims=True)
        g = j_step_returns(sums, data.n_sessions, data.horizon, data.discount, steps)[0]
        truth = truths[name].value
        values = {
            "dm": g[0],
            "wdr": g[-1],
            "switch": SwitchDR().estimate(data),
            "magic": float(g @ weights),
        }
        out[name] = {e: float((v - truth) / truth) for e, v in values.items()}
        out[name]["kl_per_step"] = float(np.mean(tl.kl))
    for name, error in _on_policy_errors(seed, sessions, truths).items():
        out[name]["on_policy"] = error
    return out


def point_errors(
    env: str,
    behaviour: str,
    targets: list[str],
    sessions: int,
    truth_sessions: int,
    seed: int,
    n_seeds: int,
    workers: int,
    cache_dir: str,
) -> dict[str, Any]:
    """The ``--point-seeds`` figures: DM, WDR and MAGIC errors over seeds, without intervals."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    init = (env, behaviour, targets, cache_dir)
    with context.Pool(workers, initializer=_init_worker, initargs=init) as pool:
        truths = dict(pool.map(_truth, [(t, truth_sessions, seed + 1) for t in targets]))
        jobs = [(seed + i, sessions, truths) for i in range(n_seeds)]
        runs = pool.map(_point_seed, jobs)
    out: dict[str, Any] = {"point_seeds": n_seeds, "point_truth_sessions": truth_sessions}
    for spec in targets:
        k = _key(spec)
        out[f"point_kl_per_step__{k}"] = float(np.mean([r[spec]["kl_per_step"] for r in runs]))
        out[f"point_true_value__{k}"] = truths[spec].value
        for est in (*POINT_ESTIMATORS, "on_policy"):
            errors = np.array([r[spec][est] for r in runs])
            out[f"point_mean_relative_error__{k}__{est}"] = float(errors.mean())  # signed
            out[f"point_max_relative_error__{k}__{est}"] = float(np.abs(errors).max())
            out[f"point_relative_errors__{k}__{est}"] = [float(e) for e in errors]
    return out


def bandit_ipw_relative_width(n_rounds: int, n_bootstrap: int, seeds: int = 5) -> float:
    """Mean 95% bootstrap width of bandit IPW over its mean value, on ``n_rounds`` rounds.

    The problem is ``bench_ope.synthetic_logs`` (80 actions, 3 positions), logged ``seeds``
    times; IPW is unbiased, so the mean of its values stands for the true value.
    """
    from bench_ope import synthetic_logs  # the sibling benchmark's logged-bandit problem

    from rlrec.evaluation.ope.bandit import (
        InverseProbabilityWeighting,
        estimate_policy_value,
        prepare_rounds,
    )

    estimates = []
    for seed in range(seeds):
        logs = synthetic_logs(n_rounds, 80, 3, seed)
        rounds = prepare_rounds(
            reward=logs["reward"],
            action=logs["action"],
            position=logs["position"],
            pscore=logs["pscore"],
            action_dist=logs["action_dist"],
        )
        ipw = InverseProbabilityWeighting()
        estimates.append(estimate_policy_value(rounds, [ipw], n_bootstrap, seed=seed)["ipw"])
    widths = [e.ci95[1] - e.ci95[0] for e in estimates]
    return float(np.mean(widths) / np.mean([e.value for e in estimates]))


def coverage(
    env: str,
    behaviour: str,
    targets: list[str],
    sessions: int,
    truth_sessions: int,
    seed: int,
    n_seeds: int,
    n_bootstrap: int,
    workers: int,
    cache_dir: str,
) -> dict[str, Any]:
    """The ``--coverage-seeds`` figures (see the module docstring)."""
    import multiprocessing

    say = lambda msg: print(f"... {msg}", file=sys.stderr, flush=True)  # noqa: E731
    init = (env, behaviour, targets, cache_dir)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=init) as pool:
        say(f"true values ({truth_sessions} on-policy sessions per target)")
        truths = dict(pool.map(_truth, [(t, truth_sessions, seed + 1) for t in targets]))
        say(f"{n_seeds} logs of {sessions} sessions")
        runs = []
        jobs = [(seed + i, sessions, n_bootstrap, truths) for i in range(n_seeds)]
        for i, run in enumerate(pool.imap(_one_seed, jobs)):
            runs.append(run)
            say(f"seed {seed + i} done ({i + 1}/{n_seeds})")
    out: dict[str, Any] = {"coverage_seeds": n_seeds, "coverage_truth_sessions": truth_sessions}
    pooled: dict[str, list[tuple[bool, float]]] = {}
    worst: dict[str, float] = {}
    hcope = []
    for spec in targets:
        k = _key(spec)
        truth = truths[spec].value
        kl = float(np.mean([r[spec]["kl_per_step"] for r in runs]))
        out[f"coverage_true_value__{k}"] = truth
        out[f"coverage_true_value_ci95_half_width__{k}"] = truths[spec].ci95[1] - truth
        out[f"coverage_kl_per_step__{k}"] = kl
        floor = np.abs([r[spec]["on_policy_relative_error"] for r in runs])
        out[f"mean_relative_error__{k}__on_policy"] = float(floor.mean())
        out[f"max_relative_error__{k}__on_policy"] = float(floor.max())
        for est in runs[0][spec]["estimates"]:
            hits, widths, errors = [], [], []
            for r in runs:
                e = r[spec]["estimates"][est]
                lo, hi = e["ci95"]
                hits.append(lo is not None and lo <= truth <= hi)
                widths.append((hi - lo) / abs(truth) if lo is not None else np.nan)
                errors.append(r[spec]["relative_error"][est])
            out[f"coverage__{k}__{est}"] = float(np.mean(hits))
            out[f"mean_relative_width__{k}__{est}"] = float(np.mean(widths))
            out[f"mean_relative_error__{k}__{est}"] = float(np.mean(errors))
            out[f"max_relative_error__{k}__{est}"] = float(np.max(errors))
            if kl <= 1.0:
                pooled.setdefault(est, []).extend(zip(hits, widths, strict=True))
                worst[est] = min(worst.get(est, 1.0), float(np.mean(hits)))
        for r in runs:
            bound = r[spec]["lower_bound"]["value"]
            if bound is not None:
                hcope.append(bound <= truth)
    for est, pairs in pooled.items():
        out[f"coverage_{est}"] = float(np.mean([h for h, _ in pairs]))
        out[f"coverage_min_kl_le_1_{est}"] = worst[est]
        out[f"mean_relative_width_{est}"] = float(np.mean([w for _, w in pairs]))
    out["hcope_valid_share"] = float(np.mean(hcope)) if hcope else None
    out["coverage_runs"] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 sessions instead of 10,000")
    parser.add_argument("--sessions", type=int, default=None, help="override logged sessions")
    parser.add_argument("--truth-sessions", type=int, default=None, help="on-policy sessions")
    parser.add_argument("--env", default="synthetic", help="env preset or run directory")
    parser.add_argument("--behaviour", default=BEHAVIOUR)
    parser.add_argument("--target", action="append", default=None, help="target SPEC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--cache-dir", default="logs/cache")
    parser.add_argument(
        "--coverage-seeds", type=int, default=0, help="repeat over N logs for coverage"
    )
    parser.add_argument(
        "--point-seeds",
        type=int,
        default=0,
        help="DM, WDR and MAGIC point errors over N logs (no intervals): the Q-model's bias",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes for --coverage-seeds")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    sessions = args.sessions or (2_000 if args.quick else 10_000)
    truth = args.truth_sessions or sessions
    targets = args.target or list(TARGETS)
    started = time.perf_counter()
    cpu_started = time.process_time()
    load_start = os.getloadavg()[0]
    if args.point_seeds > 0:
        points = point_errors(
            args.env,
            args.behaviour,
            targets,
            sessions,
            args.truth_sessions or TRUTH_MULTIPLE * sessions,
            args.seed,
            args.point_seeds,
            args.workers,
            args.cache_dir,
        )
        result = {
            "sessions": sessions,
            "behaviour": args.behaviour,
            "seed": args.seed,
            "workers": args.workers,
            "seconds": time.perf_counter() - started,
            "load_average_1min_start": load_start,
            "load_average_1min_end": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
            **points,
        }
        write_json_atomic(args.out, result)
        for spec in targets:
            k = _key(spec)
            print(
                f"{spec}: KL {points[f'point_kl_per_step__{k}']:.2f}; "
                + ", ".join(
                    f"{e} mean {points[f'point_mean_relative_error__{k}__{e}']:+.3f} max "
                    f"{points[f'point_max_relative_error__{k}__{e}']:.3f}"
                    for e in POINT_ESTIMATORS
                )
            )
        print(f"{result['seconds']:.1f} s; written to {args.out}")
        return 0
    if args.coverage_seeds > 0:
        cov = coverage(
            args.env,
            args.behaviour,
            targets,
            sessions,
            args.truth_sessions or TRUTH_MULTIPLE * sessions,
            args.seed,
            args.coverage_seeds,
            args.n_bootstrap,
            args.workers,
            args.cache_dir,
        )
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cov["bandit_ipw_relative_width"] = bandit_ipw_relative_width(sessions, args.n_bootstrap)
        default = DEFAULT_ESTIMATOR
        result = {
            "sessions": sessions,
            "behaviour": args.behaviour,
            "default_estimator": default,
            "seed": args.seed,
            "n_bootstrap": args.n_bootstrap,
            "workers": args.workers,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started + children.ru_utime,
            "load_average_1min_start": load_start,
            "load_average_1min_end": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
            **cov,
        }
        write_json_atomic(args.out, result)
        for spec in targets:
            k = _key(spec)
            print(
                f"{spec}: KL {cov[f'coverage_kl_per_step__{k}']:.2f}; {default} coverage "
                f"{cov[f'coverage__{k}__{default}']:.2f}, width "
                f"{cov[f'mean_relative_width__{k}__{default}']:.3f}, max error "
                f"{cov[f'max_relative_error__{k}__{default}']:.3f}"
            )
        print(
            f"bandit IPW relative width {cov['bandit_ipw_relative_width']:.3f}; "
            f"{result['seconds']:.1f} s (load {load_start:.1f} -> "
            f"{result['load_average_1min_end']:.1f}); written to {args.out}"
        )
        return 0
    report = run_simulated_check(
        args.env,
        args.behaviour,
        targets,
        sessions,
        truth,
        args.seed,
        n_bootstrap=args.n_bootstrap,
        cache_dir=args.cache_dir,
        progress=lambda msg: print(f"... {msg}", file=sys.stderr, flush=True),
    )
    result = flatten(report)
    result["truth_sessions"] = truth
    result["seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = time.process_time() - cpu_started
    result["seed"] = args.seed
    result["load_average_1min_start"] = load_start
    result["load_average_1min_end"] = os.getloadavg()[0]
    result["behaviour_q_calibration"] = report.get("behaviour_q_calibration")
    result["targets"] = report["targets"]
    write_json_atomic(args.out, result)
    for spec, t in report["targets"].items():
        errs = ", ".join(f"{e} {v:.3f}" for e, v in t["relative_error"].items())
        print(f"{spec}: KL {t['kl_per_step']:.3f} truth {t['true_value']:.3f} rel. errors: {errs}")
    print(f"{result['seconds']:.1f} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
