"""A TCP proxy on loopback that counts the HTTP request bodies going through it.

The chaos tests and the staging benchmark put it between a worker and a node agent's
file-transfer port and give the load ``files_url`` = the proxy, to measure from outside the
worker how many bytes a staging really sent: a worker's own accounting cannot see what a
killed process had already written to its socket.

What is counted: the **body bytes of each request**, as read from the client (the worker)
before they are forwarded; request lines, headers and every response are left out of those
figures (their raw totals are kept apart in :attr:`ByteCounter.client_bytes` and
:attr:`ByteCounter.upstream_bytes`). A body is framed by its ``Content-Length``; a request
the parser cannot frame (``Transfer-Encoding``, a head over 64 KiB) makes the rest of that
connection count as that request's body, so an unusual client is over-counted, never under.
Bytes the proxy read but could not deliver (the node died meanwhile) are counted: the client
sent them, and a resume that sends them again counts them twice, which is the point.

The upstream is connected per client connection; when it cannot be reached the client's
connection is closed at once, as a refused connection would be, so a node that is down looks
down through the proxy too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

CHUNK = 256 * 1024
MAX_HEAD = 64 * 1024
STREAM_LIMIT = 1 << 20


@dataclass
class SeenRequest:
    """One request as the proxy saw it go by."""

    method: str
    target: str
    content_range: str | None
    declared: int | None
    """Its ``Content-Length``; None when it had none (no body, or one the proxy cannot frame)."""
    body: int = 0
    """Body bytes read from the client so far."""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class _RequestStream:
    """Follows one connection's request stream: heads parsed, bodies counted, nothing kept."""

    def __init__(self, seen: list[SeenRequest]) -> None:
        self._seen = seen
        self._head = bytearray()
        self._left = 0
        self._current: SeenRequest | None = None
        self._opaque = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._opaque:
                assert self._current is not None
                self._current.body += len(view)
                return
            if self._left:
                taken = min(self._left, len(view))
                assert self._current is not None
                self._current.body += taken
                self._left -= taken
                view = view[taken:]
                continue
            view = self._feed_head(view)

    def _feed_head(self, view: memoryview) -> memoryview:
        """Take bytes of a request head; what follows the head is returned."""
        before = len(self._head)
        self._head += view[: MAX_HEAD - before]
        end = self._head.find(b"\r\n\r\n", max(0, before - 3))
        if end < 0:
            if len(self._head) >= MAX_HEAD:
                self._begin(bytes(self._head), opaque=True)
            return view[len(view) :]
        rest = view[end + 4 - before :]
        self._begin(bytes(self._head[: end + 4]), opaque=False)
        return rest

    def _begin(self, head: bytes, *, opaque: bool) -> None:
        self._head.clear()
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("?", "?")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        length_text = headers.get("content-length", "")
        declared = int(length_text) if length_text.isdigit() else None
        request = SeenRequest(method, target, headers.get("content-range"), declared)
        self._seen.append(request)
        self._current = request
        if opaque or "transfer-encoding" in headers:
            self._opaque = True
            request.declared = None
        else:
            self._left = declared or 0


class ByteCounter:
    """``async with ByteCounter(host, port) as proxy:`` then give clients ``proxy.url``."""

    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.requests: list[SeenRequest] = []
        self.client_bytes = 0
        """Every byte read from clients: request heads and bodies."""
        self.upstream_bytes = 0
        """Every byte read from the upstream: responses."""
        self.connections = 0
        self.refused = 0
        """Client connections closed at once because the upstream could not be reached."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def body_bytes(self, method: str = "PUT", path_suffix: str = "") -> int:
        """Body bytes of the ``method`` requests whose path ends with ``path_suffix``."""
        return sum(
            r.body for r in self.requests if r.method == method and r.path.endswith(path_suffix)
        )

    def requests_of(self, method: str, path_suffix: str = "") -> list[SeenRequest]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def hold(self) -> None:
        """Stop reading from clients (a network that stalls): their bytes wait in the kernel's
        buffers, then their writes block; responses still flow."""
        self._flowing.clear()

    def release(self) -> None:
        """Read from clients again."""
        self._flowing.set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._on_client, self.host, 0, limit=STREAM_LIMIT)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    *self.upstream, limit=STREAM_LIMIT
                )
            except OSError:
                self.refused += 1
                return
            clean = False
            try:
                clean = await self._relay(reader, writer, up_reader, up_writer)
            finally:
                _end(up_writer, clean)
                _end(writer, clean)
        except asyncio.CancelledError:
            pass
        finally:
            _end(writer, clean=False)
            self._tasks.discard(task)

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """Relay both ways until both ends are done (True) or one breaks (False)."""
        stream = _RequestStream(self.requests)

        def from_client(data: bytes) -> None:
            self.client_bytes += len(data)
            stream.feed(data)

        def from_upstream(data: bytes) -> None:
            self.upstream_bytes += len(data)

        up = asyncio.create_task(_pump(reader, up_writer, from_client, self._flowing))
        down = asyncio.create_task(_pump(up_reader, writer, from_upstream))
        try:
            # A direction that ends cleanly (EOF, half-closed onwards) lets the other finish;
            # one that breaks (reset, a dead peer) ends the connection both ways.
            pending: set[asyncio.Task[bool]] = {up, down}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if not all(task.result() for task in done):
                    return False
            return True
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)


async def _pump(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    count: Callable[[bytes], None],
    flowing: asyncio.Event | None = None,
) -> bool:
    """Copy until EOF (then half-close ``sink``: True) or a broken connection (False); before
    each read, wait for ``flowing``."""
    try:
        while True:
            if flowing is not None:
                await flowing.wait()
            data = await source.read(CHUNK)
            if not data:
                break
            count(data)
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
        return True
    except (ConnectionError, OSError):
        return False


def _end(writer: asyncio.StreamWriter, clean: bool) -> None:
    """Close after a clean end (what was written still goes out), else drop at once."""
    transport = writer.transport
    if transport.is_closing():
        return
    if clean:
        transport.close()
    else:
        transport.abort()
