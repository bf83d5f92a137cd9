"""The node's file-transfer HTTP server: LocalAI's ``/v1/files/<key>`` API, resumable and checked.

A LocalAI controller (and our staging activity) stages model files to a worker with it:
``HEAD`` says whether the file is there already (``X-Content-SHA256``) or how much of a
partial upload arrived (``X-File-Size``, ``X-Target-SHA256``); ``PUT`` with ``Content-Range:
bytes <start>-<end>/<total>`` continues exactly at that size (else 416) and, when the last
byte has arrived, the whole file's ``X-Content-SHA256`` is checked before the file is moved
into place (a mismatch: 400 and nothing in place, as LocalAI answers). docs/protocol.md
("File transfer") has every header and status.

Where we are stricter than LocalAI, each for a reason given there: a bearer token is
required (LocalAI serves everyone when its token is empty); ``X-Content-SHA256`` is required
on every PUT; an upload of a key already in progress gets 409 (LocalAI would interleave the
two into one file); size, free space, concurrency, header size and idle time are bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from durable_installs.node_agent.files.config import FilesConfig
from durable_installs.node_agent.files.http import (
    STREAM_LIMIT,
    HttpError,
    Request,
    Response,
    read_request,
    render_head,
)
from durable_installs.node_agent.files.keys import (
    KeyRefused,
    Roots,
    Target,
    check_writable,
    decode_key,
    readable_path,
    route,
)
from durable_installs.node_agent.files.store import FileStore, Partial, sha256_file, space_of

log = logging.getLogger(__name__)

DELETE_WAIT_SECONDS = 5.0
"""How long a DELETE waits for an upload of the same key to notice its client has gone."""

T = TypeVar("T")

FILES_PREFIX = "/v1/files"
RETRY_AFTER_SECONDS = 5
READ_CHUNK = 256 * 1024
WRITE_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19})$")


class FilesStartupError(RuntimeError):
    """The server could not start (its address is taken, a directory cannot be created)."""


@dataclass(frozen=True)
class ContentRange:
    """``bytes <start>-<end>/<total>``, end inclusive."""

    start: int
    end: int
    total: int


def parse_content_range(text: str) -> ContentRange:
    """Parse a request's ``Content-Range`` (RFC 9110 §14.4); 400 when it is not one."""
    match = _CONTENT_RANGE.match(text.strip())
    if match is None:
        raise HttpError(400, "invalid Content-Range: expected bytes <start>-<end>/<total>")
    start, end, total = (int(group) for group in match.groups())
    if end < start or total < end + 1:
        raise HttpError(400, "invalid Content-Range: the range does not fit the total")
    return ContentRange(start, end, total)


@dataclass
class Exchange:
    """One request on a connection, and what is left of its body."""

    request: Request
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body_left: int = 0
    cut: bool = False
    """The client went away in the middle of its body: nothing is answered."""
    keep_alive: bool = False
    """For handlers that answer themselves (None returned): whether the connection goes on."""


def _open_for_reading(path: Path) -> BinaryIO:
    return path.open("rb")


def _open_for_appending(path: Path) -> BinaryIO:
    return path.open("ab")


def _append(handle: BinaryIO, block: bytes, hasher: Any) -> None:
    handle.write(block)
    if hasher is not None:
        hasher.update(block)


