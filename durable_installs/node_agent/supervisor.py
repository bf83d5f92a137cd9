"""Backend processes: one per slot, spawned, health-checked, stopped, adopted.

The run and health contract is docs/protocol.md §5 ("The backend process contract").

Each process runs ``run.sh --addr <bind_host>:<port>`` in its backend directory, in its own
session and process group so that stopping it also stops whatever ``run.sh`` forked, and so
that it outlives an agent that is killed or crashes. Its output goes to
``<backends>/.logs/<slot>.log`` (truncated at each start) rather than a pipe, which would break
when the agent dies; the last 20 lines make the error of a failed start.

Every process is recorded in ``<backends>/.processes.json`` (:mod:`node_agent.records`). At
start-up :meth:`Supervisor.recover` adopts each recorded process that is still the same
process (start time matches) and answers ``Health``: its port is reserved, installs for its
slot answer from it, ``models.running`` lists it and ``backend.stop``/delete/upgrade stop it.
Anything else recorded that is still the same process is killed with its process group; a
recorded pid now held by an unrelated process is left alone. So after a ``kill -9`` of the
agent there is never a second process for a slot, nor a leaked one.

A watcher task per process notices when it exits — on request or on its own — and releases
its slot and port. A child is awaited as usual; an adopted process is not our child, so its
exit is read from a pidfd; everything after that is one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from durable_installs.node_agent import backend_rpc
from durable_installs.node_agent.config import AgentConfig
from durable_installs.node_agent.errors import AgentError
from durable_installs.node_agent.ports import PortAllocator
from durable_installs.node_agent.records import ProcessRecord, ProcessRecords, proc_stat
from durable_installs.node_agent.store import Installed, directory_identity
from durable_installs.telemetry import phase_span

log = logging.getLogger(__name__)

STDERR_LINES = 20
LOGS_DIR = ".logs"
_TAIL_BYTES = 16 * 1024
_POLL_EXIT = 0.5


class ProcState(Enum):
    """Life cycle of one slot's process."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass(eq=False)
