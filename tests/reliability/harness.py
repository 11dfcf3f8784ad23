"""The reliability suite's harness: run the CLI as a hostile user would, and classify the result.

Every case goes through :func:`run_hostile`, which runs ``rlrec ARGV`` in-process and sorts the
outcome into one of three kinds, counted for the summary that ``conftest.py`` prints at the end
of the run (``cases``, ``clear errors``, ``tracebacks``):

* ``clear_error``: a non-zero exit with exactly one ``rlrec: error: ...`` line on stderr;
* ``traceback``: an exception escaped ``main`` or stderr holds a traceback or several lines;
* ``ok``: exit 0 (a hostile input that the command handles correctly, e.g. a BOM it strips).

The assertions stay in the tests (:func:`assert_clear_error`); the harness only counts.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass

import pytest

from rlrec.cli import main

OUTCOMES = Counter[str]()
"""Outcome kind -> number of cases run in this pytest process."""


@dataclass(frozen=True)
class Outcome:
    """What one hostile case did.

    Attributes:
        code: The exit code (1 when an exception escaped).
        out: Captured stdout.
        err: Captured stderr (the traceback text when an exception escaped).
        kind: ``clear_error``, ``traceback`` or ``ok``.
    """

    code: int
    out: str
    err: str
    kind: str


def run_hostile(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """Run ``rlrec ARGV`` in-process, classify and count the outcome."""
    capsys.readouterr()  # drop anything printed before the case
    escaped = ""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # an escaped exception is what the suite looks for
        code, escaped = 1, traceback.format_exc()
    captured = capsys.readouterr()
    err = captured.err + escaped
    if escaped or "Traceback" in err:
        kind = "traceback"
    elif code == 0:
        kind = "ok"
    elif err.count("\n") == 1 and err.startswith("rlrec"):
        kind = "clear_error"
    else:
        kind = "traceback"  # a multi-line or unprefixed error is not a clear one
    OUTCOMES[kind] += 1
    return Outcome(code=code, out=captured.out, err=err, kind=kind)


def assert_clear_error(outcome: Outcome, *needles: str) -> None:
    """The case ended in one clear line (exit 2) that names every needle (case-insensitive)."""
    assert outcome.kind == "clear_error", outcome.err
    assert outcome.code == 2, outcome.err
    assert len(outcome.err) < 2000, f"error line of {len(outcome.err)} characters"
    low = outcome.err.lower()
    for needle in needles:
        assert needle.lower() in low, f"{needle!r} not in {outcome.err!r}"
