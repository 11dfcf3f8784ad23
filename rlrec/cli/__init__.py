"""The ``rlrec`` command: argument parsing and wiring only.

Each verb group lives in its own module under ``rlrec.cli`` and contributes a ``register``
function that adds its subparsers; the work itself is done by the library. User errors
(:class:`rlrec.errors.UserError`) are printed as one line on stderr with exit code 2, and so
are command-line mistakes (:class:`rlrec.cli.parsing.Parser`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rlrec import __version__
from rlrec.cli.parsing import HelpFormatter, Parser
from rlrec.errors import EXIT_USER_ERROR, UserError

__all__ = [
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``rlrec`` argument parser."""
    # Parser: command-line mistakes are one line and exit 2; its subparsers inherit it.
    parser: argparse.ArgumentParser = Parser(
        prog="rlrec",
        description=(
            "Learn how users' interests migrate from e-commerce event logs, simulate them, "
            "and train RL recommenders for long-term engagement."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rlrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Imported here so that `rlrec --help` stays fast and one broken group cannot hide others.
    from rlrec.cli import commands

    for register in commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlrec`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except UserError as exc:
        print(f"rlrec: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("rlrec: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
