"""Every component of an install as a real process the tests can SIGKILL, SIGSTOP and restart.

A :class:`Component` owns one child process at a time, started from the test's main thread
with output to a log file (a pipe nobody reads would fill and block the child). Restarting
starts a new process with the same command, so a server comes back on the same port and with
the same state files. Each component is an async context manager whose exit kills whatever is
still running, even when an assertion failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.devstack.processes import die_with_parent
from durable_installs.protocol.messages import GalleryConfig
from durable_installs.servers import free_port, nats_server_command, temporal_dev_server_command
from tests.node_agent.agent_process import agent_command
from tests.worker_process import ROOT, worker_command
from tests.workflow_helpers import wait_until

START_WITHIN = 90.0
"""Upper bound for a process to become ready on a busy two-core machine."""


class Component:
    """One restartable child process with its output in ``log``."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Start the process (the log of every start is kept, one after the other)."""
        assert not self.running(), f"{self.name} is already running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"=== start {self.starts}: {' '.join(self.command)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=die_with_parent,  # nothing outlives a killed test run
            )

    async def start(self) -> None:
        """Start and wait until :meth:`ready` says so."""
        self.spawn()
        await wait_until(self._ready_or_dead, within=START_WITHIN, what=f"{self.name} ready")

    async def _ready_or_dead(self) -> bool:
        if not self.running():
            raise AssertionError(f"{self.name} exited during start-up; see {self.log}")
        return await self.ready()

    async def ready(self) -> bool:
        """Whether the process serves; subclasses ask it."""
        return True

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when a machine loses power."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # a paused process dies as well
                self.proc.kill()
            self.proc.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but does nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    async def restart(self) -> None:
        """Kill what runs, then start again with the same command (same ports, same files)."""
        self.kill()
        await self.start()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self.kill()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


class LogReady(Component):
    """Ready once ``marker`` appears in the log of the current start."""

    marker = ""

    async def ready(self) -> bool:
        current = self.log_text().rsplit(f"=== start {self.starts}:", 1)[-1]
        return self.marker in current


class TemporalServer(Component):
    """A Temporal dev server on a fixed port with its history in a SQLite file.

    Restarting it with the same ``--db-filename`` keeps every workflow's history, which is
    what a real cluster's persistence gives: an outage, not a loss of state.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        command = temporal_dev_server_command(
            self.port,
            db_file=workdir / "temporal.db",
            search_attributes=[key.name for key in SEARCH_ATTRIBUTES],
        )
        super().__init__("temporal", command, workdir / "temporal.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def connect(self) -> Client:
        """A client like the worker's (pydantic converter); it reconnects after a restart."""
        return await Client.connect(self.address, data_converter=pydantic_data_converter)

    async def ready(self) -> bool:
        try:
            async with asyncio.timeout(5):
                client = await self.connect()
                await client.count_workflows()  # the visibility store answers too
        except Exception:
            return False
        return True


class NatsServer(Component):
    """One ``nats-server`` on a fixed port; started with a config file when given one."""

    def __init__(self, name: str, workdir: Path, config: Path | None = None) -> None:
        self.port = free_port()
        self.monitor_port = free_port()
        if config is None:
            command = nats_server_command(self.port, monitor_port=self.monitor_port)
        else:
            command = nats_server_command(None, config=config)
        super().__init__(name, command, workdir / f"{name}.log")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """GET a monitoring endpoint (``routez``, ``connz``) as JSON (blocking)."""
        url = f"http://127.0.0.1:{self.monitor_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.load(response)
            return body

    async def ready(self) -> bool:
        try:
            await asyncio.to_thread(self.monitor, "varz")
        except OSError:
            return False
        return True

    async def connection_names(self) -> list[str]:
        """Names of the clients connected to this server right now."""
        connz = await asyncio.to_thread(self.monitor, "connz")
        return [str(c.get("name", "")) for c in connz.get("connections") or []]


class NatsCluster:
    """Three ``nats-server`` processes routed into one cluster from real config files."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.servers = [NatsServer(f"nats-{i}", workdir) for i in range(1, size + 1)]
        cluster_ports = [free_port() for _ in self.servers]
        for index, server in enumerate(self.servers):
            routes = ", ".join(
                f"nats-route://127.0.0.1:{port}"
                for other, port in enumerate(cluster_ports)
                if other != index
            )
            config = workdir / f"{server.name}.conf"
            config.write_text(
                f"server_name: {server.name}\n"
                f"listen: 127.0.0.1:{server.port}\n"
                f"http: 127.0.0.1:{server.monitor_port}\n"
                "cluster {\n"
                "  name: chaos\n"
                f"  listen: 127.0.0.1:{cluster_ports[index]}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            server.command = nats_server_command(None, config=config)

    @property
    def url(self) -> str:
        """Every server, comma-separated, as ``NATS_URL`` takes a cluster."""
        return ",".join(server.url for server in self.servers)

    async def fully_routed(self) -> bool:
        """Every live server has a route to every other live server."""
        alive = [s for s in self.servers if s.running()]
        for server in alive:
            try:
                routez = await asyncio.to_thread(server.monitor, "routez")
            except OSError:
                return False
            names = {route.get("remote_name") for route in routez.get("routes") or []}
            if not {s.name for s in alive if s is not server} <= names:
                return False
        return True

    async def server_of(self, client_name: Callable[[str], bool]) -> NatsServer:
        """The server a client (chosen by its connection name) is connected to now."""
        found: list[NatsServer] = []

        async def connected() -> bool:
            found.clear()
            for server in self.servers:
                if server.running() and any(map(client_name, await server.connection_names())):
                    found.append(server)
            return len(found) == 1

        await wait_until(connected, within=START_WITHIN, what="the client's server known")
        return found[0]

    async def __aenter__(self) -> Self:
        try:
            for server in self.servers:
                await server.start()
            await wait_until(self.fully_routed, within=START_WITHIN, what="cluster routes up")
        except BaseException:
            self.kill()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        for server in self.servers:
            server.kill()


class WorkerProcess(LogReady):
    """``worker_main.py`` as operators run it, on its own task queue."""

    marker = "worker polling"

    def __init__(
        self,
        name: str,
        workdir: Path,
        temporal_address: str,
        nats_url: str,
        task_queue: str,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            name,
            worker_command("--graceful-shutdown-seconds", "1", *args),
            workdir / f"{name}.log",
            env={
                "TEMPORAL_ADDRESS": temporal_address,
                "TEMPORAL_TASK_QUEUE": task_queue,
                "NATS_URL": nats_url,
                **(env or {}),
            },
            cwd=ROOT,
        )

    def nats_connection_name(self) -> str:
        """The name the worker gives its NATS connection (server monitoring shows it)."""
        return f"backend-install-worker-{self.pid}"


class AgentProcess(LogReady):
    """``backend-node-agent`` for one node, its backends under ``backends_dir``."""

    def __init__(
        self,
        node_id: str,
        workdir: Path,
        backends_dir: Path,
        gallery: GalleryConfig,
        nats_url: str,
        ports: tuple[int, int],
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.marker = f"node agent {node_id} ready"
        self.backends_dir = backends_dir
        command = agent_command(
            node_id, backends_dir, gallery, nats_url, ports, readiness_timeout=30
        )
        super().__init__(
            f"agent-{node_id}",
            [*command, *args],
            workdir / f"agent-{node_id}.log",
            env=env,
            cwd=ROOT,
        )
