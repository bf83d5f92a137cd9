"""A small HTTP file server with ``Range`` resumes: the demo gallery's and the agent tests'.

Node agents download backend archives over HTTP and resume a dropped download with
``Range: bytes=N-``. The demo stack needs that served slowly enough to watch progress; the
node agent tests need it held or cut mid-body to provoke failures. Both are this server with
a different body writer.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import Any


class _CountingWriter(BufferedIOBase):
    """Wraps a handler's ``wfile`` and counts the body bytes handed to the socket."""

    def __init__(self, inner: BufferedIOBase, count: Callable[[int], None]) -> None:
        self._inner = inner
        self._count = count

    def write(self, data: Any) -> int:
        written = self._inner.write(data)
        self._count(written)
        return written

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        self._inner.close()

    @property
    def closed(self) -> bool:
        return self._inner.closed


class RangeFileServer:
    """Serves bytes by URL path on 127.0.0.1 (``port`` 0 picks a free one).

    Subclasses say what a path serves (:meth:`find`) and may shape how the body is written
    (:meth:`write_body`); :meth:`received` sees every request first. :meth:`bytes_served`
    counts the body bytes written per path, whatever the writer: tests prove with it that a
    crash mid-install never costs a second full download.
    """

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._served: Counter[str] = Counter()
        self._served_lock = threading.Lock()

    def bytes_served(self, path: str) -> int:
        """Body bytes written to clients for ``path`` so far, over every request."""
        with self._served_lock:
            return self._served[path]

    def _count(self, path: str, size: int) -> None:
        with self._served_lock:
            self._served[path] += size

    def find(self, path: str) -> bytes | None:
        """The bytes served at ``path`` (it starts with ``/``), or None for 404."""
        raise NotImplementedError

    def write_body(self, handler: BaseHTTPRequestHandler, payload: bytes) -> None:
        """Write the response body: at once, unless a subclass throttles or interrupts it."""
        handler.wfile.write(payload)

    def received(self, path: str, range_header: str | None) -> None:
        """Called for every GET before it is answered."""

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.received(self.path, range_header)
                body = server.find(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.flush()
                path = self.path
                self.wfile = _CountingWriter(self.wfile, lambda n: server._count(path, n))
                with contextlib.suppress(OSError):  # the client went away; nothing to answer
                    server.write_body(self, body[start:])

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._port

    def url(self, path: str) -> str:
        """The URL of ``path``; a leading ``/`` is optional."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
