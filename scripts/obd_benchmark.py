"""Reproduce the Open Bandit Dataset OPE benchmark and compare with Open Bandit Pipeline 0.5.7.

Both directions on ``../shared/data/obd_all``: the BTS policy's value estimated from the
uniform-random policy's logs, and the reverse; the ground truth is the on-policy value, the
mean click of the other policy's logs. For every estimator it prints rlrec's estimate, its
95% bootstrap interval and relative error next to OBP's (from ``obp_reference.json``), and
checks IPW and SNIPW against OBP given OBP's own evaluation action distribution.

rlrec's BTS distribution is its own seeded Monte Carlo draw (OBP's draw differs), and its
DM / DR family use rlrec's cross-fitted logistic reward model, selected by cross-validated
log-loss on the logged data only; the ground truth is used for nothing but the error column.

Usage::

    python scripts/obd_benchmark.py [--data ../shared/data/obd_all] [--out obd.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from rlrec.data.bandit import load_obd
from rlrec.data.dataset import write_json_atomic
from rlrec.evaluation.ope.bandit import (
    ESTIMATOR_NAMES,
    InverseProbabilityWeighting,
    SelfNormalizedIPW,
    prepare_rounds,
)
from rlrec.evaluation.ope.bandit_policies import (
    BernoulliTSPolicy,
    UniformRandomPolicy,
    load_bts_prior,
)
from rlrec.evaluation.ope.bandit_report import BanditOPESettings, run_bandit_ope
from rlrec.evaluation.ope.base import relative_error

SETTINGS = (
    ("all:random->bts", "random", "bts"),
    ("all:bts->random", "bts", "random"),
)


def run_setting(data: Path, key: str, logged: str, target: str, args: argparse.Namespace) -> dict:
    reference = json.loads((data / "obp_reference.json").read_text())[key]
    feedback = load_obd(data / f"{logged}.csv", data / f"{logged}_item_context.csv")
    truth = load_obd(data / f"{target}.csv").mean_reward
    if target == "bts":
        alpha, beta = load_bts_prior(data / "bts_prior.json")
        policy = BernoulliTSPolicy(alpha=alpha, beta=beta, n_sim=args.n_sim, seed=args.policy_seed)
    else:
        policy = UniformRandomPolicy()
    settings = BanditOPESettings(n_bootstrap=args.n_bootstrap, seed=args.seed)
    report = run_bandit_ope(feedback, policy.action_dist(feedback), target, truth, settings)

    # Agreement check: OBP's own action distribution, our IPW / SNIPW.
    obp_dist = np.asarray(reference["eval_action_dist_round0"])[None]  # (1, 80, 3)
    rounds = prepare_rounds(
        reward=feedback.reward,
        action=feedback.action,
        position=feedback.position,
        pscore=feedback.pscore,
        action_dist=obp_dist,
    )
    agreement = {
        "ipw": InverseProbabilityWeighting().estimate(rounds),
        "snipw": SelfNormalizedIPW().estimate(rounds),
    }
    rows = {}
    for name in ESTIMATOR_NAMES:
        est = report.estimates[name]
        rows[name] = {
            "rlrec": est.value,
            "rlrec_ci95": list(est.ci95),
            "rlrec_relative_error": relative_error(est.value, truth),
            "obp": reference["estimates"][name],
            "obp_relative_error": reference["relative_error"][name],
        }
    return {
        "setting": key,
        "n_rounds": report.n_rounds,
        "ground_truth": truth,
        "obp_ground_truth": reference["ground_truth"],
        "behavior_mean_reward": report.behavior_mean_reward,
        "estimators": rows,
        "agreement_given_obp_action_dist": {
            name: {
                "rlrec": value,
                "obp": reference["estimates"][name],
                "relative_difference": abs(value - reference["estimates"][name])
                / abs(reference["estimates"][name]),
            }
            for name, value in agreement.items()
        },
        "reward_model": report.reward_model.summary() if report.reward_model else None,
        "seconds": report.seconds,
    }


def print_setting(result: dict) -> None:
    print(
        f"\n{result['setting']}  rounds {result['n_rounds']}  ground truth "
        f"{result['ground_truth']:.5f} (OBP {result['obp_ground_truth']:.5f})  "
        f"logged mean {result['behavior_mean_reward']:.5f}"
    )
    print(
        f"{'estimator':<10} {'rlrec':>9} {'95% CI':>22} {'rel.err':>8} | "
        f"{'OBP 0.5.7':>9} {'rel.err':>8}"
    )
    for name, row in result["estimators"].items():
        ci = f"[{row['rlrec_ci95'][0]:.5f}, {row['rlrec_ci95'][1]:.5f}]"
        print(
            f"{name:<10} {row['rlrec']:>9.5f} {ci:>22} {row['rlrec_relative_error']:>8.4f} | "
            f"{row['obp']:>9.5f} {row['obp_relative_error']:>8.4f}"
        )
    fit = result["reward_model"]
    if fit is not None:
        print(
            f"reward model: {fit['features']}, l2 {fit['l2']:g}, {fit['n_folds']}-fold, "
            f"CV log-loss {fit['cv_log_loss']:.5f}"
        )
    for name, row in result["agreement_given_obp_action_dist"].items():
        print(
            f"given OBP's action distribution: {name} rlrec {row['rlrec']:.12g} "
            f"OBP {row['obp']:.12g} (relative difference {row['relative_difference']:.1e})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "obd_all"
    parser.add_argument("--data", type=Path, default=default_data, help="obd_all folder")
    parser.add_argument("--seed", type=int, default=0, help="folds and bootstrap seed")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--n-sim", type=int, default=100_000, help="BTS Monte Carlo draws")
    parser.add_argument("--policy-seed", type=int, default=12345, help="BTS Monte Carlo seed")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not (args.data / "obp_reference.json").is_file():
        print(f"obd_benchmark: {args.data} has no obp_reference.json", file=sys.stderr)
        return 2
    results = [run_setting(args.data, *setting, args) for setting in SETTINGS]
    for result in results:
        print_setting(result)
    if args.out is not None:
        write_json_atomic(args.out, {"settings": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
