"""Prints the reliability suite's counts at the end of the run."""

from __future__ import annotations

import pytest

from tests.reliability.harness import OUTCOMES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: cases run, clear errors, tracebacks (the target is 0), handled inputs."""
    total = sum(OUTCOMES.values())
    if total:
        terminalreporter.write_line(
            f"reliability: {total} hostile cases, {OUTCOMES['clear_error']} clear errors, "
            f"{OUTCOMES['traceback']} tracebacks, {OUTCOMES['ok']} handled"
        )
