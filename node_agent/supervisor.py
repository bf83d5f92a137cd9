"""Backend processes: one per slot, spawned, health-checked, stopped (reference §4.4).

Each process runs ``run.sh --addr <bind_host>:<port>`` in its backend directory, in its own
process group so that stopping it also stops whatever ``run.sh`` forked. A watcher task per
process notices when it exits — on request or on its own — and releases its slot and port, so
a crashed backend never leaves a stale address or a leaked port behind. The last 20 stderr
lines are kept for the error of a failed start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from node_agent import backend_rpc
from node_agent.config import AgentConfig
from node_agent.errors import AgentError
from node_agent.ports import PortAllocator
from node_agent.store import Installed, directory_identity
from telemetry import phase_span

log = logging.getLogger(__name__)

STDERR_LINES = 20


class ProcState(Enum):
    """Life cycle of one slot's process."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass(eq=False)
class Proc:
    """One spawned backend process and what it was started for."""

    key: str
    backend: str
    directory: Path
    identity: tuple[int, int] | None
    port: int
    process: asyncio.subprocess.Process
    state: ProcState = ProcState.STARTING
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def local_address(self) -> str:
        """Where the agent itself reaches the process."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Still running (not exited)."""
        return not self.exited.is_set() and self.process.returncode is None

    def runs_current_directory(self) -> bool:
        """False when a reinstall swapped or removed the directory the process runs from."""
        return self.identity is not None and directory_identity(self.directory) == self.identity

    def stderr_tail(self) -> str:
        """The last stderr lines, for error messages."""
        return "\n".join(self.stderr)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Supervisor:
    """The process table of one agent."""

    def __init__(self, config: AgentConfig, ports: PortAllocator) -> None:
        self._config = config
        self._ports = ports
        self._procs: dict[str, Proc] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._tracer = config.telemetry.tracer()

    def get(self, key: str) -> Proc | None:
        """The process recorded for slot ``key``."""
        return self._procs.get(key)

    def all(self) -> list[Proc]:
        """Every recorded process."""
        return list(self._procs.values())

    def running(self) -> list[Proc]:
        """Live processes that are not being stopped, for ``models.running``."""
        return [p for p in self._procs.values() if p.alive and p.state is ProcState.RUNNING]

    async def spawn(self, key: str, backend: Installed) -> Proc:
        """Start ``backend`` for slot ``key`` and wait until it answers ``Health``."""
        existing = self._procs.get(key)
        if existing is not None:
            if existing.state is ProcState.STOPPING:
                raise AgentError(f"backend {key} is stopping")
            if existing.alive:
                return existing
            self._forget(existing)
        port = self._ports.allocate(key)
        try:
            with phase_span(self._tracer, "spawn", **{"install.port": port}):
                proc = await self._start(key, backend, port)
        except BaseException:
            self._ports.release(port, key)
            raise
        try:
            with phase_span(self._tracer, "readiness", **{"install.port": port}):
                await self._wait_ready(proc)
        except BaseException:
            await asyncio.shield(self._terminate(proc, force=True))
            raise
        proc.state = ProcState.RUNNING
        return proc

    async def _start(self, key: str, backend: Installed, port: int) -> Proc:
        run_file = backend.run_file
        env = dict(os.environ)
        if self._config.grpc_auth_token:
            env["LOCALAI_GRPC_AUTH_TOKEN"] = self._config.grpc_auth_token
        try:
            mode = run_file.stat().st_mode
            if not mode & stat.S_IXUSR:
                run_file.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            process = await asyncio.create_subprocess_exec(
                str(run_file),
                "--addr",
                f"{self._config.bind_host}:{port}",
                cwd=backend.directory,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            raise AgentError(f"starting backend process: {err}") from err
        proc = Proc(
            key=key,
            backend=backend.name,
            directory=backend.directory,
            identity=directory_identity(backend.directory),
            port=port,
            process=process,
        )
        self._procs[key] = proc
        proc.readers = [
            asyncio.create_task(self._read(process.stdout, proc, keep=False)),
            asyncio.create_task(self._read(process.stderr, proc, keep=True)),
        ]
        watcher = asyncio.create_task(self._watch(proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("started %s (%s) on port %s, pid %s", key, backend.name, port, process.pid)
        return proc

    @staticmethod
    async def _read(stream: asyncio.StreamReader | None, proc: Proc, keep: bool) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            if keep:
                proc.stderr.append(text)
            log.debug("%s: %s", proc.key, text)

    async def _watch(self, proc: Proc) -> None:
        """Wait for exit, then free the slot and the port (also for a process that crashed)."""
        code = await proc.process.wait()
        _signal_group(proc.process.pid, signal.SIGKILL)  # children run.sh left behind
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.gather(*proc.readers, return_exceptions=True)
        proc.exited.set()
        if proc.state is not ProcState.STOPPING:
            log.warning("backend %s exited on its own with code %s", proc.key, code)
        self._forget(proc)

    def _forget(self, proc: Proc) -> None:
        if self._procs.get(proc.key) is proc:
            del self._procs[proc.key]
        self._ports.release(proc.port, proc.key)

    async def _wait_ready(self, proc: Proc) -> None:
        loop = asyncio.get_running_loop()
        budget = self._config.readiness_timeout
        deadline = loop.time() + budget
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.readiness_poll):
                    await proc.exited.wait()
            if proc.exited.is_set():
                raise AgentError(
                    f"backend process {proc.key} died during startup. "
                    f"Last stderr:\n{proc.stderr_tail()}"
                )
            healthy = await backend_rpc.health(
                proc.local_address,
                call_timeout=self._config.health_call_timeout,
                token=self._config.grpc_auth_token,
            )
            if healthy:
                if self._procs.get(proc.key) is not proc or proc.state is ProcState.STOPPING:
                    raise AgentError(f"backend {proc.key} was stopped during startup")
                return
            if loop.time() >= deadline:
                raise AgentError(
                    f"backend {proc.key} did not become ready within {budget:g}s. "
                    f"Last stderr:\n{proc.stderr_tail()}"
                )

    async def stop(self, proc: Proc, force: bool = False) -> None:
        """Stop one process: ``Free`` first unless forced, then TERM, then KILL after grace."""
        if proc.exited.is_set():
            return
        was_running = proc.state is ProcState.RUNNING
        proc.state = ProcState.STOPPING
        if was_running and not force:
            await backend_rpc.free(
                proc.local_address,
                call_timeout=self._config.free_timeout,
                token=self._config.grpc_auth_token,
            )
        await self._terminate(proc, force=False)

    async def _terminate(self, proc: Proc, force: bool) -> None:
        proc.state = ProcState.STOPPING
        if not proc.exited.is_set():
            _signal_group(proc.process.pid, signal.SIGKILL if force else signal.SIGTERM)
            try:
                async with asyncio.timeout(self._config.stop_grace):
                    await proc.exited.wait()
            except TimeoutError:
                _signal_group(proc.process.pid, signal.SIGKILL)
                await proc.exited.wait()

    async def stop_all(self, force: bool = False) -> list[str]:
        """Stop every process; returns their keys."""
        procs = self.all()
        await asyncio.gather(*(self.stop(p, force=force) for p in procs))
        return [p.key for p in procs]

    async def close(self) -> None:
        """Stop everything and wait for the watchers (agent shutdown)."""
        await self.stop_all()
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
