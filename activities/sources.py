"""Which model sources a worker may read: closed by default, opened prefix by prefix.

A load names where each file comes from, and whoever may start a workflow may name any URL
or path; the worker reads it with its own network position and file permissions. So, like
the node agent's gallery allow-list, nothing is read unless it lies under a prefix the
operator gave the worker (``--allow-model-source``):

- ``https://models.example/llm/`` admits that scheme, host and port, and paths under
  ``/llm/`` on a segment boundary (``/llm-private/`` is not under ``/llm/``);
- ``file:///srv/models/`` admits regular files whose *resolved* path (symbolic links
  followed) lies under ``/srv/models``, so a link cannot lead out.

URLs with user information, a fragment, or dot segments are refused outright.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import SOURCE_NOT_TRUSTED

SCHEMES = ("http", "https", "file")


class SourcePrefixError(ValueError):
    """A configured prefix that cannot be a trust boundary."""


@dataclass(frozen=True)
class Source:
    """A source the worker may read: a local ``path`` or a ``url``."""

    uri: str
    path: Path | None = None
    url: str = ""


def _segments_under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


def check_prefix(prefix: str) -> str:
    """``prefix`` normalised, or :class:`SourcePrefixError` saying why it cannot be one."""
    parts = urllib.parse.urlsplit(prefix)
    if parts.scheme not in SCHEMES:
        raise SourcePrefixError(f"{prefix!r}: a source prefix is an http(s):// or file:// URL")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise SourcePrefixError(f"{prefix!r}: a file prefix is file:///absolute/directory")
        return "file://" + posixpath.normpath(parts.path)
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise SourcePrefixError(f"{prefix!r}: an http(s) prefix is scheme://host[:port]/path")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.lower(), parts.path, "", ""))


class TrustedSources:
    """The prefixes a worker reads model files from (none: every source refused)."""

    def __init__(self, prefixes: tuple[str, ...] = ()) -> None:
        self.prefixes = tuple(check_prefix(p) for p in prefixes)

    def admit(self, uri: str) -> Source:
        """The source ``uri`` names, or ``SourceNotTrusted`` (never retried)."""
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme == "file":
            return self._admit_file(uri, parts)
        if parts.scheme in ("http", "https"):
            return self._admit_url(uri, parts)
        raise self._refused(uri, "only http(s):// and file:// sources are read")

    def _admit_file(self, uri: str, parts: urllib.parse.SplitResult) -> Source:
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise self._refused(uri, "a file source is file:///absolute/path")
        path = urllib.parse.unquote(parts.path)
        if "\x00" in path or not path.startswith("/"):
            raise self._refused(uri, "a file source is file:///absolute/path")
        resolved = os.path.realpath(path)
        for prefix in self.prefixes:
            if prefix.startswith("file://"):
                root = os.path.realpath(prefix.removeprefix("file://"))
                if _segments_under(resolved, root):
                    return Source(uri=uri, path=Path(resolved))
        raise self._refused(uri, "it is not under a file:// prefix this worker trusts")

    def _admit_url(self, uri: str, parts: urllib.parse.SplitResult) -> Source:
        if parts.username or parts.password or parts.fragment or not parts.hostname:
            raise self._refused(uri, "URLs with credentials or a fragment are not read")
        path = parts.path or "/"
        if any(segment in (".", "..") for segment in urllib.parse.unquote(path).split("/")):
            raise self._refused(uri, "URLs with . or .. segments are not read")
        origin = (parts.scheme, parts.netloc.lower())
        for prefix in self.prefixes:
            trusted = urllib.parse.urlsplit(prefix)
            if (trusted.scheme, trusted.netloc) == origin and _segments_under(path, trusted.path):
                return Source(uri=uri, url=uri)
        raise self._refused(uri, "it is not under an http(s) prefix this worker trusts")

    def _refused(self, uri: str, why: str) -> ApplicationError:
        shown = uri if len(uri) <= 200 else uri[:200] + "..."
        hint = (
            "the worker trusts no model source (start it with --allow-model-source PREFIX)"
            if not self.prefixes
            else f"trusted: {', '.join(self.prefixes)}"
        )
        return ApplicationError(
            f"model source {shown!r} refused: {why}; {hint}",
            type=SOURCE_NOT_TRUSTED,
            non_retryable=True,
        )
