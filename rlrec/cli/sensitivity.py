"""``rlrec sensitivity RUN``: the run's policy against the baselines across the response prior."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlrec.cli.parsing import HelpFormatter

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec sensitivity``."""
    from rlrec.workflows.sensitivity import DEFAULT_EPISODES, DEFAULT_POINTS

    p = sub.add_parser(
        "sensitivity",
        help="sweep what logs cannot identify: the policy's ratio to the best baseline",
        description=(
            "Sets the run's unidentified response parameters (provenance 'default') to the "
            "centre and each end of their prior, then to --points Latin-hypercube points, and "
            "in each world rolls out the run's policy and every non-oracle baseline on the "
            "same seeded users. Prints the policy's ratio to the best baseline per world, the "
            "mean and worst ratio, the share of worlds where it is >= 1 and each parameter's "
            "Spearman correlation with the ratio. Writes RUN_DIR/sensitivity.json, which "
            "'rlrec report' plots."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of 'rlrec train'")
    p.add_argument(
        "--points", type=int, default=DEFAULT_POINTS, help="Latin-hypercube points (>= 0)"
    )
    p.add_argument(
        "--episodes", type=int, default=DEFAULT_EPISODES, help="simulated users per world"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the users and the design")
    p.add_argument("--json", action="store_true", help="print the payload as JSON")
    p.set_defaults(handler=_sensitivity)


def _sensitivity(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rlrec.workflows.sensitivity import (
        SENSITIVITY_FILE,
        format_sensitivity,
        sensitivity_run,
    )

    # A bar over the worlds on a terminal only, so that piped and --json output stays clean.
    with tqdm(
        desc="sensitivity", unit="world", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:

        def progress(label: str) -> None:
            bar.update(1)
            bar.set_postfix_str(label)

        payload = sensitivity_run(args.run_dir, args.points, args.episodes, args.seed, progress)
    if args.json:
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        print(format_sensitivity(payload))
        print(f"written to {Path(args.run_dir) / SENSITIVITY_FILE}")
    return 0
