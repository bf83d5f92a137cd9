"""What the node's file-transfer server is configured with, and where it listens by default.

Closed by default: without a token the server does not start at all (nothing listens, the
``files.space`` reply carries no address). LocalAI's worker serves unauthenticated when its
registration token is empty; ours never does, because the server writes into the directory
backends load their models from.

The default address follows LocalAI's worker: the port just below the first gRPC backend port
(``base - 1``; gRPC ports grow upward from the base), on the address backends bind to. Limits
default to LocalAI's where it has one (50 GiB per upload, 30 s to send the request headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3
MAX_TOKEN_LENGTH = 1024
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be the bearer token, or None when it can."""
    if len(token) > MAX_TOKEN_LENGTH:
        return f"it is {len(token)} characters long; the limit is {MAX_TOKEN_LENGTH}"
    if not _TOKEN.match(token):
        return "it must be printable ASCII without spaces"
    return None


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[V6]:PORT`` → (host, port); port 0 picks a free one."""
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:\s]*)):(\d{1,5})", text.strip())
    if match is None:
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = match.group(1) or match.group(2) or "0.0.0.0"
    port = int(match.group(3))
    if port > 65535:
        raise ValueError(f"port {port} is out of range in {text!r}")
    return host, port


@dataclass(frozen=True)
class FilesConfig:
    """The file-transfer server of one node agent.

    ``models_dir`` None means ``<backends dir>/../models`` (LocalAI's layout: backends and
    models side by side); staging and data live beside it (``../staging``, ``../data``), as on
    a LocalAI worker. ``address`` "" means ``<bind host>:<first gRPC port - 1>``.
    """

    token: str = field(default="", repr=False)
    address: str = ""
    models_dir: Path | None = None
    max_file_bytes: int = 50 * GIB
    """Largest single file accepted (LocalAI's default upload limit)."""
    reserve_bytes: int = 1 * GIB
    """Free space an upload must leave on the target filesystem."""
    max_uploads: int = 4
    """Uploads received at once; more get 503 with Retry-After."""
    max_connections: int = 64
    """Open connections at once; more are closed at once."""
    max_header_bytes: int = 16 * 1024
    """Request line plus headers; more gets 431."""
    header_timeout: float = 30.0
    """Seconds a client has to send its request line and headers (LocalAI: 30 s); also how
    long an idle keep-alive connection is kept."""
    idle_timeout: float = 60.0
    """Seconds without a byte of body before an upload is cut (its bytes stay for a resume),
    or without progress sending a download."""
    partial_max_age: float = 24 * 3600.0
    """Partials not written to for this long are removed when the server starts."""

    @property
    def enabled(self) -> bool:
        """Whether the server starts: only with a token."""
        return bool(self.token)

    def listen_address(self, bind_host: str, port_range: tuple[int, int]) -> tuple[str, int]:
        """Where to listen: ``address``, else LocalAI's ``base - 1`` next to the gRPC ports."""
        if self.address:
            return parse_address(self.address)
        return bind_host, max(port_range[0] - 1, 0)

    def problems(self) -> list[str]:
        """What is wrong with this configuration (empty when it can be used)."""
        found = []
        if self.token:
            problem = token_problem(self.token)
            if problem:
                found.append(f"--files-token: {problem}")
        if self.address:
            try:
                parse_address(self.address)
            except ValueError as err:
                found.append(f"--files-address: {err}")
        for name, value in (
            ("max_file_bytes", self.max_file_bytes),
            ("max_uploads", self.max_uploads),
            ("max_connections", self.max_connections),
            ("max_header_bytes", self.max_header_bytes),
        ):
            if value < 1:
                found.append(f"{name} must be at least 1")
        if self.max_header_bytes > 60 * 1024:
            found.append("max_header_bytes must be at most 60 KiB")
        if self.reserve_bytes < 0:
            found.append("reserve_bytes must not be negative")
        for name, seconds in (
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("partial_max_age", self.partial_max_age),
        ):
            if not seconds > 0:
                found.append(f"{name} must be more than 0 seconds")
        return found
