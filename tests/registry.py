"""Fixtures for a real OCI registry (Debian's ``docker-registry``) and pushing test images."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from durable_installs.devstack.registry import Pusher
from durable_installs.servers import REGISTRY_INSTALL_HINT as INSTALL_HINT
from durable_installs.servers import RunningRegistry, registry_binary, registry_server

SKIP_REASON = f"the distribution registry is not installed ({INSTALL_HINT}; CI installs it)"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry on a free loopback port with its own storage, for the test module."""
    if registry_binary() is None:
        pytest.skip(SKIP_REASON)
    with registry_server(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def pusher(registry: RunningRegistry) -> Iterator[Pusher]:
    """Pushes images to :func:`registry` with the distribution API."""
    client = Pusher(registry.url)
    yield client
    client.close()


class RegistryFront:
    """A loopback HTTP front for the real registry, for answers the registry itself never gives.

    ``mode="bearer"``: requires ``Authorization: Bearer <token>`` on ``/v2/`` and answers with
    a Bearer challenge pointing at its own ``/token`` endpoint, which issues the token only
    for Basic ``user:password`` when ``credentials`` are set; authorised requests are
    forwarded to the registry. ``mode="429"``: every request is rate limited.
    ``mode="hold"``: forwards without auth, but a blob's body stops after 512 bytes until
    :attr:`gate` is set (a download that is in progress for as long as a test needs).
    """

    TOKEN = "test-token-1234"

    def __init__(self, upstream: str, mode: str, credentials: tuple[str, str] | None = None):
        self.upstream, self.mode, self.credentials = upstream, mode, credentials
        self.token_requests: list[dict[str, str]] = []
        self.gate = threading.Event()
        self.blob_ranges: list[str | None] = []
        """The ``Range`` header of every blob request (None: from the start)."""
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                front.handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RegistryFront:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()

    def handle(self, request: Any) -> None:
        if self.mode == "429":
            request._send(429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', {"Retry-After": "30"})
            return
        path = request.path
        if self.mode == "hold":
            self._forward(request, path, hold="/blobs/" in path)
            return
        if path.startswith("/token"):
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
            self.token_requests.append(query)
            if self.credentials is not None:
                expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
                if request.headers.get("Authorization") != expected:
                    request._send(401, b"{}", {})
                    return
            request._send(200, json.dumps({"token": self.TOKEN}).encode(), {})
            return
        if request.headers.get("Authorization") != f"Bearer {self.TOKEN}":
            challenge = (
                f'Bearer realm="http://{self.host}/token",service="front",'
                'scope="repository:backends/echo:pull"'
            )
            request._send(401, b"{}", {"WWW-Authenticate": challenge})
            return
        self._forward(request, path)

    def _forward(self, request: Any, path: str, hold: bool = False) -> None:
        headers = {"Accept": request.headers.get("Accept", "*/*")}
        if "/blobs/" in path:
            self.blob_ranges.append(request.headers.get("Range"))
            if request.headers.get("Range"):
                headers["Range"] = request.headers["Range"]
                hold = False
        answer = httpx.get(self.upstream + path, headers=headers, follow_redirects=True)
        keep = ("Content-Type", "Docker-Content-Digest", "Content-Range")
        kept = {k: answer.headers[k] for k in keep if k in answer.headers}
        if not hold or answer.status_code not in (200, 206):
            request._send(answer.status_code, answer.content, kept)
            return
        body = answer.content
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body[:512])
        request.wfile.flush()
        self.gate.wait(60)
        with contextlib.suppress(OSError):
            request.wfile.write(body[512:])
