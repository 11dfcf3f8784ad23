"""The argument parser and help formatter every ``rlrec`` verb uses.

Two departures from plain :mod:`argparse`, both for the user in front of a terminal:

- :class:`HelpFormatter` lists each option's default, but not the ``(default: None)`` and
  ``(default: False)`` that argparse appends to required options and on/off flags, where it
  says nothing (or, for a required option, something wrong).
- :class:`Parser` reports a command-line mistake as ONE line on stderr with exit code 2, like
  :class:`rlrec.errors.UserError`, instead of the usage block followed by the error: the line
  names the verb and points to its ``--help``.

:func:`check_out_dir` guards the verbs that write a whole output directory.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NoReturn

from rlrec.errors import EXIT_USER_ERROR, UserError


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


def check_out_dir(out: str | os.PathLike[str], marker: str, what: str) -> None:
    """Refuse an ``--out`` whose replacement would destroy something that is not ours.

    Outputs are written to a temporary directory renamed over ``out``, replacing the whole
    directory; so an existing ``out`` must be empty or hold an earlier output of the same
    kind (one with ``marker`` in it). ``--out .`` or ``--out logs`` would otherwise replace the
    working directory or every run in it.

    Args:
        out: The ``--out`` path.
        marker: The file every output of this kind has (``meta.json``, ``sim_model.json``).
        what: The kind with its article, for the message (``a PreparedDataset``).

    Raises:
        UserError: If ``out`` is a file, or a non-empty directory without ``marker``.
    """
    path = Path(out)
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"--out {path}: is a file; {what} is written as a directory")
    if (path / marker).is_file() or not any(path.iterdir()):
        return
    raise UserError(
        f"--out {path}: exists and is not {what} (no {marker}); writing would replace the "
        "whole directory, so choose another --out or remove it first"
    )
