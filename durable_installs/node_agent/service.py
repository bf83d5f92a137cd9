"""What a node does for each request, independent of NATS (docs/protocol.md §5, §10).

:class:`NodeService` owns the backends directory, the process table and the in-flight work.
Every public coroutine takes a decoded request and returns a reply model; :mod:`node_agent.agent`
only decodes, dispatches and publishes. Rules that hold throughout:

* what to install from where (gallery, archive URL, OCI image) is decided first, by
  :mod:`node_agent.planning`, because it names the lock;
* work for one backend is serialised on a lock keyed by the **resolved concrete name**, so a
  meta name, an alias and the concrete name of one backend never touch its directory at the
  same time (install, upgrade and delete alike);
* installs are single-flight per slot and upgrades per backend: duplicates join and receive
  the same reply;
* a failure leaves the installed version in place (the pipeline swaps only at the very end,
  and a forced reinstall whose new version dies at start-up is rolled back).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from durable_installs.node_agent.config import AgentConfig
from durable_installs.node_agent.errors import CANCELLED, GALLERY_PREFIX, AgentError, InstallError
from durable_installs.node_agent.flights import Flight, FlightTable, KeyedLocks
from durable_installs.node_agent.names import invalid_name_error, name_problem, strip_gallery
from durable_installs.node_agent.pipeline import Pipeline
from durable_installs.node_agent.planning import Plan, Planner
from durable_installs.node_agent.ports import PortAllocator
from durable_installs.node_agent.progress import ProgressPublisher, Tick
from durable_installs.node_agent.store import BACKUP_SUFFIX, BackendStore, Installed
from durable_installs.node_agent.supervisor import Proc, ProcState, Supervisor
from durable_installs.node_agent.trust import Trust
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendDeleteReply,
    BackendDeleteRequest,
    BackendInstallReply,
    BackendInstallRequest,
    BackendListReply,
    BackendPreviousDropReply,
    BackendPreviousDropRequest,
    BackendRollbackRequest,
    BackendStopRequest,
    BackendUpgradeReply,
    BackendUpgradeRequest,
    InstallStatusReply,
    InstallStatusRequest,
    ModelsRunningReply,
    NodeSlotState,
    ProgressPhase,
    RunningModelInfo,
    parse_process_key,
    process_key,
)
from durable_installs.telemetry import NodeMetrics, phase_span

log = logging.getLogger(__name__)

R = TypeVar("R")

Publish = Callable[[str, bytes], Awaitable[None]]
UPGRADE_PREFIX = "upgrading backend from gallery: "


def routable(host: str, port: int) -> str:
    """``host:port`` as the orchestrator dials it (IPv6 literals bracketed)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class NodeService:
    """The node's state and request handling."""

    def __init__(self, config: AgentConfig, publish: Publish) -> None:
        self.config = config
        self.instance_id: str = uuid.uuid4().hex
        """This run of the agent, new on every start: another agent with the same node id has
        another one, and the status extension reports it, so an install waiting on us sees a
        restart (which forgot its request) as a changed id."""
        self._publish = publish
        self.trust = Trust.build(
            config.galleries, config.allow_request_galleries, config.allow_request_uris
        )
        self.store = BackendStore(config.backends_dir, config.capability)
        self.ports = PortAllocator(
            *config.port_range, quarantine=config.port_quarantine, affinity=config.port_affinity
        )
        self.supervisor = Supervisor(config, self.ports)
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="node-agent")
        self._tracer = config.telemetry.tracer()
        self.metrics = NodeMetrics(
            config.telemetry.meter(), running=lambda: len(self.supervisor.running())
        )
        self._pipeline = Pipeline(self.store, config, self._executor, self.metrics)
        self.planner = Planner(config, self.trust, self.store, self._executor)
        self._locks = KeyedLocks()
        self._installs: FlightTable[BackendInstallReply] = FlightTable()
        self._upgrades: FlightTable[BackendUpgradeReply] = FlightTable()

    # --- life cycle --------------------------------------------------------------------------

    async def recover(self) -> None:
        """Clean up after a crash or kill of a previous run: interrupted installs go, backend
        processes it left running are adopted when healthy and killed otherwise."""
        self.config.backends_dir.mkdir(parents=True, exist_ok=True)
        self.store.recover()
        await self.supervisor.recover()

    async def close(self, keep_backends: bool = False) -> int:
        """Cancel in-flight work (cleaning its staging), stop every process, or with
        ``keep_backends`` leave them running; returns how many were left running."""
        tasks = [f.task for f in self._flights() if f.task is not None]
        for task in tasks:
            task.cancel("agent shutting down")
        await asyncio.gather(*tasks, return_exceptions=True)
        left = await self.supervisor.close(keep=keep_backends)
        self._executor.shutdown(wait=False, cancel_futures=True)
        return left

    # --- helpers -----------------------------------------------------------------------------

    def _progress(self, flight_ops: Callable[[], dict[str, str]]) -> ProgressPublisher:
        node = self.config.node_id

        async def send(tick: Tick) -> None:
            for op_id, backend in list(flight_ops().items()):
                event = tick.event(op_id, node, backend)
                await self._publish(subjects.progress(node, op_id), event.to_wire())

        return ProgressPublisher(send, window=self.config.progress_debounce)

    async def _single_flight(
        self,
        table: FlightTable[R],
        key: tuple[str, ...],
        req: BackendInstallRequest | BackendUpgradeRequest,
        slot: str,
        cancelled_reply: Callable[[str], R],
        work: Callable[[Flight[R]], Awaitable[R]],
    ) -> R:
        """Join the work in flight under ``key`` (whose first part is its kind), or start
        ``work`` as a new flight: duplicate requests share one piece of work and one reply."""
        flight = table.get(key)
        if flight is not None:
            log.info("%s of %s joins the one in flight", key[0], slot or req.backend)
            return await flight.join(req.op_id, req.backend)
        ops: dict[str, str] = {}
        flight = Flight(
            kind=key[0],
            slot=slot,
            backend=req.backend,
            cancelled_reply=cancelled_reply,
            publisher=self._progress(lambda: ops),
            ops=ops,
        )
        future = flight.join(req.op_id, req.backend)
        table.start(key, flight, work)
        return await future

    def _same_backend(self, proc: Proc, requested: str) -> bool:
        installed = self.store.lookup(requested)
        return installed is not None and installed.name == proc.backend

    def _reusable(self, proc: Proc | None, requested: str) -> Proc | None:
        if (
            proc is not None
            and proc.alive
            and proc.state is ProcState.RUNNING
            and proc.runs_current_directory()
            and self._same_backend(proc, requested)
        ):
            return proc
        return None

    async def _run_pipeline(
        self,
        plan: Plan,
        on_tick: Callable[[Tick], None],
        keep_backup: bool,
        before_swap: Callable[[], Awaitable[None]] | None = None,
    ) -> Path | None:
        """Install ``plan.artifact`` and record the meta entry that led to it."""
        if plan.artifact is None:
            raise AgentError(f'backend "{plan.lock_name}" has nothing to install from')
        backup = await self._pipeline.install(
            plan.artifact, on_tick, keep_backup=keep_backup, before_swap=before_swap
        )
        if plan.meta is not None:
            self.store.write_meta_pointer(plan.meta)
        return backup

    # --- backend.install ---------------------------------------------------------------------

    async def install(self, req: BackendInstallRequest) -> BackendInstallReply:
        """Ensure ``req.backend`` is installed and a healthy process serves the slot."""
        problem = _request_problem(req.backend, req.name, req.alias, req.op_id)
        if problem is not None:
            return BackendInstallReply(success=False, error=problem)
        key = process_key(req.backend, req.model_id, req.replica_index)
        if not req.force and (fast := self._reusable(self.supervisor.get(key), req.backend)):
            return self._address_reply(fast)
        return await self._single_flight(
            self._installs,
            ("install", key, req.backend, req.uri, str(req.force)),
            req,
            slot=key,
            cancelled_reply=lambda reason: BackendInstallReply(
                success=False, error=_cancelled_text(reason)
            ),
            work=lambda f: self._install_work(req, key, f),
        )

    async def _install_work(
        self, req: BackendInstallRequest, key: str, flight: Flight[BackendInstallReply]
    ) -> BackendInstallReply:
        tick = flight.publisher.tick
        try:
            tick(Tick(ProgressPhase.RESOLVING, req.backend))
            with phase_span(self._tracer, "resolve") as resolved:
                plan = await self.planner.plan(
                    req.backend, req.uri, req.name, req.alias, req.backend_galleries, req.force
                )
                resolved.set("install.concrete", plan.lock_name)
            async with self._locks.hold(plan.lock_name):
                return await self._install_locked(req, key, plan, tick)
        except AgentError as err:
            return BackendInstallReply(success=False, error=err.message)
        except asyncio.CancelledError as err:
            return BackendInstallReply(success=False, error=_cancelled_text(_reason(err)))
        except Exception as err:
            log.exception("install of %s failed unexpectedly", key)
            return BackendInstallReply(success=False, error=_internal_error(err))
        finally:
            await flight.publisher.flush()

    async def _install_locked(
        self, req: BackendInstallRequest, key: str, plan: Plan, tick: Callable[[Tick], None]
    ) -> BackendInstallReply:
        proc = self.supervisor.get(key)
        if not req.force and proc is not None:
            if self._reusable(proc, req.backend) is not None:
                return self._address_reply(proc)
            if not proc.exited.is_set():
                log.info("slot %s runs a stale or foreign process; stopping it", key)
                await self._stop_or_raise(
                    proc, "stopping mismatched backend process before reinstall"
                )
        if req.force:
            for other in self._procs_of(plan.lock_name, extra_key=key):
                await self._stop_or_raise(
                    other, "stopping running backend before reinstall", force=True
                )
        installed = None if req.force else self._on_disk(req.backend, plan)
        backup = None
        if installed is None:
            if plan.artifact is None:  # removed between planning and locking: pull it
                plan = await self.planner.plan(
                    req.backend, req.uri, req.name, req.alias, req.backend_galleries, True
                )
            backup = await self._run_pipeline(plan, tick, keep_backup=req.force)
            installed = self.store.lookup(req.backend)
            if installed is None:
                return BackendInstallReply(
                    success=False, error=f'backend "{req.backend}" not found after install attempt'
                )
        try:
            proc = await self._spawn(key, installed, tick)
        except BaseException:
            if backup is not None:
                log.warning("new %s failed to start; restoring the previous one", installed.name)
                self.store.restore(installed.name, backup)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        return self._address_reply(proc)

    def _on_disk(self, backend: str, plan: Plan) -> Installed | None:
        """The installed backend ``backend`` names, also when another of its names installed it.

        A request for a meta name that waited on the lock while the concrete name was
        installed finds only the concrete on disk: it records its meta entry and reuses it
        instead of downloading again.
        """
        installed = self.store.lookup(backend)
        if installed is None and plan.artifact is not None:
            concrete = self.store.lookup(plan.lock_name)
            if concrete is not None and concrete.name == plan.lock_name:
                if plan.meta is not None:
                    self.store.write_meta_pointer(plan.meta)
                installed = self.store.lookup(backend) or concrete
        return installed

    async def _spawn(self, key: str, installed: Installed, tick: Callable[[Tick], None]) -> Proc:
        tick(Tick(ProgressPhase.STARTING, f"Starting {key}"))
        proc = await self.supervisor.spawn(key, installed)
        tick(Tick(ProgressPhase.STARTING, f"Starting {key}", percentage=100.0))
        return proc

    def _address_reply(self, proc: Proc) -> BackendInstallReply:
        return BackendInstallReply(
            success=True, address=routable(self.config.advertise_host, proc.port)
        )

    def _procs_of(self, concrete: str, extra_key: str = "") -> list[Proc]:
        return [p for p in self.supervisor.all() if p.backend == concrete or p.key == extra_key]

    async def _stop_or_raise(self, proc: Proc, context: str, force: bool = False) -> None:
        try:
            await self.supervisor.stop(proc, force=force)
        except OSError as err:
            raise AgentError(f"{context}: {err}") from err

    # --- backend.upgrade ---------------------------------------------------------------------

    async def upgrade(self, req: BackendUpgradeRequest) -> BackendUpgradeReply:
        """Re-pull ``req.backend`` and stop every process of it; starts none (§6)."""
        problem = _request_problem(req.backend, req.name, req.alias, req.op_id)
        if problem is not None:
            return BackendUpgradeReply(success=False, error=problem)
        return await self._single_flight(
            self._upgrades,
            ("upgrade", req.backend, req.uri),
            req,
            slot="",
            cancelled_reply=lambda reason: BackendUpgradeReply(
                success=False, error=_cancelled_text(reason), reports_stopped_processes=True
            ),
            work=lambda f: self._upgrade_work(req, f),
        )

    async def _upgrade_work(
        self, req: BackendUpgradeRequest, flight: Flight[BackendUpgradeReply]
    ) -> BackendUpgradeReply:
        stopped: list[str] = []
        try:
            flight.publisher.tick(Tick(ProgressPhase.RESOLVING, req.backend))
            plan = await self.planner.plan(
                req.backend, req.uri, req.name, req.alias, req.backend_galleries, True
            )
            async with self._locks.hold(plan.lock_name):
                legacy_key = process_key(req.backend, "", req.replica_index)

                async def stop_users() -> None:
                    for proc in self._procs_of(plan.lock_name, extra_key=legacy_key):
                        await self._stop_or_raise(
                            proc, "stopping running backend before upgrade", force=True
                        )
                        stopped.append(proc.key)

                backup = await self._run_pipeline(
                    plan, flight.publisher.tick, keep_backup=True, before_swap=stop_users
                )
                if backup is not None:
                    self.store.keep_previous(_backup_name(backup), backup)
            return _upgrade_reply(stopped)
        except InstallError as err:
            return _upgrade_reply(stopped, UPGRADE_PREFIX + err.cause)
        except AgentError as err:
            return _upgrade_reply(stopped, err.message)
        except asyncio.CancelledError as err:
            return _upgrade_reply(stopped, _cancelled_text(_reason(err)))
        except Exception as err:
            log.exception("upgrade of %s failed unexpectedly", req.backend)
            return _upgrade_reply(stopped, _internal_error(err))
        finally:
            await flight.publisher.flush()

    # --- backend.rollback / backend.previous.drop (extensions) --------------------------------

    async def rollback(self, req: BackendRollbackRequest) -> BackendUpgradeReply:
        """Put back the version the last upgrade replaced; stop its processes, start none.

        Like an upgrade the processes are stopped (forced) before the files change, so no
        process keeps running from a directory that is replaced; the slots come back through
        routine installs, which start them from the restored files.
        """
        name = strip_gallery(req.backend)
        if (error := invalid_name_error(name)) is not None:
            return BackendUpgradeReply(success=False, error=error)
        installed = self.store.lookup(name)
        concrete = installed.name if installed is not None else name
        stopped: list[str] = []
        try:
            async with self._locks.hold(concrete):
                if not self.store.previous(concrete).is_dir():
                    return _upgrade_reply(
                        stopped, f'backend "{name}": no previous version is kept on this node'
                    )
                for proc in self._procs_of(concrete):
                    await self._stop_or_raise(
                        proc, "stopping running backend before rollback", force=True
                    )
                    stopped.append(proc.key)
                self.store.roll_back(concrete)
            log.info("rolled %s back to its previous version", concrete)
            return _upgrade_reply(stopped)
        except AgentError as err:
            return _upgrade_reply(stopped, err.message)
        except OSError as err:
            return _upgrade_reply(stopped, f"rolling back backend {name}: {err.strerror}")

    async def drop_previous(self, req: BackendPreviousDropRequest) -> BackendPreviousDropReply:
        """Forget the kept previous version (the rollout is over); idempotent."""
        name = strip_gallery(req.backend)
        if (error := invalid_name_error(name)) is not None:
            return BackendPreviousDropReply(success=False, error=error)
        installed = self.store.lookup(name)
        concrete = installed.name if installed is not None else name
        async with self._locks.hold(concrete):
            dropped = self.store.drop_previous(concrete)
        return BackendPreviousDropReply(success=True, dropped=dropped)

    # --- backend.delete / backend.stop / queries ---------------------------------------------

    async def delete(self, req: BackendDeleteRequest) -> BackendDeleteReply:
        """Stop the backend's processes and remove it (and meta entries pointing at it)."""
        name = strip_gallery(req.backend)
        if (error := invalid_name_error(name)) is not None:
            return BackendDeleteReply(success=False, error=error)
        installed = self.store.lookup(name)
        if installed is None and self.store.metadata(name) is None:
            return BackendDeleteReply(success=False, error=f'backend "{name}": backend not found')
        lock_name = installed.name if installed is not None else name
        stopped: list[str] = []
        async with self._locks.hold(lock_name):
            for proc in self._procs_of(lock_name):
                await self.supervisor.stop(proc)
                stopped.append(proc.key)
            for meta_name in self.store.metas_pointing_at(lock_name):
                self.store.remove(meta_name)
            if self.store.metadata(name) is not None:
                self.store.remove(name)
            self.store.remove(lock_name)
        return BackendDeleteReply(
            success=True, stopped_process_keys=stopped, reports_stopped_processes=True
        )

    async def stop(self, req: BackendStopRequest | None) -> list[str]:
        """Stop processes by exact key, model id or backend name; ``None``/empty = all."""
        force = req.force if req is not None else False
        target = req.backend if req is not None else ""
        if not target:
            return await self.supervisor.stop_all(force=force)
        procs = [p for p in self.supervisor.all() if p.key == target]
        if not procs:
            procs = [p for p in self.supervisor.all() if _key_base(p.key) == target]
        if not procs:
            installed = self.store.lookup(target)
            concrete = installed.name if installed is not None else strip_gallery(target)
            procs = self._procs_of(concrete)
        await asyncio.gather(*(self.supervisor.stop(p, force=force) for p in procs))
        return [p.key for p in procs]

    def list_backends(self) -> BackendListReply:
        """``backend.list``: ``backends`` is ``null`` when nothing is installed."""
        try:
            rows = self.store.rows()
        except OSError as err:
            return BackendListReply(backends=None, error=str(err))
        return BackendListReply(backends=rows or None)

    def running(self) -> ModelsRunningReply:
        """``models.running``: live, non-stopping processes with their local address."""
        models = []
        for proc in self.supervisor.running():
            parsed = parse_process_key(proc.key)
            if parsed is not None:
                models.append(
                    RunningModelInfo(
                        model_id=parsed[0],
                        replica_index=parsed[1],
                        address=proc.local_address,
                        backend=proc.backend,
                    )
                )
        return ModelsRunningReply(models=models)

    def status(self, req: InstallStatusRequest) -> InstallStatusReply:
        """The status extension: running / in_flight / installed / absent for one slot.

        Every answer carries :attr:`instance_id`.
        """
        return self._slot_status(req).model_copy(update={"instance_id": self.instance_id})

    def _slot_status(self, req: InstallStatusRequest) -> InstallStatusReply:
        key = process_key(req.backend, req.model_id, req.replica_index)
        proc = self._reusable(self.supervisor.get(key), req.backend)
        flights = [
            f
            for f in self._flights()
            if (f.kind == "install" and f.slot == key) or (req.op_id and req.op_id in f.ops)
        ]
        # An upgrade's op is in flight while the old process of the slot still serves (it is
        # stopped just before the swap): asked by op, the op's state is the answer.
        by_op = [f for f in flights if req.op_id and req.op_id in f.ops and f.kind == "upgrade"]
        if proc is not None and not by_op:
            address = routable(self.config.advertise_host, proc.port)
            return InstallStatusReply(state=NodeSlotState.RUNNING, address=address)
        if flights:
            flight = flights[0]
            latest = flight.latest
            progress = None
            if latest is not None:
                op_id = req.op_id if req.op_id in flight.ops else next(iter(flight.ops), "")
                progress = latest.event(op_id, self.config.node_id, flight.backend)
            return InstallStatusReply(state=NodeSlotState.IN_FLIGHT, progress=progress)
        if name_problem(strip_gallery(req.backend)) is None and self.store.lookup(req.backend):
            return InstallStatusReply(state=NodeSlotState.INSTALLED)
        return InstallStatusReply(state=NodeSlotState.ABSENT)

    def cancel(self, op_id: str) -> bool:
        """Cancel op ``op_id`` wherever it is in flight; False when nothing was running for it."""
        found = False
        for flight in self._flights():
            found = flight.cancel_op(op_id, CANCELLED) or found
        return found

    def _flights(self) -> list[Flight[Any]]:
        return [*self._installs.all(), *self._upgrades.all()]

    async def wait_idle(self) -> None:
        """Wait until no install or upgrade is in flight (tests, shutdown)."""
        while tasks := [f.task for f in self._flights() if f.task is not None]:
            await asyncio.gather(*tasks, return_exceptions=True)