class FileServer:
    """Serves one node's staging, models and data directories over HTTP (start, then stop)."""

    def __init__(
        self,
        config: FilesConfig,
        roots: Roots,
        listen: tuple[str, int],
        advertise_host: str,
    ) -> None:
        self.config = config
        self.roots = roots
        self.store = FileStore(roots)
        self._listen = listen
        self._advertise_host = advertise_host
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._uploading: set[str] = set()
        self._hashing = asyncio.Semaphore(2)
        self._disk = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_uploads + 2, thread_name_prefix="files-disk"
        )
        self.bound: tuple[str, int] = listen
        """The address actually listened on (the port is known after :meth:`start`)."""

    @property
    def advertised_address(self) -> str:
        """``host:port`` a controller on another machine reaches the server at."""
        host, port = self.bound
        if host in ("0.0.0.0", "::", ""):
            host = self._advertise_host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        """Create the directories, drop stale partials, listen. Raises FilesStartupError."""
        host, port = self._listen
        try:
            await self._on_disk(self.store.prepare, self.config.partial_max_age)
            self._server = await asyncio.start_server(
                self._on_connection, host, port, limit=STREAM_LIMIT, reuse_address=True
            )
        except OSError as err:
            raise FilesStartupError(
                f"file transfer: cannot listen on {host}:{port} or prepare "
                f"{self.roots.models}: {err.strerror or err}"
            ) from err
        name = self._server.sockets[0].getsockname()
        self.bound = (str(name[0]), int(name[1]))
        log.info(
            "file transfer listening on %s:%d (advertised %s), models in %s",
            *self.bound,
            self.advertised_address,
            self.roots.models,
        )

    async def stop(self) -> None:
        """Stop listening and cut every connection; partial uploads stay for a resume."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._disk.shutdown(wait=True)

    async def _on_disk(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking file work on the server's own threads (bounded, shut down on stop)."""
        return await asyncio.wrap_future(self._disk.submit(function, *args))

    # --- connections ----------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > self.config.max_connections:
                log.warning("file transfer: too many connections; closing a new one")
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # stop() cancels us; asyncio's stream callback must not see a cancelled task
        except Exception:
            log.exception("file transfer: a connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests of one connection, one after the other, while it is kept alive."""
        config = self.config
        while True:
            try:
                request = await read_request(reader, config.max_header_bytes, config.header_timeout)
            except HttpError as err:
                refusal = Response.text(err.status, err.message, headers=err.headers)
                await self._send(writer, refusal, keep_alive=False, head=False)
                return
            if request is None:
                return
            exchange = Exchange(request, reader, writer)
            response = await self._handle(exchange)
            if exchange.cut:
                return
            if response is None:
                if not exchange.keep_alive:
                    return
                continue
            keep = request.keep_alive and exchange.body_left == 0 and not response.close
            await self._send(writer, response, keep, head=request.method == "HEAD")
            if not keep:
                return

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head: bool
    ) -> None:
        headers = dict(response.headers)
        headers.setdefault("Content-Length", str(len(response.body)))
        writer.write(render_head(response.status, headers, keep_alive))
        if not head:
            writer.write(response.body)
        async with asyncio.timeout(self.config.idle_timeout):
            await writer.drain()

    def _authorised(self, request: Request) -> bool:
        """``Authorization: Bearer <token>``, compared in constant time (as LocalAI)."""
        header = request.header("authorization") or ""
        if not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), self.config.token.encode())

    async def _handle(self, exchange: Exchange) -> Response | None:
        request = exchange.request
        try:
            exchange.body_left = request.content_length() or 0
            path = request.path
            if path == "/healthz":
                if request.method not in ("GET", "HEAD"):
                    return Response.text(405, "method not allowed", headers={"Allow": "GET, HEAD"})
                return Response(200, b"ok", headers={"Content-Type": "text/plain; charset=utf-8"})
            if path != FILES_PREFIX and not path.startswith(f"{FILES_PREFIX}/"):
                return Response.text(404, "not found")
            if not self._authorised(request):
                return Response.text(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
            if request.method not in ("HEAD", "PUT", "GET", "DELETE"):
                return Response.text(
                    405, "method not allowed", headers={"Allow": "GET, HEAD, PUT, DELETE"}
                )
            key = decode_key(path.removeprefix(FILES_PREFIX).removeprefix("/"))
            target = route(key, self.roots)
            if request.method == "HEAD":
                return await self._head(target)
            if request.method == "GET":
                return await self._get(exchange, target)
            if request.method == "DELETE":
                return await self._delete(target)
            return await self._put(exchange, target)
        except KeyRefused as err:
            return Response.text(400, str(err))
        except HttpError as err:
            return Response.text(err.status, err.message, headers=err.headers, close=err.close)
        except OSError as err:  # the disk refused something outside a body (permissions, I/O)
            log.error("file transfer: %s %s failed: %s", request.method, request.path[:200], err)
            return Response.text(
                500, f"file system error: {err.strerror or 'I/O error'}", close=True
            )

    # --- HEAD and GET ---------------------------------------------------------------------

    async def _head(self, target: Target) -> Response:
        real = readable_path(target)
        headers = {"X-Local-Path": str(target.path), "Accept-Ranges": "bytes"}
        partial = await self._on_disk(self.store.read_partial, target)
        if partial is not None:
            headers |= {
                "X-File-Size": str(partial.size),
                "Content-Length": str(partial.size),
                "X-Target-SHA256": partial.sha256,
            }
            return Response(200, headers=headers)
        try:
            info = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return Response.text(404, "not found")
        if stat.S_ISDIR(info.st_mode):
            return Response.text(400, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            return Response.text(400, "not a regular file")
        headers |= {"X-File-Size": str(info.st_size), "Content-Length": str(info.st_size)}
        try:
            async with self._hashing:
                headers["X-Content-SHA256"] = await self._on_disk(self.store.committed_sha256, real)
        except OSError as err:
            log.warning("file transfer: hashing %s for HEAD failed: %s", real, err)
        return Response(200, headers=headers)

    async def _get(self, exchange: Exchange, target: Target) -> Response | None:
        real = readable_path(target)
        try:
            handle = await self._on_disk(_open_for_reading, real)
        except (FileNotFoundError, NotADirectoryError):
            return Response.text(404, "file not found")
        except IsADirectoryError:
            return Response.text(400, "is a directory")
        try:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return Response.text(400, "not a regular file")
            keep = exchange.request.keep_alive and exchange.body_left == 0
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(info.st_size),
            }
            exchange.writer.write(render_head(200, headers, keep))
            remaining = info.st_size
            while remaining > 0:
                chunk = await self._on_disk(handle.read, min(WRITE_CHUNK, remaining))
                if not chunk:
                    break  # the file shrank: the client sees a short body and a closed connection
                exchange.writer.write(chunk)
                async with asyncio.timeout(self.config.idle_timeout):
                    await exchange.writer.drain()
                remaining -= len(chunk)
            exchange.keep_alive = keep and remaining == 0
            return None
        finally:
            handle.close()

    # --- DELETE (extension) -----------------------------------------------------------------

    async def _delete(self, target: Target) -> Response:
        """Drop the key's partial upload: what a cancelled staging leaves behind.

        An extension (LocalAI has no DELETE): committed files are never removed this way,
        only bytes of an upload that was never finished. An upload of the key still being
        received (the cancelled client's connection not yet seen closed) is waited for
        briefly; 409 if it goes on.
        """
        lock = str(target.path)
        for _ in range(int(DELETE_WAIT_SECONDS / 0.05)):
            if lock not in self._uploading:
                break
            await asyncio.sleep(0.05)
        else:
            raise HttpError(409, "an upload of this key is in progress")
        partial = await self._on_disk(self.store.read_partial, target)
        if partial is None:
            return Response.text(404, "no partial upload")
        await self._on_disk(self.store.discard, target)
        log.info("file transfer: partial upload of %r dropped on request", target.relative)
        return Response(204)

    # --- PUT ------------------------------------------------------------------------------

    async def _put(self, exchange: Exchange, target: Target) -> Response | None:
        request = exchange.request
        check_writable(target)
        length = request.content_length()
        if length is None:
            raise HttpError(411, "Content-Length required", close=True)
        digest = (request.header("x-content-sha256") or "").strip()
        if not _SHA256.match(digest):
            raise HttpError(400, "X-Content-SHA256 (the whole file's sha256, 64 hex) is required")
        digest = digest.lower()
        header = request.header("content-range")
        ranged = header is not None
        span = parse_content_range(header) if header is not None else None
        if span is None:
            span = ContentRange(0, length - 1, length)
        elif length != span.end - span.start + 1:
            raise HttpError(400, "Content-Length does not match the Content-Range")
        limit = self.config.max_file_bytes
        if span.total > limit:
            raise HttpError(
                413, f"file too large: {span.total} bytes; this node takes at most {limit}"
            )
        expectation = (request.header("expect") or "").lower()
        if expectation and expectation != "100-continue":
            raise HttpError(417, "only Expect: 100-continue is understood", close=True)

        lock = str(target.path)
        if lock in self._uploading:
            raise HttpError(
                409,
                "another upload of this key is in progress; retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if len(self._uploading) >= self.config.max_uploads:
            raise HttpError(
                503,
                f"this node receives {self.config.max_uploads} uploads at once; retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._uploading.add(lock)
        try:
            return await self._receive_upload(exchange, target, digest, span, ranged)
        finally:
            self._uploading.discard(lock)

    async def _resume_point(
        self, target: Target, digest: str, span: ContentRange, ranged: bool
    ) -> int:
        """Bytes of the file already here for this upload; raises the 409/416 of LocalAI."""
        partial: Partial | None = await self._on_disk(self.store.read_partial, target)
        if partial is not None and not ranged:
            partial = None  # a whole-file PUT starts over, as on LocalAI
        elif partial is not None and (partial.sha256 != digest or partial.total != span.total):
            await self._on_disk(self.store.discard, target)
            if span.start > 0:
                raise HttpError(
                    409,
                    "X-Content-SHA256 or size differs from the upload in progress; "
                    "restart from byte 0",
                )
            partial = None
        elif partial is not None and span.start == 0 and partial.size >= partial.total:
            partial = None  # complete but never committed (a crash): start over
        committed = partial.size if partial is not None else 0
        if span.start != committed:
            raise HttpError(
                416,
                f"Content-Range start {span.start} does not match the committed size {committed}",
                headers={"Content-Range": f"bytes */{span.total}", "X-File-Size": str(committed)},
            )
        return committed

    async def _receive_upload(
        self, exchange: Exchange, target: Target, digest: str, span: ContentRange, ranged: bool
    ) -> Response | None:
        committed = await self._resume_point(target, digest, span, ranged)
        needed = span.total - committed
        space = await self._on_disk(space_of, target.root)
        reserve = self.config.reserve_bytes
        if space.available - needed < reserve:
            raise HttpError(
                507,
                f"not enough space: the upload needs {needed} bytes, {space.available} are "
                f"free and this node keeps {reserve} free",
            )
        if exchange.request.header("expect"):
            exchange.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        data = await self._on_disk(self.store.begin, target, digest, span.total, committed == 0)
        log.info(
            "file transfer: receiving %r (%d-%d/%d)",
            target.relative,
            span.start,
            span.end,
            span.total,
        )
        hasher = hashlib.sha256() if span.start == 0 else None
        try:
            outcome = await self._receive_body(exchange, data, hasher)
        except OSError as err:  # the disk refused (full, quota, I/O): bytes so far stay
            log.error("file transfer: writing %r failed: %s", target.relative, err)
            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            return Response.text(
                507 if full else 500,
                f"writing the file failed: {err.strerror or 'I/O error'}",
                close=True,
            )
        if outcome == "cut":
            exchange.cut = True
            log.info("file transfer: %r cut by the client; kept for a resume", target.relative)
            return None
        if outcome == "idle":
            log.info("file transfer: %r stalled; cut, kept for a resume", target.relative)
            return Response.text(
                408, "no body bytes received in time; resume with HEAD", close=True
            )
        size = span.end + 1
        if size < span.total:
            return Response(308, headers={"Range": f"bytes=0-{size - 1}", "X-File-Size": str(size)})
        actual = hasher.hexdigest() if hasher is not None else await self._whole_sha256(data)
        if actual != digest:
            await self._on_disk(self.store.discard, target)
            log.warning("file transfer: %r failed its sha256 check; dropped", target.relative)
            return Response.text(400, f"sha256 mismatch: expected {digest} got {actual}")
        try:
            path = await self._on_disk(self.store.commit, target, digest)
        except OSError as err:
            await self._on_disk(self.store.discard, target)
            log.error("file transfer: committing %r failed: %s", target.relative, err)
            return Response.text(500, f"committing the file failed: {err.strerror or 'I/O error'}")
        log.info("file transfer: %r in place (%d bytes)", target.relative, span.total)
        body = json.dumps({"local_path": str(path)}) + "\n"
        return Response(200, body.encode(), headers={"Content-Type": "application/json"})

    async def _whole_sha256(self, data: Path) -> str:
        async with self._hashing:
            return await self._on_disk(sha256_file, data)

    async def _receive_body(self, exchange: Exchange, data: Path, hasher: Any) -> str:
        """Append the body to ``data``: ``done``, ``cut`` (client gone) or ``idle`` (stalled).

        Whatever arrived is on disk when this returns, also when the task is cancelled.
        """
        handle = await self._on_disk(_open_for_appending, data)
        buffer = bytearray()
        writing: concurrent.futures.Future[None] | None = None
        outcome = "done"
        try:
            while exchange.body_left > 0:
                try:
                    async with asyncio.timeout(self.config.idle_timeout):
                        chunk = await exchange.reader.read(min(exchange.body_left, READ_CHUNK))
                except TimeoutError:
                    outcome = "idle"
                    break
                except ConnectionError:
                    outcome = "cut"
                    break
                if not chunk:
                    outcome = "cut"
                    break
                exchange.body_left -= len(chunk)
                buffer += chunk
                if len(buffer) >= WRITE_CHUNK:
                    block = bytes(buffer)
                    buffer.clear()
                    writing = self._disk.submit(_append, handle, block, hasher)
                    await asyncio.wrap_future(writing)
                    writing = None
        finally:
            if writing is not None:  # cancelled while a block was being written: let it land
                with contextlib.suppress(Exception):
                    writing.result()
            if buffer:
                _append(handle, bytes(buffer), hasher)
            handle.close()
        return outcome
