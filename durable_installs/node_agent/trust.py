"""What a node agent accepts from a request: its allow-lists and how URLs are matched.

Anything that arrives over NATS is untrusted (issue 11). The agent installs from its own
configured galleries; a request's ``backend_galleries`` and ``uri`` are used only when an
operator-configured allow-list admits them. Local paths and ``file://`` URLs from a request
are never admitted: a request must not be able to read or execute files already on the node.

Prefixes are compared on *parsed* URLs (scheme, host, port, then the path at a ``/``
boundary), never as raw strings: ``https://good.example`` does not admit
``https://good.example.evil.com/`` nor ``https://good.example@evil.com/``, and
``https://good.example/galleries`` does not admit ``https://good.example/galleries-evil``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from enum import Enum

from durable_installs.node_agent.errors import InstallError
from durable_installs.protocol.messages import GalleryConfig

GALLERIES_FLAG = "--allow-request-galleries"
URIS_FLAG = "--allow-request-uri"
MAX_SHOWN = 200
"""Request strings are echoed in refusals, cut to this many characters."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_OCI_SCHEMES = ("oci://", "ollama://")
_SHORT_DOCKER_REF = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9._-]+)+(:[\w.-]+|@sha256:\w+)$")
_REGISTRY_HOSTS = ("quay.io/", "ghcr.io/", "docker.io/")


class SourceKind(Enum):
    """What a request string points at, decided without touching the filesystem."""

    HTTP = "http"
    OCI = "oci"
    GITHUB = "github"
    LOCAL = "local"
    OTHER = "other"


GALLERY_KINDS = (SourceKind.HTTP, SourceKind.GITHUB)
"""What ``--allow-request-galleries`` can admit (the agent reads http(s) indexes)."""
URI_KINDS = (SourceKind.HTTP, SourceKind.OCI)
"""What ``--allow-request-uri`` can admit: archives over http(s), OCI references."""


class UntrustedSource(ValueError):
    """A string that cannot be matched safely (userinfo, dot segments, control characters)."""


@dataclass(frozen=True)
class Location:
    """A parsed source: scheme (or OCI/github kind), lower-cased host, port, path."""

    scheme: str
    host: str
    port: int
    path: str


def source_kind(text: str) -> SourceKind:
    """Classify ``text`` as a request sends it, the way :func:`node_agent.fetch.classify` does.

    Decided without touching the filesystem; prefixes are case-sensitive, as in the fetcher.
    """
    if text.startswith("ocifile://"):
        return SourceKind.LOCAL
    if text.startswith(_OCI_SCHEMES + _REGISTRY_HOSTS) or _SHORT_DOCKER_REF.match(text):
        return SourceKind.OCI
    if text.startswith("github:"):
        return SourceKind.GITHUB
    try:
        scheme = urllib.parse.urlsplit(text).scheme.lower()
    except ValueError:
        return SourceKind.OTHER
    if scheme in _DEFAULT_PORTS:
        return SourceKind.HTTP
    if scheme in ("", "file"):
        return SourceKind.LOCAL
    return SourceKind.OTHER


def _check_chars(text: str) -> None:
    if not text or any(c.isspace() or ord(c) < 0x20 or c in "\\\x7f" for c in text):
        raise UntrustedSource("contains whitespace, control characters or backslashes")


def _check_path(path: str) -> None:
    decoded = urllib.parse.unquote(path)
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise UntrustedSource("contains '.' or '..' path segments")
    if "\\" in decoded or "\x00" in decoded:
        raise UntrustedSource("contains an encoded backslash or NUL")


