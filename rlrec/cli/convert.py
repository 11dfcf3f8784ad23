"""``rlrec convert-run``: rewrite a trusted older run's SB3 zips in the safe policy format."""

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
    """Add ``rlrec convert-run``."""
    p = sub.add_parser(
        "convert-run",
        help="convert a trusted run's policy.zip and checkpoints to the safe format",
        description=(
            "Older rlrec versions saved policies as stable-baselines3 zips, whose settings are "
            "pickles: opening one runs any code planted in it, so no other command opens them. "
            "This command loads them (with pickle, only under --trust) and writes "
            "policy.safetensors + policy.json (and checkpoints/step_N.*) beside them. Use it "
            "only on a run you made yourself."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory of 'rlrec train'")
    p.add_argument(
        "--trust",
        action="store_true",
        help="confirm that the run is yours: its zips are unpickled (code in them runs)",
    )
    p.add_argument("--force", action="store_true", help="replace converted files that exist")
    p.add_argument("--json", action="store_true", help="print the files written as JSON")
    p.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from rlrec.agents.artifacts import convert_legacy_run
    from rlrec.agents.train import read_run_config
    from rlrec.errors import UserError

    run = read_run_config(args.run_dir)
    if not args.trust:
        raise UserError(
            f"{args.run_dir}: converting unpickles its zips, which runs any code in them; "
            "pass --trust only for a run you made yourself"
        )
    written = convert_legacy_run(args.run_dir, masked=run.agent.mask_recent > 0, force=args.force)
    if args.json:
        json.dump({"written": [str(p) for p in written]}, sys.stdout, indent=2)
        print()
    else:
        for path in written:
            print(f"wrote {path} (+ {path.with_suffix('.safetensors').name})")
    return 0
