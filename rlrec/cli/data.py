"""``rlrec data``: synth, prepare and stats."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rlrec data`` and its verbs."""
    parser = sub.add_parser("data", help="generate, prepare and inspect event logs")
    parser.add_subparsers(dest="data_command", metavar="VERB", required=True)