def _http_location(text: str) -> Location:
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as err:
        raise UntrustedSource("is not a valid URL") from err
    if "@" in parts.netloc:
        raise UntrustedSource("carries userinfo (user@host)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UntrustedSource("has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
    except ValueError as err:
        raise UntrustedSource("has an invalid port") from err
    _check_path(parts.path)
    return Location(parts.scheme.lower(), host.lower(), port, parts.path or "/")


def _ref_location(kind: str, text: str) -> Location:
    """OCI refs and ``github:`` sources: ``host/path`` compared like a URL without a port."""
    for scheme in (*_OCI_SCHEMES, "github:"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            kind = scheme.rstrip(":/")
            break
    if kind == "oci" and not text.startswith(_REGISTRY_HOSTS):
        first = text.split("/", 1)[0]
        if "." not in first and ":" not in first and first != "localhost":
            text = "docker.io/" + text  # a short Docker Hub ref, as the registry resolves it
    if kind == "github":
        return Location(kind, "", 0, "/" + _checked_ref_path(text))
    host, _, path = text.partition("/")
    if "@" in host or not host:
        raise UntrustedSource("has no registry host or carries userinfo")
    return Location(kind, host.lower(), 0, "/" + _checked_ref_path(path))


def _checked_ref_path(path: str) -> str:
    _check_path(path)
    return path


def location(text: str) -> Location:
    """Parse a request source or an allow-list prefix; raises :class:`UntrustedSource`."""
    _check_chars(text)
    kind = source_kind(text)
    if kind is SourceKind.HTTP:
        return _http_location(text)
    if kind in (SourceKind.OCI, SourceKind.GITHUB):
        return _ref_location(kind.value, text)
    raise UntrustedSource("is not an http(s) URL, an OCI reference or a github: source")


def admits(prefix: Location, candidate: Location) -> bool:
    """Whether ``candidate`` lies under ``prefix``: same origin, path at a ``/`` boundary.

    OCI references also end a repository at ``:`` (tag) and ``@`` (digest).
    """
    if (prefix.scheme, prefix.host, prefix.port) != (
        candidate.scheme,
        candidate.host,
        candidate.port,
    ):
        return False
    base, path = prefix.path, candidate.path
    if base in ("", "/") or base.endswith("/"):
        return path.startswith(base or "/")
    boundaries = "/:@" if prefix.scheme in ("oci", "ollama") else "/"
    return path == base or (path.startswith(base) and path[len(base)] in boundaries)


def parse_prefixes(
    flag: str, texts: tuple[str, ...], kinds: tuple[SourceKind, ...]
) -> tuple[Location, ...]:
    """Validate an allow-list; raises ValueError naming ``flag`` and the bad entry."""
    parsed = []
    for text in texts:
        kind = source_kind(text)
        if kind is SourceKind.LOCAL:
            raise ValueError(
                f"{flag} {text!r}: local paths and file:// URLs are never accepted from requests"
            )
        if kind not in kinds:
            allowed = ", ".join(k.value for k in kinds)
            raise ValueError(f"{flag} {text!r}: expected a prefix of kind {allowed}")
        try:
            location_ = location(text)
        except UntrustedSource as err:
            raise ValueError(f"{flag} {text!r}: {err}") from err
        if kind is SourceKind.HTTP and ("?" in text or "#" in text):
            raise ValueError(f"{flag} {text!r}: a prefix has no query or fragment")
        parsed.append(location_)
    return tuple(parsed)


def shown(text: str) -> str:
    """A request string as it appears in a refusal: bounded, never fetched content."""
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def suggestion(text: str) -> str:
    """The prefix an operator would allow for ``text``: its directory, or the ref's repository."""
    kind = source_kind(text)
    if kind is SourceKind.HTTP:
        try:
            parts = urllib.parse.urlsplit(text)
        except ValueError:
            return shown(text)
        directory = parts.path.rsplit("/", 1)[0] + "/"
        return shown(urllib.parse.urlunsplit((parts.scheme, parts.netloc, directory, "", "")))
    if kind is SourceKind.OCI:
        return shown(re.split(r"[:@](?=[^/]*$)", text, maxsplit=1)[0])
    return shown(text)


@dataclass(frozen=True)
class Trust:
    """The agent's allow-lists, checked against every request before anything is fetched."""

    own_galleries: tuple[GalleryConfig, ...] = ()
    gallery_prefixes: tuple[Location, ...] = ()
    uri_prefixes: tuple[Location, ...] = ()

    @classmethod
    def build(
        cls,
        own_galleries: tuple[GalleryConfig, ...],
        gallery_prefixes: tuple[str, ...],
        uri_prefixes: tuple[str, ...],
    ) -> Trust:
        """Parse the allow-lists; raises ValueError naming the flag of a bad entry."""
        return cls(
            own_galleries,
            parse_prefixes(GALLERIES_FLAG, gallery_prefixes, GALLERY_KINDS),
            parse_prefixes(URIS_FLAG, uri_prefixes, URI_KINDS),
        )

    def is_own(self, gallery: GalleryConfig) -> bool:
        """A gallery with the url, mirrors and verification of one the agent was started with."""
        return any(
            (g.url, g.mirrors, g.verification)
            == (gallery.url, gallery.mirrors, gallery.verification)
            for g in self.own_galleries
        )

    def check_gallery(self, gallery: GalleryConfig) -> None:
        """Refuse a request gallery unless it is the agent's own or every source is allowed."""
        if self.is_own(gallery):
            return
        for source in (gallery.url, *gallery.mirrors):
            reason = _refusal(self.gallery_prefixes, GALLERY_KINDS, GALLERIES_FLAG, source)
            if reason is not None:
                raise InstallError(
                    f"request galleries are not allowed on this node: {shown(source)} ({reason})"
                )

    def check_uri(self, uri: str) -> None:
        """Refuse a request ``uri`` (external install) unless the URI allow-list admits it."""
        reason = _refusal(self.uri_prefixes, URI_KINDS, URIS_FLAG, uri)
        if reason is not None:
            raise InstallError(f"request uri is not allowed on this node: {shown(uri)} ({reason})")

    def check_redirect(self, target: str) -> None:
        """A download of a request ``uri`` follows a redirect only where the allow-list admits."""
        reason = _refusal(self.uri_prefixes, URI_KINDS, URIS_FLAG, target)
        if reason is not None:
            raise InstallError(
                f"request uri redirected to a location not allowed on this node: "
                f"{shown(target)} ({reason})"
            )

    def check_entry_sources(self, gallery: GalleryConfig, sources: tuple[str, ...]) -> None:
        """A request gallery's index may not point at files on the node."""
        if self.is_own(gallery):
            return
        for source in sources:
            if source_kind(source) is SourceKind.LOCAL:
                raise InstallError(
                    f"gallery {shown(gallery.url)} names a local artifact source; local paths "
                    "and file:// URLs are allowed only in the agent's own galleries "
                    "(not allowed on this node)"
                )


def _refusal(
    prefixes: tuple[Location, ...], kinds: tuple[SourceKind, ...], flag: str, text: str
) -> str | None:
    """Why ``text`` from a request is refused (what would allow it), or None if admitted."""
    kind = source_kind(text)
    if kind is SourceKind.LOCAL:
        return "local paths and file:// URLs from a request are never allowed"
    if kind not in kinds:
        accepted = " or ".join(k.value for k in kinds)
        return f"only {accepted} sources can be allowed with {flag}"
    try:
        candidate = location(text)
    except UntrustedSource as err:
        return f"it {err}, which is never allowed"
    if any(admits(prefix, candidate) for prefix in prefixes):
        return None
    return f"start the agent with {flag} {suggestion(text)} to allow"
