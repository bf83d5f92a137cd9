"""Test helpers: a local artifact HTTP server with knobs, and a client for one agent's subjects."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from node_agent import Agent
from node_agent.sample_backend import Gallery
from protocol import subjects
from protocol.messages import (
    BackendDeleteReply,
    BackendDeleteRequest,
    BackendInstallProgressEvent,
    BackendInstallReply,
    BackendInstallRequest,
    BackendListReply,
    BackendStopRequest,
    BackendUpgradeReply,
    BackendUpgradeRequest,
    InstallStatusReply,
    InstallStatusRequest,
    ModelsRunningReply,
)

WAIT = 60.0
"""Upper bound for waiting on a condition; never a performance assertion."""


async def eventually(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Wait until ``condition()`` holds (polling), failing with ``what`` after ``limit``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


@dataclass
class ServedRequest:
    """One GET the artifact server received."""

    path: str
    range: str | None


@dataclass
class ArtifactServer:
    """Serves files over HTTP on 127.0.0.1 with Range support and failure knobs.

    ``hold_after``: send that many bytes, then wait for :meth:`release` before the rest.
    ``truncate_once_after``: the next response closes the connection after that many bytes.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[ServedRequest] = field(default_factory=list)
    hold_after: int | None = None
    truncate_once_after: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    active: int = 0
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(ServedRequest(self.path, self.headers.get("Range")))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                outer.active += 1
                try:
                    self._send(body[start:])
                except OSError:
                    pass
                finally:
                    outer.active -= 1

            def _send(self, payload: bytes) -> None:
                if outer.truncate_once_after is not None:
                    cut, outer.truncate_once_after = outer.truncate_once_after, None
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if outer.hold_after is not None and not outer.gate.is_set():
                    self.wfile.write(payload[: outer.hold_after])
                    self.wfile.flush()
                    outer.gate.wait(WAIT)
                    payload = payload[outer.hold_after :]
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def publish(self, path: str, archive: Path) -> str:
        """Serve ``archive``'s bytes at ``path``; returns the URL."""
        self.files[path] = archive.read_bytes()
        return self.url(path)

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class NodeClient:
    """Talks to one node agent over the real NATS server, like an orchestrator would."""

    nc: NATS
    node_id: str
    agent: Agent
    gallery: Gallery
    backends_dir: Path
    events: dict[str, list[BackendInstallProgressEvent]] = field(default_factory=dict)

    async def _request(self, subject: str, body: bytes) -> bytes:
        msg = await self.nc.request(subject, body, timeout=WAIT)
        data: bytes = msg.data
        return data

    async def watch(self, op_id: str) -> list[BackendInstallProgressEvent]:
        """Collect progress events of ``op_id`` (subscribed before the request, as §5.2 says)."""
        received = self.events.setdefault(op_id, [])

        async def on_event(msg: Any) -> None:
            received.append(BackendInstallProgressEvent.model_validate_json(msg.data))

        await self.nc.subscribe(subjects.progress(self.node_id, op_id), cb=on_event)
        await self.nc.flush()
        return received

    async def install(self, backend: str, **fields: Any) -> BackendInstallReply:
        if fields.get("op_id"):
            await self.watch(fields["op_id"])
        request = BackendInstallRequest(backend=backend, **fields)
        data = await self._request(subjects.install(self.node_id), request.to_wire())
        return BackendInstallReply.model_validate_json(data)

    async def upgrade(self, backend: str, **fields: Any) -> BackendUpgradeReply:
        request = BackendUpgradeRequest(backend=backend, **fields)
        data = await self._request(subjects.upgrade(self.node_id), request.to_wire())
        return BackendUpgradeReply.model_validate_json(data)

    async def status(self, backend: str, **fields: Any) -> InstallStatusReply:
        request = InstallStatusRequest(backend=backend, **fields)
        data = await self._request(subjects.install_status(self.node_id), request.to_wire())
        return InstallStatusReply.model_validate_json(data)

    async def cancel(self, op_id: str) -> dict[str, Any]:
        data = await self._request(subjects.cancel(self.node_id, op_id), b"")
        result: dict[str, Any] = json.loads(data)
        return result

    async def running(self) -> ModelsRunningReply:
        data = await self._request(subjects.models_running(self.node_id), b"{}")
        return ModelsRunningReply.model_validate_json(data)

    async def listing(self) -> BackendListReply:
        data = await self._request(subjects.backend_list(self.node_id), b"{}")
        return BackendListReply.model_validate_json(data)

    async def delete(self, backend: str) -> BackendDeleteReply:
        body = BackendDeleteRequest(backend=backend).to_wire()
        data = await self._request(subjects.backend_delete(self.node_id), body)
        return BackendDeleteReply.model_validate_json(data)

    async def stop(self, request: BackendStopRequest | None) -> None:
        body = b"null" if request is None else request.to_wire()
        await self.nc.publish(subjects.backend_stop(self.node_id), body)
        await self.nc.flush()

    async def raw(self, subject: str, body: bytes) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self._request(subject, body))
        return result

    def staging_leftovers(self) -> list[str]:
        if not self.backends_dir.exists():
            return []
        return sorted(
            p.name
            for p in self.backends_dir.iterdir()
            if p.name.endswith((".install-tmp", ".install-backup"))
        )

    def partial_files(self) -> list[str]:
        downloads = self.backends_dir / ".downloads"
        return sorted(p.name for p in downloads.glob("*.partial")) if downloads.exists() else []

    def installed_version(self, name: str) -> str:
        return (self.backends_dir / name / "VERSION").read_text().strip()

    async def running_keys(self) -> list[str]:
        reply = await self.running()
        return sorted(f"{m.model_id}#{m.replica_index}" for m in reply.models or [])
