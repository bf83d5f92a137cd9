"""Fixtures of the chaos suite: a harness that starts real processes and always cleans up.

The session's Temporal dev server and ``nats-server`` (``tests/conftest.py``) serve the tests
that do not kill them; a test that kills a server starts its own. Everything a test starts
through :class:`Harness` is killed when the test ends, pass or fail, including backend
processes a killed agent left behind (found by their working directory).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from durable_installs.servers import free_port
from tests.chaos.components import AgentProcess, Component, WorkerProcess
from tests.chaos.procs import kill_processes_under
from tests.chaos.scenario import CancelWatch, SlowBackend, port_block


@dataclass
class ChaosNode:
    """One node agent process with its slow backend and a watch on its cancel subject."""

    node_id: str
    backend: SlowBackend
    agent: AgentProcess
    cancels: CancelWatch
    files_port: int = 0
    """The agent's file-transfer port (0: its file server is off), the same on every start."""

    @property
    def backends_dir(self) -> Path:
        return self.agent.backends_dir

    @property
    def models_dir(self) -> Path:
        """Where the agent's file server puts models (``models/`` beside the backends)."""
        return self.backends_dir.parent / "models"

    def partial_files(self) -> list[Path]:
        """The agent's resumable downloads (``<backends>/.downloads/*.partial``)."""
        return sorted((self.backends_dir / ".downloads").glob("*.partial"))

    def installed(self) -> bool:
        """Whether the backend has been swapped into place (extraction finished)."""
        return (self.backends_dir / self.backend.name / "run.sh").exists()


class Harness:
    """Starts the processes of one chaos test and stops all of them at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.task_queue = f"chaos-{uuid.uuid4().hex[:8]}"
        self._components: list[Component] = []
        self._nodes: list[ChaosNode] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def node(self, nats_url: str, files_token: str = "", **backend: Any) -> ChaosNode:
        """A node agent on ``nats_url`` serving a :class:`SlowBackend` (sizes as keywords);
        with ``files_token``, its file-transfer server too, on a port of its own that every
        restart keeps (the token in the environment, as operators pass it)."""
        node_id = f"node-{uuid.uuid4().hex[:10]}"
        root = self.workdir / node_id
        slow = SlowBackend(root, **backend)
        files_port = free_port() if files_token else 0
        args: list[str] = []
        env: dict[str, str] = {}
        if files_token:
            args = ["--files-address", f"127.0.0.1:{files_port}", "--files-reserve", "0"]
            env = {"NODE_AGENT_FILES_TOKEN": files_token}
        agent = AgentProcess(
            node_id, root, root / "backends", slow.gallery, nats_url, port_block(), args, env
        )
        cancels = CancelWatch(node_id)
        node = ChaosNode(node_id, slow, agent, cancels, files_port)
        self._nodes.append(node)
        self._components.append(agent)
        await cancels.start(nats_url)
        await agent.start()
        return node

    async def worker(
        self,
        temporal_address: str,
        nats_url: str,
        name: str = "worker",
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A ``worker_main.py`` process polling this test's task queue (``args`` added to its
        command line, ``env`` to its environment)."""
        worker = WorkerProcess(
            name, self.workdir, temporal_address, nats_url, self.task_queue, args, env
        )
        self._components.append(worker)
        await worker.start()
        return worker

    def adopt(self, component: Component) -> None:
        """Kill ``component`` at the end of the test as well."""
        self._components.append(component)

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback`` at the end of the test (before the processes are killed)."""
        self._closers.append(callback)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        for component in reversed(self._components):
            component.kill()
        for node in self._nodes:
            kill_processes_under(node.backends_dir)
            node.backend.stop()
            shutil.rmtree(node.backends_dir, ignore_errors=True)  # up to 256 MiB unpacked
            shutil.rmtree(node.models_dir, ignore_errors=True)  # staged model files
            await node.cancels.stop()


@pytest.fixture
async def chaos(tmp_path: Path) -> AsyncIterator[Harness]:
    """The harness of one test; everything it started is killed afterwards."""
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        await harness.close()
