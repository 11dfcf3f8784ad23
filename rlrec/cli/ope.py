"""``rlrec ope``: off-policy evaluation from logged data (bandit, sessions, replay, served)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from functools import partial

from tqdm import tqdm

from rlrec.cli.parsing import HelpFormatter
from rlrec.errors import UserError

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec ope`` and its verbs."""
    parser = sub.add_parser(
        "ope",
        help="off-policy evaluation of policies from logged data",
        formatter_class=HelpFormatter,
    )
    verbs = parser.add_subparsers(dest="ope_command", metavar="VERB", required=True)

    bandit = verbs.add_parser(
        "bandit",
        help="estimate a slate policy's value from logged bandit feedback (Open Bandit Dataset)",
        description=(
            "Estimate an evaluation policy's value from a behaviour policy's logged bandit "
            "feedback with DM, IPW, SNIPW, DR, SNDR, Switch-DR and DR-OS, each with a seeded "
            "bootstrap 95% interval. DM and the DR family use a cross-fitted logistic reward "
            "model chosen by cross-validated log-loss on the logs."
        ),
        formatter_class=HelpFormatter,
    )
    bandit.add_argument("--logs", required=True, help="logged feedback CSV (OBD layout)")
    bandit.add_argument("--item-context", default=None, help="item features CSV (OBD layout)")
    bandit.add_argument(
        "--policy",
        required=True,
        metavar="SPEC",
        help="evaluation policy: random, bts:PRIOR.json[#CAMPAIGN], or a run directory",
    )
    bandit.add_argument(
        "--on-policy-logs",
        default=None,
        help="logs collected by the evaluation policy itself; their mean reward is the truth",
    )
    bandit.add_argument("--seed", type=int, default=0, help="seed of folds and bootstrap")
    bandit.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap resamples")
    bandit.add_argument("--n-folds", type=int, default=5, help="reward-model cross-fitting folds")
    bandit.add_argument(
        "--n-sim", type=int, default=100_000, help="Monte Carlo draws for a BTS policy"
    )
    bandit.add_argument("--policy-seed", type=int, default=12345, help="seed of BTS Monte Carlo")
    bandit.add_argument("--switch-lambda", type=float, default=100.0, help="Switch-DR threshold")
    bandit.add_argument("--os-lambda", type=float, default=10000.0, help="DR-OS shrinkage")
    bandit.add_argument("--json", action="store_true", help="print the report as JSON")
    bandit.set_defaults(handler=_bandit)

    from rlrec.cli.ope_sessions import add_replay_parser, add_sessions_parser

    add_sessions_parser(verbs)
    add_replay_parser(verbs)

    from rlrec.cli.serve import add_served_parser

    add_served_parser(verbs)


def _bandit(args: argparse.Namespace) -> int:
    # Imported here so that `rlrec --help` does not pay for scipy and pandas.
    from rlrec.data.bandit import load_obd
    from rlrec.evaluation.ope.bandit_policies import RunDirectoryPolicy, parse_policy_spec
    from rlrec.evaluation.ope.bandit_report import BanditOPESettings, format_report, run_bandit_ope
    from rlrec.evaluation.ope.reward_model import RewardModelConfig

    if args.n_bootstrap < 0:
        raise UserError(f"--n-bootstrap: expected >= 0, got {args.n_bootstrap}")
    if args.n_folds < 1:
        raise UserError(f"--n-folds: expected >= 1, got {args.n_folds}")
    policy = parse_policy_spec(args.policy, n_sim=args.n_sim, seed=args.policy_seed)
    if isinstance(policy, RunDirectoryPolicy):
        # A run's policy lives in rlrec.agents, which evaluation never imports: the CLI
        # supplies the loader (see rlrec.agents.bandit_policy for what it computes).
        from rlrec.agents.bandit_policy import run_action_dist

        policy = replace(
            policy, loader=partial(run_action_dist, n_sim=args.n_sim, seed=args.policy_seed)
        )
    feedback = load_obd(args.logs, args.item_context)
    ground_truth = None
    if args.on_policy_logs is not None:
        ground_truth = load_obd(args.on_policy_logs).mean_reward
    settings = BanditOPESettings(
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        switch_lambda=args.switch_lambda,
        os_lambda=args.os_lambda,
        reward_model=RewardModelConfig(n_folds=args.n_folds),
    )
    action_dist = policy.action_dist(feedback)
    # The reward-model selection takes seconds to a minute: show progress on a terminal.
    with tqdm(desc="reward model", unit="fit", disable=not sys.stderr.isatty(), leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        report = run_bandit_ope(
            feedback, action_dist, policy.name, ground_truth, settings, progress=progress
        )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0
