"""``rlrec quickstart``: the main job on the embedded synthetic default, end to end.

Wiring only: :func:`rlrec.workflows.quickstart.run_quickstart` runs the stages (each the library
call of its own verb) and writes every artifact under ``--out``; this prints progress per
stage, where the report and the TensorBoard logs are, or ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlrec.cli.parsing import HelpFormatter

__all__ = [
    "register",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec quickstart``."""
    p = sub.add_parser(
        "quickstart",
        help="run the whole pipeline on the embedded synthetic default and write a report",
        description=(
            "Generate and prepare the synthetic log (with ground truth), fit the user model and "
            "validate the simulator's fidelity, pretrain and evaluate the encoder, train PPO "
            "on frozen encoder states, evaluate it against every baseline, check off-policy "
            "estimators of the trained policy against the simulator's true values, and write "
            "OUT/report.html. About 10 minutes on 2 CPU cores; --tiny about a minute."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("logs/quickstart"), help="output directory")
    p.add_argument("--tiny", action="store_true", help="a small world and short budgets")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier quickstart output at --out, its trained run included "
        "(never a folder that is not one)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of every stage")
    # "%(default).0s" prints nothing; it keeps argparse from appending "(default: None)".
    p.add_argument(
        "--timesteps",
        type=int,
        default=None,
        help="PPO env steps (default: the agent preset's, 300000; tiny 3072)%(default).0s",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (progress goes to stderr)",
    )
    p.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    import dataclasses

    from rlrec.workflows.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig.tiny(args.seed) if args.tiny else QuickstartConfig(seed=args.seed)
    if args.timesteps is not None:
        config = dataclasses.replace(config, timesteps=args.timesteps)
    stream = sys.stderr if args.json else sys.stdout

    def say(message: str) -> None:
        print(message, file=stream, flush=True)

    result = run_quickstart(args.out, config, progress=say, force=args.force)
    summary: dict[str, Any] = result.summary
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    print()
    print(f"done in {summary['total_seconds']:.0f} s; everything is under {result.out}")
    for key, value in summary["headline"].items():
        if value is not None:
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"  {key:<28}{text}")
    for world, r in summary.get("agent", {}).items():
        if r.get("ratio_to_best_baseline") is None:
            continue
        ci = r.get("ratio_ci95")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        print(
            f"  PPO / best non-oracle baseline ({r['best_baseline']}), {world} world: "
            f"{r['ratio_to_best_baseline']:.3f}{interval}"
        )
    print(f"report:      {summary['report']}")
    print(f"TensorBoard: tensorboard --logdir {summary['tensorboard_logdir']}")
    return 0