class Proc:
    """One backend process (spawned by this agent or adopted) and what it was started for."""

    key: str
    backend: str
    directory: Path
    identity: tuple[int, int] | None
    port: int
    pid: int
    """Also its process group id: every backend process leads its own group."""
    start_ticks: int
    log: Path
    wait_exit: Callable[[], Awaitable[int | None]]
    """Waits until the process has exited; its code, None when unknown (adopted)."""
    adopted: bool = False
    state: ProcState = ProcState.STARTING
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def local_address(self) -> str:
        """Where the agent itself reaches the process."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Still running (not exited)."""
        return not self.exited.is_set()

    def runs_current_directory(self) -> bool:
        """False when a reinstall swapped or removed the directory the process runs from."""
        return self.identity is not None and directory_identity(self.directory) == self.identity

    def stderr_tail(self) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            with self.log.open("rb") as out:
                out.seek(max(0, out.seek(0, os.SEEK_END) - _TAIL_BYTES))
                text = out.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-STDERR_LINES:])

    def record(self) -> ProcessRecord:
        """What the next agent needs to recognise this process."""
        return ProcessRecord(
            key=self.key,
            backend=self.backend,
            directory=str(self.directory),
            identity=self.identity,
            port=self.port,
            pid=self.pid,
            start_ticks=self.start_ticks,
            log=str(self.log),
        )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _log_name(key: str) -> str:
    """A file name for slot ``key``: readable, and distinct for keys that read the same."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:80]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.log"


async def wait_pid_exit(pid: int) -> None:
    """Wait for a process that is not our child to exit: a pidfd, else polling ``/proc``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):  # no pidfd (old kernel): poll
        first = proc_stat(pid)
        while True:
            now = proc_stat(pid)
            if now is None or now != first:
                return
            await asyncio.sleep(_POLL_EXIT)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class Supervisor:
    """The process table of one agent."""

    def __init__(self, config: AgentConfig, ports: PortAllocator) -> None:
        self._config = config
        self._ports = ports
        self._procs: dict[str, Proc] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._tracer = config.telemetry.tracer()
        self._records = ProcessRecords(config.backends_dir)
        self._logs = config.backends_dir / LOGS_DIR

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
        log_file = self._logs / _log_name(key)
        try:
            mode = run_file.stat().st_mode
            if not mode & stat.S_IXUSR:
                run_file.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            self._logs.mkdir(parents=True, exist_ok=True)
            with log_file.open("wb") as output:
                process = await asyncio.create_subprocess_exec(
                    str(run_file),
                    "--addr",
                    f"{self._config.bind_host}:{port}",
                    cwd=backend.directory,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    start_new_session=True,
                )
        except OSError as err:
            raise AgentError(f"starting backend process: {err}") from err
        started = proc_stat(process.pid)
        proc = Proc(
            key=key,
            backend=backend.name,
            directory=backend.directory,
            identity=directory_identity(backend.directory),
            port=port,
            pid=process.pid,
            start_ticks=started.start_ticks if started is not None else 0,
            log=log_file,
            wait_exit=process.wait,
        )
        self._add(proc)
        log.info("started %s (%s) on port %s, pid %s", key, backend.name, port, process.pid)
        return proc

    def _add(self, proc: Proc) -> None:
        """Track ``proc``: table, record, exit watcher."""
        self._procs[proc.key] = proc
        self._save_records()
        watcher = asyncio.create_task(self._watch(proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def _save_records(self) -> None:
        try:
            self._records.save([p.record() for p in self._procs.values() if p.start_ticks])
        except OSError as err:  # the processes still run; only adoption after a crash suffers
            log.error("could not write %s: %s", self._records.path, err)

    async def _watch(self, proc: Proc) -> None:
        """Wait for exit, then free the slot and the port (also for a process that crashed)."""
        code = await proc.wait_exit()
        _signal_group(proc.pid, signal.SIGKILL)  # children run.sh left behind
        proc.exited.set()
        if proc.state is not ProcState.STOPPING:
            log.warning("backend %s exited on its own with code %s", proc.key, code)
        self._forget(proc)

    def _forget(self, proc: Proc) -> None:
        if self._procs.get(proc.key) is proc:
            del self._procs[proc.key]
            self._save_records()
        self._ports.release(proc.port, proc.key)

    # --- adoption after a restart ----------------------------------------------------------

    async def recover(self) -> None:
        """Adopt recorded processes that are still ours and healthy; kill the other survivors."""
        records = self._records.load()
        if not records:
            return
        verdicts = await asyncio.gather(*(self._adoptable(r) for r in records))
        for record, problem in zip(records, verdicts, strict=True):
            if problem is None and self._adopt(record):
                continue
            if record.is_running():
                log.warning(
                    "killing leftover backend process %s (pid %s, port %s): %s",
                    record.key,
                    record.pid,
                    record.port,
                    problem or "its slot or port is taken",
                )
                _signal_group(record.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(record.pid, signal.SIGKILL)  # also when it left its group
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.stop_grace):
                        await wait_pid_exit(record.pid)
            elif orphans := record.orphans():
                log.warning(
                    "killing processes %s left by backend process %s (pid %s, gone)",
                    orphans,
                    record.key,
                    record.pid,
                )
                for pid in orphans:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            else:
                log.info("recorded backend process %s (pid %s) is gone", record.key, record.pid)
        self._save_records()

    async def _adoptable(self, record: ProcessRecord) -> str | None:
        """Why ``record`` cannot be adopted, or None when it can."""
        now = proc_stat(record.pid)
        if now is None or now.start_ticks != record.start_ticks:
            return "not running"
        if now.pgrp != record.pid:
            return "it left its own process group"
        healthy = await backend_rpc.health(
            f"127.0.0.1:{record.port}",
            call_timeout=self._config.health_call_timeout,
            token=self._config.grpc_auth_token,
        )
        return None if healthy else f"no Health OK on port {record.port}"

    def _adopt(self, record: ProcessRecord) -> bool:
        if record.key in self._procs or not self._ports.reserve(record.port, record.key):
            return False
        pid = record.pid
        proc = Proc(
            key=record.key,
            backend=record.backend,
            directory=Path(record.directory),
            identity=record.identity,
            port=record.port,
            pid=pid,
            start_ticks=record.start_ticks,
            log=Path(record.log),
            wait_exit=lambda: _none_after(wait_pid_exit(pid)),
            adopted=True,
            state=ProcState.RUNNING,
        )
        self._add(proc)
        log.info(
            "adopted %s (%s) on port %s, pid %s, left by a previous agent",
            record.key,
            record.backend,
            record.port,
            pid,
        )
        return True

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
            _signal_group(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
            try:
                async with asyncio.timeout(self._config.stop_grace):
                    await proc.exited.wait()
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.exited.wait()

    async def stop_all(self, force: bool = False) -> list[str]:
        """Stop every process; returns their keys."""
        procs = self.all()
        await asyncio.gather(*(self.stop(p, force=force) for p in procs))
        return [p.key for p in procs]

    async def close(self, keep: bool = False) -> int:
        """Agent shutdown: stop every process, or with ``keep`` leave them running (their
        records stay for the next agent to adopt); returns how many were left running."""
        if keep:
            left = [p for p in self.all() if p.alive]
            for watcher in self._watchers:
                watcher.cancel()  # stop watching; the process runs on
            await asyncio.gather(*self._watchers, return_exceptions=True)
            if left:
                log.info(
                    "left %d backend process%s running for the next agent to adopt: %s",
                    len(left),
                    "" if len(left) == 1 else "es",
                    ", ".join(f"{p.key} (pid {p.pid})" for p in left),
                )
            return len(left)
        await self.stop_all()
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
        return 0


async def _none_after(waiting: Awaitable[None]) -> int | None:
    await waiting
    return None
