"""``rlrec churn DATA``: who comes back after a cutoff, against the buy-till-you-die baselines."""

from __future__ import annotations

import argparse
import json
import sys

from rlrec.cli.parsing import HelpFormatter

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec churn``."""
    p = sub.add_parser(
        "churn",
        help="predict which users return after a cutoff (and score it when the log goes on)",
        description=(
            "Reads only the events of DATA (a PreparedDataset) strictly before --cutoff and "
            "predicts, for every user seen before it, P(at least one session in [cutoff, "
            "cutoff + N days)) and the expected number of sessions there, with a risk segment. "
            "Writes OUT/predictions.csv, OUT/churn.json and OUT/return_model.json. When the "
            "log has events after the cutoff it also scores the predictions against what "
            "happened (AUC, MAE, RMSE, C-index, calibration) beside the baselines recency, "
            "frequency, RFM logistic regression, BG/NBD and Pareto/NBD (and the true process "
            "on a synthetic log), writes OUT/metrics.json and prints the table. 'rlrec report "
            "OUT' draws it."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="a PreparedDataset directory")
    p.add_argument(
        "--cutoff",
        required=True,
        metavar="DATE",
        help="ISO 8601 date or datetime (UTC unless it has an offset), or unix seconds",
    )
    p.add_argument(
        "--horizon-days", type=float, required=True, metavar="N", help="window length in days"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the fits and Monte Carlo draws")
    p.add_argument("--force", action="store_true", help="replace an existing churn output in DIR")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(handler=_churn)


def _churn(args: argparse.Namespace) -> int:
    from rlrec.workflows.churn import format_churn, run_churn

    run = run_churn(
        args.data, args.cutoff, args.horizon_days, args.out, force=args.force, seed=args.seed
    )
    if args.json:
        payload = run.metrics or {"model": None, "baselines": {}}
        payload = {k: v for k, v in payload.items() if k in ("model", "baselines", "oracle")}
        payload["summary"] = {k: run.summary[k] for k in ("cutoff", "horizon_days", "n_users")}
        payload["summary"]["out"] = str(run.out)
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        print(format_churn(run))
    return 0