def _request_problem(backend: str, name: str, alias: str, op_id: str) -> str | None:
    """The reply error for names that must not become directories or subjects, if any."""
    bare = strip_gallery(backend)
    if not bare:
        return GALLERY_PREFIX + "backend name is empty"
    for field_name, value in (("backend", bare), ("name", name), ("alias", alias)):
        if value and (problem := name_problem(value)) is not None:
            return f'invalid request: invalid {field_name} name "{value}": {problem}'
    if op_id and (problem := subjects.token_problem(op_id)) is not None:
        return f"invalid request: op_id {op_id!r} cannot be used in a subject: {problem}"
    return None


def _upgrade_reply(stopped: list[str], error: str = "") -> BackendUpgradeReply:
    return BackendUpgradeReply(
        success=not error,
        error=error,
        stopped_process_keys=stopped,
        reports_stopped_processes=True,
    )


def _backup_name(backup: Path) -> str:
    """The backend name of a swap backup directory (``<name>.install-backup``)."""
    return backup.name.removesuffix(BACKUP_SUFFIX)


def _internal_error(err: BaseException) -> str:
    """An unexpected failure's reply text: its type only, since its message may quote fetched
    bytes (an HTTP status line, a parser's view of a document); the log has the details."""
    return f"internal error: {type(err).__name__} (see the node agent's log)"


def _cancelled_text(reason: str) -> str:
    return CANCELLED if reason in ("", CANCELLED) else f"{CANCELLED}: {reason}"


def _reason(err: asyncio.CancelledError) -> str:
    return str(err.args[0]) if err.args else ""


def _key_base(key: str) -> str:
    parsed = parse_process_key(key)
    return parsed[0] if parsed is not None else ""
