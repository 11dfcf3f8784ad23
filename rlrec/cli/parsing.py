"""The argument parser and help formatter every ``rlrec`` verb uses.

Two departures from plain :mod:`argparse`, both for the user in front of a terminal:

- :class:`HelpFormatter` lists each option's default, but not the ``(default: None)`` and
  ``(default: False)`` that argparse appends to required options and on/off flags, where it
  says nothing (or, for a required option, something wrong).
- :class:`Parser` reports a command-line mistake as ONE line on stderr with exit code 2, like
  :class:`rlrec.errors.UserError`, instead of the usage block followed by the error: the line
  names the verb and points to its ``--help``.

:func:`check_out_dir` and :func:`add_force` guard the verbs that write a whole output directory.
"""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

from rlrec.errors import EXIT_USER_ERROR

__all__ = [
    "HelpFormatter",
    "Parser",
    "add_force",
    "check_out_dir",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` without the defaults that carry no information."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # None: no default (the help says what happens instead); False: an off-by-default
        # flag; a required option's default is never used.
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line; its subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see 'PROG --help')`` on stderr and exit with 2."""
        one_line = " ".join(message.split())
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line} (see '{self.prog} --help')\n")


def add_force(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--force``: replace an earlier output of the same kind at ``--out``."""
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"replace an existing {what} at --out (never anything else)",
    )


def check_out_dir(out: str | os.PathLike[str], kind: str, force: bool) -> None:
    """Refuse an ``--out`` before any work if writing it would replace something.

    The library checks again under the output's lock (:func:`rlrec.fsutil.atomic_directory`);
    this early check only spares the user a long run that ends in the same refusal.

    Args:
        out: The ``--out`` path.
        kind: A key of :data:`rlrec.fsutil.ARTIFACT_KINDS`.
        force: The verb's ``--force``.

    Raises:
        UserError: See :func:`rlrec.fsutil.check_output`.
    """
    from rlrec.fsutil import check_output

    check_output(out, kind, force)
