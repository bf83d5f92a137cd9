"""The errors backendctl shows as one line, and the text hygiene of everything it prints."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
"""The install or rollout itself failed (or an unexpected error)."""
EXIT_USAGE = 2
"""The user asked for something wrong or unreachable; the message says what to do."""
EXIT_INTERRUPTED = 130
"""Ctrl-C, as shells report SIGINT."""


class UserError(Exception):
    """A mistake or a missing prerequisite the user can fix; printed as one line, exit 2."""


def printable(text: str) -> str:
    """``text`` with control characters (escape sequences, newlines) shown as ``?``.

    Node replies, gallery entries and error texts are not trusted: printed raw, an escape
    sequence could rewrite the terminal. Everything backendctl prints from outside goes
    through here.
    """
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def one_line(text: str, limit: int = 300) -> str:
    """The first line of ``text``, printable and bounded, for an error message."""
    first = (text.strip().splitlines() or [""])[0]
    first = printable(first)
    return first if len(first) <= limit else first[: limit - 1] + "…"
