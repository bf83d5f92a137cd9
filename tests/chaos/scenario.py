"""One slow install on one real node, and what must hold however it was disturbed.

A chaos test builds a :class:`SlowBackend` (a real sample backend whose archive is served
slowly over HTTP, every byte counted), runs a node agent for it, starts an install, injects
its fault mid-install and then calls :func:`assert_survived`: the install returned an
address, the archive went over the wire once, exactly one backend process serves the slot
and nobody asked the node to cancel.
"""

from __future__ import annotations

import contextlib
import tarfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from durable_installs.contracts.install import InstallBackendInput, InstallBackendResult
from durable_installs.devstack.gallery import ThrottledFileServer
from durable_installs.devstack.sample_backend import Gallery, SampleBackend, build_archive
from durable_installs.node_agent import backend_rpc
from durable_installs.protocol.messages import GalleryConfig
from tests.chaos.procs import LiveProcess, processes_under
from tests.ports import CHAOS_PORTS
from tests.workflow_helpers import FAST, wait_for, wait_until
from workflows.install_backend import InstallBackendWorkflow

MIB = 1024 * 1024

INSTALL_WITHIN = 120.0
"""Upper bound for a disturbed install to finish: its download takes a few seconds, recovery
a few heartbeat timeouts; the rest is head-room for a shared machine, never a measurement."""

CHAOS_INPUT: dict[str, Any] = {
    **FAST,
    "install_timeout_seconds": 900.0,
    "deadline_seconds": 600.0,
}
"""The test intervals, except that one install request waits as long as in production (the
default 900 s): recovering from a fault must not depend on a request timing out first."""


def port_block() -> tuple[int, int]:
    """Backend ports for one agent (``tests/ports.py``)."""
    return CHAOS_PORTS.block()


class CountingFileServer(ThrottledFileServer):
    """The devstack's throttled artifact server, also recording each request's ``Range``."""

    def __init__(self, root: Path, rate: int) -> None:
        super().__init__(root, 0, rate)
        self.ranges: list[str | None] = []
        self._lock = threading.Lock()

    def received(self, path: str, range_header: str | None) -> None:
        with self._lock:
            self.ranges.append(range_header)

    def downloads_from_zero(self) -> int:
        """Requests that started the file over (no ``Range``, or ``bytes=0-``)."""
        with self._lock:
            return sum(1 for r in self.ranges if r in (None, "bytes=0-"))


@dataclass
class SlowBackend:
    """A sample backend in a gallery, its archive served at ``rate`` bytes per second.

    ``unpacked_zeros`` adds a file of zeros that compresses to almost nothing but takes a
    while to write out, so the agent spends long enough extracting to be killed there.
    """

    root: Path
    size: int = 4 * MIB
    rate: int = 1 * MIB
    unpacked_zeros: int = 0
    name: str = field(default_factory=lambda: f"cpu-chaos-{uuid.uuid4().hex[:6]}")
    server: CountingFileServer = field(init=False)
    gallery: GalleryConfig = field(init=False)
    archive_size: int = field(init=False)

    def __post_init__(self) -> None:
        archives = self.root / "archives"
        extra: list[tuple[tarfile.TarInfo, bytes]] = []
        if self.unpacked_zeros:
            info = tarfile.TarInfo("zeros.bin")
            info.size = self.unpacked_zeros
            extra.append((info, bytes(self.unpacked_zeros)))
        built = build_archive(
            archives / f"{self.name}.tar.gz",
            SampleBackend(self.name, padding_bytes=self.size),
            extra=extra,
        )
        self.archive_size = built.path.stat().st_size
        self.server = CountingFileServer(archives, self.rate)
        self.server.start()
        gallery = Gallery(path=self.root / "gallery" / "index.yaml", name="chaos")
        gallery.add(
            {"name": self.name, "uri": self.server.url(built.path.name), "sha256": built.sha256}
        )
        self.gallery = gallery.config
        self.path = f"/{built.path.name}"

    def bytes_served(self) -> int:
        return self.server.bytes_served(self.path)

    async def served_at_least(self, fraction: float) -> None:
        """Wait until the download is that far along (counted where the bytes leave)."""
        wanted = int(self.archive_size * fraction)
        await wait_for(
            lambda: self.bytes_served() >= wanted,
            within=INSTALL_WITHIN,
            what=f"{fraction:.0%} of the archive served",
        )

    def assert_mid_download(self) -> None:
        """The fault really hit the download: part of the archive is still to be served."""
        served = self.bytes_served()
        assert served < self.archive_size, (
            f"the fault came too late: all {served} bytes were already served"
        )

    def stop(self) -> None:
        self.server.stop()


