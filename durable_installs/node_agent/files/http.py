"""Just enough HTTP/1.1 over asyncio streams for the file-transfer API, every input bounded.

Why not a framework: the API is four routes, the project has no HTTP server dependency, and
the standard library's ``http.server`` is thread-per-request and reads bodies in one piece.
Here a body is never buffered: the handler reads it from the stream in chunks as it writes it
to disk. The request line and headers together are limited (431 beyond), as is their count;
a body needs ``Content-Length`` (chunked bodies get 411), so the server knows before reading
a byte whether the upload fits. Keep-alive works as in HTTP/1.1; any response sent before its
request's body was read closes the connection.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

MAX_HEADERS = 100
STREAM_LIMIT = 64 * 1024
"""asyncio's buffer limit for one connection: above any header limit the config allows."""

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_UNIQUE = ("content-length", "content-range", "authorization", "x-content-sha256", "host")
"""Headers a request may carry once: two different values would be read two ways."""


class HttpError(Exception):
    """A request that gets an error response; ``close`` ends the connection after it."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.close = close


@dataclass
class Request:
    """One request's head; the body, if any, is still in the stream."""

    method: str
    target: str
    version: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def path(self) -> str:
        """The path part of the target (query dropped), still percent-encoded."""
        return self.target.split("?", 1)[0]

    def content_length(self) -> int | None:
        """The body's declared length; None without one. Chunked bodies are refused (411)."""
        if self.header("transfer-encoding") is not None:
            raise HttpError(
                411, "Content-Length required; chunked bodies are not accepted", close=True
            )
        text = self.header("content-length")
        if text is None:
            return None
        if not text.isdigit() or len(text) > 19:
            raise HttpError(400, "invalid Content-Length", close=True)
        return int(text)


async def read_request(
    reader: asyncio.StreamReader, max_bytes: int, header_timeout: float
) -> Request | None:
    """The next request head, or None when the client closed between requests."""
    try:
        async with asyncio.timeout(header_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as err:
        if not err.partial.strip():
            return None
        raise HttpError(400, "incomplete request", close=True) from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request headers too large", close=True) from None
    except TimeoutError:
        raise HttpError(408, "request headers not received in time", close=True) from None
    if len(head) > max_bytes:
        raise HttpError(431, "request headers too large", close=True)
    return parse_head(head)


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (``head`` ends with the blank line)."""
    lines = head.decode("latin-1").split("\r\n")[:-2]
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        raise HttpError(400, "malformed request line", close=True)
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "only HTTP/1.1 and HTTP/1.0 are spoken here", close=True)
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many request headers", close=True)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise HttpError(400, "malformed header line", close=True)
        key, value = name.lower(), value.strip(" \t")
        if key in headers:
            if key in _UNIQUE:
                raise HttpError(400, f"header {name} given twice", close=True)
            value = f"{headers[key]}, {value}"
        headers[key] = value
    return Request(method, target, version, headers)


@dataclass
class Response:
    """A response with a small in-memory body (file bodies are streamed by their handler)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False

    @classmethod
    def text(cls, status: int, message: str, **kwargs: object) -> Response:
        response = cls(status, f"{message}\n".encode(), **kwargs)  # type: ignore[arg-type]
        response.headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def render_head(status: int, headers: dict[str, str], keep_alive: bool) -> bytes:
    """Status line and headers; ``Connection`` and ``Date`` are added here."""
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Date: {formatdate(usegmt=True)}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
