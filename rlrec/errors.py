"""User-facing errors.

Anything a user can fix (a bad file, a wrong flag, a missing artifact) raises :class:`UserError`
with a one-line message that names the file, row or field, what was expected and what to do.
The CLI prints that line to stderr and exits with :data:`EXIT_USER_ERROR`, with no traceback.
Programming errors stay ordinary exceptions so that they keep their tracebacks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXIT_USER_ERROR", "MAX_MESSAGE_CHARS", "QUOTE_LIMIT", "UserError", "quote_value"]

EXIT_USER_ERROR = 2
"""Exit code for user errors (bad input, bad flags); 1 is left for unexpected failures."""


QUOTE_LIMIT = 80
"""At most this many characters of an input value are quoted in a message."""

MAX_MESSAGE_CHARS = 1000
"""A longer message is cut in its middle: a safety net for a value quoted without
:func:`quote_value` (a 30 MB CSV field must not become a 30 MB error line)."""


def quote_value(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters with an ellipsis and the full length.

    Every message that quotes a value read from a user's file goes through this, so that a
    huge field is shown as its start, not repeated whole.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[: limit - 1]}… ({size:,} characters)"


class UserError(Exception):
    """An error the user can fix; its message is one line and is shown without a traceback."""

    def __init__(self, message: str) -> None:
        # One line only: the CLI prints it as is, and multi-line messages hide the cause.
        text = " ".join(message.splitlines()).strip()
        if len(text) > MAX_MESSAGE_CHARS:
            half = MAX_MESSAGE_CHARS // 2
            text = f"{text[:half]} … {text[-half:]}"
        super().__init__(text)
