"""Parsing image references: ``[oci://]host[:port]/repo[:tag][@sha256:...]`` and ``ocifile://``.

Names follow the distribution reference grammar, bounded and strict, because a reference can
arrive in a request and becomes a URL path: anything that is not a plain repository path, tag
or ``sha256`` digest is refused before a byte goes out. Docker Hub short forms
(``org/repo:tag``, ``docker.io/…``) are normalised to ``registry-1.docker.io`` the way the
Docker CLI does (``library/`` for single-component names).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_REFERENCE = 512
DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]{1,63})*")
_PORT = re.compile(r"[0-9]{1,5}")


class InvalidReference(ValueError):
    """The string is not an image reference this agent accepts; the message says why."""


@dataclass(frozen=True)
class Reference:
    """A parsed registry image reference."""

    registry: str
    """``host`` or ``host:port`` (Docker Hub normalised to ``registry-1.docker.io``)."""
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def pinned(self) -> bool:
        """Whether the reference names a manifest digest (nothing can move under it)."""
        return bool(self.digest)

    @property
    def target(self) -> str:
        """What the manifest URL names: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def loopback(self) -> bool:
        """A registry on this machine: spoken to over plain HTTP, like Docker's localhost rule."""
        host = self.registry.rsplit(":", 1)[0] if not self.registry.startswith("[") else ""
        if self.registry.startswith("["):
            host = self.registry[1:].split("]", 1)[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def base_url(self) -> str:
        """``http(s)://registry`` (plain HTTP only for a loopback registry)."""
        return f"{'http' if self.loopback else 'https'}://{self.registry}"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _registry_part(first: str) -> bool:
    """Whether the first path component names a registry (Docker's rule)."""
    return "." in first or ":" in first or first == "localhost"


def _check_registry(registry: str) -> None:
    host, _, port = registry.rpartition(":") if registry.count(":") == 1 else (registry, "", "")
    if registry.startswith("["):
        inner, _, rest = registry[1:].partition("]")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError as err:
            raise InvalidReference(f"invalid registry host {registry!r}") from err
        if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
            raise InvalidReference(f"invalid registry port in {registry!r}")
        return
    if not _HOST.fullmatch(host) or (port and not _PORT.fullmatch(port)):
        raise InvalidReference(f"invalid registry host {registry!r}")


def parse(text: str) -> Reference:
    """Parse a registry reference (``oci://`` prefix allowed); raises :class:`InvalidReference`."""
    if len(text) > MAX_REFERENCE:
        raise InvalidReference(f"image reference longer than {MAX_REFERENCE} characters")
    rest = text.removeprefix("oci://")
    if not rest or any(c.isspace() for c in rest):
        raise InvalidReference("image reference is empty or contains whitespace")
    digest = ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise InvalidReference("digest must be sha256: followed by 64 lowercase hex digits")
    first, slash, remainder = rest.partition("/")
    if slash and _registry_part(first):
        registry, path = first, remainder
    else:
        registry, path = "docker.io", rest
    tag = ""
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise InvalidReference("invalid tag")
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    _check_registry(registry)
    components = path.split("/")
    if not path or not all(_COMPONENT.fullmatch(c) for c in components) or len(components) > 16:
        raise InvalidReference("invalid repository name (lowercase letters, digits, . _ - and /)")
    if not tag and not digest:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def ocifile_path(uri: str) -> str:
    """The local path of an ``ocifile://<path>`` URI."""
    return uri.removeprefix("ocifile://")