class CancelWatch:
    """Records every ``nodes.<node>.backend.install.<op>.cancel`` the node would receive.

    Its connection reconnects forever (and to any server of a cluster), so it keeps watching
    through a NATS outage.
    """

    def __init__(self, node_id: str) -> None:
        self.subject = f"nodes.{node_id}.backend.install.*.cancel"
        self.seen: list[str] = []
        self._nc: NATS | None = None

    async def start(self, nats_url: str) -> CancelWatch:
        self._nc = await nats.connect(
            servers=nats_url.split(","),
            name="chaos-cancel-watch",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        )

        async def record(msg: Msg) -> None:
            self.seen.append(msg.subject)

        await self._nc.subscribe(self.subject, cb=record)
        await self._nc.flush()
        return self

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()


def install_input(node_id: str, backend: str, **overrides: Any) -> InstallBackendInput:
    fields: dict[str, Any] = {"node_id": node_id, "backend": backend, "model_id": "chaos"}
    return InstallBackendInput(**{**fields, **CHAOS_INPUT, **overrides})


async def start_install(
    client: Client, task_queue: str, input: InstallBackendInput
) -> WorkflowHandle[InstallBackendWorkflow, InstallBackendResult]:
    return await client.start_workflow(
        InstallBackendWorkflow.run,
        input,
        id=f"chaos-{input.node_id}",
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=20),
    )


async def wait_closed(handle: WorkflowHandle[Any, Any], within: float, what: str) -> None:
    """Wait for a workflow to close, asking the server (which may be restarting) twice a
    second; on time out, fail naming the activities still pending and their last failure."""

    async def closed() -> bool:
        try:
            status = (await handle.describe()).status
        except Exception:  # Temporal restarting: ask again
            return False
        return status not in (None, WorkflowExecutionStatus.RUNNING)

    try:
        await wait_until(closed, within=within, what=what, interval=0.5)
    except AssertionError as err:
        pending = (await handle.describe()).raw_description.pending_activities
        waiting = [
            f"{a.activity_type.name} attempt {a.attempt}: {a.last_failure.message[:200]}"
            for a in pending
        ]
        raise AssertionError(f"{err}; still waiting on: {waiting or 'no activity'}") from None


async def install_result(
    handle: WorkflowHandle[InstallBackendWorkflow, InstallBackendResult],
) -> InstallBackendResult:
    """Wait for the install to close, then return its result; a failed install raises its
    failure."""
    await wait_closed(handle, INSTALL_WITHIN, "the install finished")
    return await handle.result()


def backend_processes(backends_dir: Path) -> list[LiveProcess]:
    """Backend servers running from the node's backends directory (any version)."""
    return [p for p in processes_under(backends_dir) if p.option("--addr") is not None]


async def assert_survived(
    result: InstallBackendResult,
    backend: SlowBackend,
    backends_dir: Path,
    cancels: CancelWatch,
) -> None:
    """What every chaos test proves once its install has returned.

    Every broken promise is listed in one failure, so a single run shows all that a fault
    broke (a cancel usually comes with a second download, for instance).
    """
    host, _, port = result.address.rpartition(":")
    assert host == "127.0.0.1" and port.isdigit(), f"no routable address: {result.address!r}"
    broken: list[str] = []

    served, from_zero = backend.bytes_served(), backend.server.downloads_from_zero()
    if from_zero != 1 or not backend.archive_size <= served < 2 * backend.archive_size:
        broken.append(
            f"not exactly one full download: {served} bytes served for an archive of "
            f"{backend.archive_size}, {from_zero} request(s) from the start "
            f"(Range headers: {backend.server.ranges})"
        )

    def one_process() -> bool:
        return len(backend_processes(backends_dir)) == 1

    with contextlib.suppress(AssertionError):  # reported below with what runs
        await wait_for(one_process, within=15, what="exactly one backend process")
    processes = backend_processes(backends_dir)
    if len(processes) != 1:
        found = [" ".join(p.argv) for p in processes]
        broken.append(f"{len(processes)} backend processes instead of one: {found}")
    elif processes[0].option("--addr") != f"127.0.0.1:{port}":
        broken.append(
            f"the one backend process listens on {processes[0].option('--addr')}, "
            f"the install returned {result.address}"
        )
    elif not await backend_rpc.health(f"127.0.0.1:{port}", call_timeout=5):
        broken.append(f"the backend at {result.address} does not answer Health")

    if cancels.seen:
        broken.append(f"cancel sent to the node: {cancels.seen}")
    assert not broken, "; ".join(broken)
