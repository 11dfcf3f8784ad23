"""``rlrec report RUN_DIR``: the HTML report of a quickstart output or a training run."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from rlrec.cli.parsing import HelpFormatter

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec report``."""
    p = sub.add_parser(
        "report",
        help="write a self-contained report.html (and plots/*.png) for a run",
        description=(
            "Reads what RUN_DIR holds (a 'rlrec quickstart' output, any part of one, or a run "
            "directory of 'rlrec train') and writes report.html with the images embedded, "
            "plus plots/*.png: learning curves, the category migration matrix, simulator "
            "fidelity, the policy comparison, OPE against the true values and the encoder's "
            "ranking metrics; with RUN_DIR/eval_truth.json ('rlrec evaluate --world truth') the "
            "fitted-vs-truth gap per policy, with RUN_DIR/sensitivity.json ('rlrec "
            "sensitivity') the ratio to the best baseline across the response prior, with "
            "churn.json ('rlrec churn' output, here or in churn/) the retention and churn "
            "section. A section whose input is missing says so on the page."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="quickstart output or run dir")
    # "%(default).0s" prints nothing; it keeps argparse from appending "(default: None)".
    p.add_argument(
        "--out", type=Path, default=None, help="where to write (default: RUN_DIR)%(default).0s"
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing report.html and plots/ in OUT"
    )
    p.add_argument("--json", action="store_true", help="print the paths and headline as JSON")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from rlrec.errors import UserError
    from rlrec.evaluation.report import TruncatedLogWarning, write_report

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: is a file; pass a folder for report.html and plots/")
    target = args.out if args.out is not None else args.run_dir
    for existing in (target / "report.html", target / "plots"):
        if existing.exists() and not args.force:
            raise UserError(
                f"{existing}: already exists; pass --force to replace report.html and plots/"
            )
    # The library warns (e.g. a truncated TensorBoard file); the CLI prints one line each.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncatedLogWarning)
        result = write_report(args.run_dir, args.out)
    for warning in caught:
        if issubclass(warning.category, TruncatedLogWarning):
            print(f"rlrec: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if args.json:
        payload = {
            "report": str(result.html),
            "plots": [str(p) for p in result.plots],
            "sections": result.sections,
            "headline": result.headline,
        }
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        missing = [name for name, ok in result.sections.items() if not ok]
        plots_dir = result.html.parent / "plots"
        print(f"report written to {result.html} ({len(result.plots)} plots in {plots_dir})")
        if missing:
            print(f"sections without input: {', '.join(missing)}")
    return 0
