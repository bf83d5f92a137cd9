"""The upgrade benchmark's fleet: one NATS connection answering every node, one gRPC server.

Wildcard subscriptions stand in for any number of nodes (as ``bench/node.py`` does for
installs): ``backend.list`` shows each node's current version, ``models.running`` its slots,
``backend.upgrade`` bumps the version and stops the slots, ``backend.install`` starts a slot,
the status extension says which slots run. Every slot's address is one local gRPC server that
answers ``Health`` with ``OK``, so the health gate is real and costs one call per slot.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendListReply,
    BackendUpgradeReply,
    InstallStatusReply,
    ModelsRunningReply,
    NodeBackendInfo,
    RunningModelInfo,
)

grpc_aio: Any = importlib.import_module("grpc.aio")
grpc: Any = importlib.import_module("grpc")
BACKEND = "llama-cpp"


@dataclass
class FakeNodeState:
    version: int = 1
    running: set[tuple[str, int]] = field(default_factory=set)


class HealthServer:
    """A gRPC server whose ``/backend.Backend/Health`` answers ``OK``."""

    def __init__(self) -> None:
        self.server: Any = None
        self.address = ""

    async def start(self) -> HealthServer:
        async def health(request: bytes, context: Any) -> bytes:
            return b"\x0a\x02OK"

        handler = grpc.method_handlers_generic_handler(
            "backend.Backend",
            {
                "Health": grpc.unary_unary_rpc_method_handler(
                    health, request_deserializer=None, response_serializer=None
                )
            },
        )
        self.server = grpc_aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        await self.server.stop(0)


class UpgradeFleet:
    """Every node at once, with ``slots`` running slots of one backend each."""

    def __init__(self, nc: NATS, health_address: str) -> None:
        self.nc = nc
        self.address = health_address
        self.nodes: dict[str, FakeNodeState] = {}
        self.upgrades = 0
        self._subs: list[Any] = []

    def add(self, node_id: str, slots: int) -> None:
        self.nodes[node_id] = FakeNodeState(running={(f"m{i}", 0) for i in range(slots)})

    async def start(self) -> UpgradeFleet:
        for subject, handler in (
            ("nodes.*.backend.list", self._list),
            ("nodes.*.models.running", self._running),
            ("nodes.*.backend.upgrade", self._upgrade),
            ("nodes.*.backend.install", self._install),
            ("nodes.*.backend.install.status", self._status),
            ("nodes.*.backend.previous.drop", self._drop),
        ):
            self._subs.append(await self.nc.subscribe(subject, cb=handler))
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    def _node(self, msg: Msg) -> FakeNodeState:
        return self.nodes.setdefault(msg.subject.split(".")[1], FakeNodeState())

    async def _list(self, msg: Msg) -> None:
        node = self._node(msg)
        row = NodeBackendInfo(
            name=BACKEND, version=f"{node.version}.0.0", installed_at=f"v{node.version}"
        )
        await msg.respond(BackendListReply(backends=[row]).to_wire())

    async def _running(self, msg: Msg) -> None:
        models = [
            RunningModelInfo(model_id=m, replica_index=r, address="127.0.0.1:1")
            for m, r in sorted(self._node(msg).running)
        ]
        await msg.respond(ModelsRunningReply(models=models).to_wire())

    async def _upgrade(self, msg: Msg) -> None:
        node = self._node(msg)
        stopped = [f"{m}#{r}" for m, r in sorted(node.running)]
        node.running.clear()
        node.version += 1
        self.upgrades += 1
        reply = BackendUpgradeReply(
            success=True, stopped_process_keys=stopped, reports_stopped_processes=True
        )
        await msg.respond(reply.to_wire())

    async def _install(self, msg: Msg) -> None:
        body = json.loads(msg.data)
        self._node(msg).running.add((body.get("model_id") or BACKEND, body.get("replica_index", 0)))
        await msg.respond(BackendInstallReply(success=True, address=self.address).to_wire())

    async def _status(self, msg: Msg) -> None:
        body = json.loads(msg.data)
        key = (body.get("model_id") or BACKEND, body.get("replica_index", 0))
        state = "running" if body.get("model_id") and key in self._node(msg).running else "absent"
        await msg.respond(InstallStatusReply(state=state, address=self.address).to_wire())

    async def _drop(self, msg: Msg) -> None:
        await msg.respond(b'{"success": true}')
