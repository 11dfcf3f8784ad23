"""User-facing errors.

Anything a user can fix (a bad file, a wrong flag, a missing artifact) raises :class:`UserError`
with a one-line message that names the file, row or field, what was expected and what to do.
The CLI prints that line to stderr and exits with :data:`EXIT_USER_ERROR`, with no traceback.
Programming errors stay ordinary exceptions so that they keep their tracebacks.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
"""Exit code for user errors (bad input, bad flags); 1 is left for unexpected failures."""


class UserError(Exception):
    """An error the user can fix; its message is one line and is shown without a traceback."""

    def __init__(self, message: str) -> None:
        # One line only: the CLI prints it as is, and multi-line messages hide the cause.
        super().__init__(" ".join(message.split("\n")).strip())
