"""``rlrec analyze DATA --out DIR``: trends, migration drift, cross-sell and category demand."""

from __future__ import annotations

import argparse
import json
import sys

from rlrec.cli.parsing import HelpFormatter, add_force, check_out_dir

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec analyze``."""
    p = sub.add_parser(
        "analyze",
        help="behaviour analytics: interest trends, migration drift, cross-sell, demand",
        description=(
            "Cuts a PreparedDataset into periods and answers four questions with tests and "
            "held-out checks: which categories rise or fade (per user segment too), how the "
            "category migration matrix drifts and when it changes, which new category each "
            "user moves into next (model against association rules, Markov and popularity), "
            "and how many views, carts and buys each category will get (model against "
            "last-period and seasonal-naive forecasts). Writes DIR/summary.json, CSV (or "
            "Parquet) tables and DIR/report.html. See docs/analytics.md."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("data_dir", metavar="DATA", help="a PreparedDataset directory")
    p.add_argument("--out", required=True, metavar="DIR", help="the analysis directory")
    p.add_argument("--period", default="1d", help="period length: 1d, 1w, 12h, 30m, ...")
    p.add_argument("--top-k", type=int, default=50, help="categories kept; the rest fold")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate of trends")
    p.add_argument("--k", type=int, default=10, help="cut-off of cross-sell recall@k, NDCG@k")
    p.add_argument("--holdout", type=int, default=3, help="periods held out for demand")
    p.add_argument("--horizon", type=int, default=2, help="periods forecast after the log")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates of drift")
    p.add_argument(
        "--format",
        dest="table_format",
        choices=("csv", "parquet"),
        default="csv",
        help="format of the tables",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and tests")
    add_force(p, "analysis")
    p.add_argument("--json", action="store_true", help="print summary.json")
    p.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rlrec.workflows.analyze import AnalyzeConfig, format_summary, run_analysis

    config = AnalyzeConfig(
        period=args.period,
        top_k_categories=args.top_k,
        alpha=args.alpha,
        k=args.k,
        holdout=args.holdout,
        horizon=args.horizon,
        bootstrap=args.bootstrap,
        table_format=args.table_format,
        seed=args.seed,
    )
    check_out_dir(args.out, "analysis", args.force)
    # A bar over the stages on a terminal only, so that piped and --json output stays clean.
    with tqdm(
        desc="analyze", unit="stage", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:

        def progress(label: str) -> None:
            bar.update(1)
            bar.set_postfix_str(label)

        result = run_analysis(args.data_dir, args.out, config, args.force, progress)
    if args.json:
        json.dump(result.summary, sys.stdout, indent=2)
        print()
    else:
        print(format_summary(result.summary))
        print(f"wrote {result.out} (report: {result.out / 'report.html'})")
    return 0
