"""Registry credentials and the distribution token flow.

Credentials come from Docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``): ``auths.<registry>.auth`` (base64 ``user:password``) or
``username``/``password``. Credential helpers are external programs and are not run.

A registry answers ``401`` with a ``WWW-Authenticate`` challenge: ``Basic`` means send the
credentials; ``Bearer realm=...,service=...,scope=...`` means fetch a token from the realm
(with the credentials, if any, as Basic) and send it. The realm is chosen by the registry,
so credentials go to it only over HTTPS (or to a loopback realm), and its answer is bounded.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")
_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token used as a password) for one registry."""

    username: str
    password: str

    def basic(self) -> str:
        """The ``Authorization`` header value for Basic auth."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: dict[str, str]


def docker_config_path() -> Path:
    """Where Docker's client configuration lives for this process."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker/config.json"


def _keys_for(registry: str) -> tuple[str, ...]:
    if registry == "registry-1.docker.io":
        return (*_HUB_KEYS, registry)
    return (registry, f"https://{registry}", f"http://{registry}")


def credentials_for(registry: str, path: Path | None = None) -> Credentials | None:
    """Credentials for ``registry`` from Docker's ``config.json``, if it has any."""
    path = path or docker_config_path()
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_CONFIG_BYTES:
        log.warning("%s is larger than %d bytes; ignored", path, MAX_CONFIG_BYTES)
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("%s is not valid JSON; ignored", path)
        return None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in _keys_for(registry):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username"), entry.get("password")
        if isinstance(user, str) and isinstance(password, str) and user:
            return Credentials(user, password)
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                user, sep, password = base64.b64decode(encoded).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                log.warning("auth of %s in %s is not base64 user:password", key, path)
                continue
            if sep and user:
                return Credentials(user, password)
    return None


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="...",service="..."`` → :class:`Challenge`; None if unparseable."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    return Challenge(scheme.lower(), dict(_PARAM.findall(rest)))


def realm_allowed(realm: str, registry_loopback: bool) -> bool:
    """Tokens are fetched over HTTPS, or plain HTTP only from loopback for a loopback registry."""
    parsed = urllib.parse.urlsplit(realm)
    if parsed.scheme == "https" and parsed.hostname:
        return True
    loopback_host = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    return parsed.scheme == "http" and registry_loopback and loopback_host
