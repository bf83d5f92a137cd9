"""Test helpers: a local artifact HTTP server with knobs, and a client for one agent's subjects."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from durable_installs.devstack.fileserver import RangeFileServer
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent import Agent
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
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
from tests.workflow_helpers import wait_for

WAIT = 60.0
"""Upper bound for waiting on a condition; never a performance assertion."""


async def eventually(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Wait until ``condition()`` holds, failing with ``what`` after ``limit`` seconds."""
    await wait_for(condition, within=limit, what=what, interval=0.02)


@dataclass
class ServedRequest:
    """One GET the artifact server received."""

    path: str
    range: str | None


class ArtifactServer(RangeFileServer):
    """Serves files from memory, records every request, and misbehaves on demand.

    ``hold_after``: send that many bytes, then wait for :meth:`release` before the rest.
    ``truncate_once_after``: the next response closes the connection after that many bytes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.requests: list[ServedRequest] = []
        self.hold_after: int | None = None
        self.truncate_once_after: int | None = None
        self.gate = threading.Event()
        self.active = 0

    def find(self, path: str) -> bytes | None:
        return self.files.get(path)

    def received(self, path: str, range_header: str | None) -> None:
        self.requests.append(ServedRequest(path, range_header))

    def write_body(self, handler: BaseHTTPRequestHandler, payload: bytes) -> None:
        self.active += 1
        try:
            if self.truncate_once_after is not None:
                cut, self.truncate_once_after = self.truncate_once_after, None
                handler.wfile.write(payload[:cut])
                handler.wfile.flush()
                handler.close_connection = True
                return
            if self.hold_after is not None and not self.gate.is_set():
                handler.wfile.write(payload[: self.hold_after])
                handler.wfile.flush()
                self.gate.wait(WAIT)
                payload = payload[self.hold_after :]
            handler.wfile.write(payload)
        finally:
            self.active -= 1

    def publish(self, path: str, archive: Path) -> str:
        """Serve ``archive``'s bytes at ``path``; returns the URL."""
        self.files[path] = archive.read_bytes()
        return self.url(path)

    def publish_backend(self, gallery: Gallery, archives: Path, spec: SampleBackend) -> str:
        """``gallery.add_backend`` with the archive served here at ``/<name>.tar.gz``;
        returns its URL."""
        url = self.url(f"/{spec.name}.tar.gz")
        built = gallery.add_backend(spec, archives, uri=url)
        self.publish(f"/{spec.name}.tar.gz", built.path)
        return url

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.gate.set()
        super().stop()


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
