"""Failures that become the ``error`` text of a reply.

The orchestrator classifies replies by their text (docs/protocol.md §11), so every failure is raised
as an :class:`AgentError` whose message is already the exact catalogue text; handlers copy it
into the reply unchanged instead of formatting it at the edge.
"""

from __future__ import annotations

GALLERY_PREFIX = "installing backend from gallery: "
CANCELLED = "cancelled"


class AgentError(Exception):
    """A failure whose ``str()`` is the reply's ``error`` text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InstallError(AgentError):
    """A failure of the gallery/external install pipeline, reported with the gallery prefix."""

    def __init__(self, cause: str) -> None:
        super().__init__(GALLERY_PREFIX + cause)
        self.cause = cause


class Cancelled(Exception):
    """Raised inside worker threads when the op they serve was cancelled."""
