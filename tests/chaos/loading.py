"""One multi-file model load on one real node, and what must hold however it was disturbed.

A load chaos test runs a node agent with its file-transfer server on, a worker process that
stages from a trusted ``file://`` directory at a limited rate (so a fault lands mid-file),
and a :class:`~durable_installs.servers.ByteCounter` between the two: the load's
``files_url`` is the proxy, so every byte the worker sent to the node is counted outside the
worker. The test waits until the node holds part of the second file, injects its fault, and
calls :meth:`StagedLoad.assert_loaded`: the workflow completed, the backend loaded the model,
each file on the node has its sha256, no partial is left, and the bytes sent again are at
most 5 % of the model.

Re-sent bytes = body bytes of every ``PUT`` through the proxy - the model's size. Heads,
``HEAD`` requests and responses are not counted; a body the proxy read but the node never
stored (it died meanwhile) is, since the worker sent it and a resume sends it again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle

from durable_installs.contracts.load import (
    FileState,
    LoadModelInput,
    LoadModelResult,
    LoadPhase,
)
from durable_installs.contracts.names import STAGE_FILE_ACTIVITY
from durable_installs.node_agent.files.keys import PARTIAL_DIR
from durable_installs.servers import ByteCounter
from tests.chaos.components import WorkerProcess
from tests.chaos.conftest import ChaosNode, Harness
from tests.chaos.scenario import CHAOS_INPUT, MIB, wait_closed
from tests.workflow_helpers import wait_for, wait_until
from workflows.load_model import LoadModelWorkflow

TOKEN = "chaos-files-token"
FILES = 3
FILE_SIZE = 16 * MIB
RATE = "4M"
"""Per transfer (``--staging-rate-limit``): a 16 MiB file takes 4 s, so the fault lands
mid-file however slow the machine is, and the whole staging about 12 s."""
HEARTBEAT_TIMEOUT = 5.0
RESENT_AT_MOST = 0.05
"""Bytes sent twice, as a share of the model, beyond what a killed node never stored: a
resume continues at the node's committed size, so only what was in flight when the fault hit
may go again. A killed agent also loses what sat in its socket buffer and its 1 MiB write
buffer; on a loaded machine that was 3.75 MiB, so that test measures it (the proxy's count
minus the partial the dead agent left) and checks the resume starts exactly there."""
LOAD_WITHIN = 120.0
"""Upper bound for a disturbed load to finish: head-room on a shared machine, not a measure."""


def write_model(directory: Path, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Files of random bytes (whole MiB); their ``files`` entries (uri, sha256, size, path)."""
    directory.mkdir(parents=True, exist_ok=True)
    specs = []
    for index, size in enumerate(sizes):
        path = directory / f"model-{index}.bin"
        digest = hashlib.sha256()
        with path.open("wb") as out:
            for _ in range(size // MIB):
                block = os.urandom(MIB)
                digest.update(block)
                out.write(block)
        specs.append(
            {
                "uri": path.as_uri(),
                "sha256": digest.hexdigest(),
                "size": size,
                "path": f"chaos/model-{index}.bin",
            }
        )
    return specs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class StagedLoad:
    """A load of a :data:`FILES`-file model through the counting proxy, and its checks."""

    chaos: Harness
    client: Client
    node: ChaosNode
    files: list[dict[str, Any]]
    proxy: ByteCounter
    sources: Path
    handle: WorkflowHandle[LoadModelWorkflow, LoadModelResult] | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(int(spec["size"]) for spec in self.files)

    async def worker(self, temporal_address: str, nats_url: str, name: str) -> WorkerProcess:
        """A worker process that trusts the sources and holds the node's files token."""
        worker = await self.chaos.worker(
            temporal_address,
            nats_url,
            name,
            args=[
                "--allow-model-source",
                self.sources.as_uri() + "/",
                "--model-cache-dir",
                str(self.chaos.workdir / "model-cache"),
                "--staging-rate-limit",
                RATE,
            ],
            env={"NODE_FILES_TOKEN": TOKEN},
        )
        self.workers.append(worker)
        return worker

    async def start(self, client: Client | None = None) -> None:
        """Start the load (on ``client``, else the one it was built with)."""
        input = LoadModelInput.model_validate(
            {
                "node_id": self.node.node_id,
                "backend": self.node.backend.name,
                "model_id": "chaos",
                "files": self.files,
                "install_options": CHAOS_INPUT,
                "files_url": self.proxy.url,
                "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT,
                "stage_stall_seconds": 30,
                "deadline_seconds": 900,
            }
        )
        assert not input.problems(), input.problems()
        self.handle = await (client or self.client).start_workflow(
            LoadModelWorkflow.run,
            input,
            id=f"chaos-load-{self.node.node_id}",
            task_queue=self.chaos.task_queue,
            execution_timeout=timedelta(minutes=20),
        )

    # --- where the staging is --------------------------------------------------------------

    def on_node(self, position: int) -> Path:
        return self.node.models_dir / str(self.files[position]["path"])

    def partial_size(self, position: int) -> int:
        """Bytes of file ``position`` the node holds as a partial upload (0: none)."""
        name = hashlib.sha256(self.files[position]["path"].encode()).hexdigest()
        try:
            return (self.node.models_dir / PARTIAL_DIR / f"{name}.part").stat().st_size
        except FileNotFoundError:
            return 0

    async def node_holds_part_of(self, position: int, fraction: float) -> None:
        """Wait until the node has that share of file ``position`` as a partial upload."""
        wanted = int(self.files[position]["size"] * fraction)
        await wait_for(
            lambda: self.partial_size(position) >= wanted,
            within=LOAD_WITHIN,
            what=f"{fraction:.0%} of file {position} on the node",
            interval=0.05,
        )

    def assert_mid_file(self, position: int) -> None:
        """The fault really hit the transfer of file ``position``: it is not in place yet."""
        assert not self.on_node(position).exists(), (
            f"the fault came too late: file {position} was already in place"
        )

    def resumed(self, position: int) -> bool:
        """Whether a PUT of file ``position`` continued a partial (``Content-Range`` from > 0)."""
        return any(start > 0 for start, _ in self.puts_of(position))

    def puts_of(self, position: int) -> list[tuple[int, int]]:
        """Each PUT of file ``position`` through the proxy: (first byte, body bytes)."""
        suffix = "/" + str(self.files[position]["path"])
        puts = []
        for request in self.proxy.requests_of("PUT", suffix):
            span = (request.content_range or "bytes 0-").removeprefix("bytes ")
            puts.append((int(span.split("-", 1)[0] or 0), request.body))
        return puts

    async def staging_attempt_at_least(self, attempt: int) -> None:
        """Wait until the server has scheduled that attempt of a file's staging."""
        assert self.handle is not None
        handle = self.handle

        async def scheduled() -> bool:
            try:
                pending = (await handle.describe()).raw_description.pending_activities
            except Exception:  # Temporal restarting: ask again
                return False
            return any(
                a.activity_type.name == STAGE_FILE_ACTIVITY and a.attempt >= attempt
                for a in pending
            )

        await wait_until(scheduled, within=LOAD_WITHIN, what=f"staging attempt {attempt}")

    def resent(self) -> int:
        """Body bytes of every PUT through the proxy, beyond the model's size."""
        return self.proxy.body_bytes("PUT") - self.total

    # --- the outcome -----------------------------------------------------------------------

    async def result(self, client: Client | None = None) -> LoadModelResult:
        """Wait for the load to close (asking the server, which may be restarting); its result."""
        assert self.handle is not None
        handle = self.handle
        if client is not None:
            handle = client.get_workflow_handle_for(LoadModelWorkflow.run, handle.id)

        await wait_closed(handle, LOAD_WITHIN, "the load finished")
        self.handle = handle
        return await handle.result()

    async def assert_loaded(self, result: LoadModelResult, lost_in_flight: int = 0) -> None:
        """What every load chaos test proves once its load returned; every broken promise is
        listed in one failure. ``lost_in_flight``: bytes the proxy had passed on that a killed
        node never stored (in its socket and write buffers), which must go again."""
        assert self.handle is not None
        broken: list[str] = []
        host, _, port = result.address.rpartition(":")
        if host != "127.0.0.1" or not port.isdigit():
            broken.append(f"no routable address: {result.address!r}")
        phase = (await self.handle.query(LoadModelWorkflow.progress)).phase
        if phase is not LoadPhase.READY:
            broken.append(f"the load is {phase.value}, not ready")
        if not result.load_message.startswith("loaded model-0.bin"):
            broken.append(f"the backend did not load the model: {result.load_message!r}")
        for position, (spec, staged) in enumerate(zip(self.files, result.files, strict=True)):
            on_node = self.on_node(position)
            if staged.state not in (FileState.STAGED, FileState.PRESENT):
                broken.append(f"file {position} is {staged.state.value}")
            if staged.local_path != str(on_node):
                broken.append(f"file {position} reported at {staged.local_path}, not {on_node}")
            if not on_node.is_file():
                broken.append(f"file {position} is not on the node")
            elif sha256_of(on_node) != spec["sha256"]:
                broken.append(f"file {position} on the node does not have its sha256")
        left = sorted(p.name for p in (self.node.models_dir / PARTIAL_DIR).glob("*.part"))
        if left:
            broken.append(f"partial uploads left on the node: {left}")
        if dropped := self.proxy.requests_of("DELETE"):
            broken.append(f"the worker asked the node to drop: {[r.path for r in dropped]}")
        resent, limit = self.resent(), int(self.total * RESENT_AT_MOST) + lost_in_flight
        puts = [(r.content_range, r.body) for r in self.proxy.requests_of("PUT")]
        if resent < 0:
            broken.append(
                f"only {self.total + resent} of {self.total} bytes went through the proxy"
            )
        elif resent > limit:
            broken.append(
                f"{resent} bytes sent again ({resent / self.total:.1%} of {self.total}; at "
                f"most {limit}); the PUTs (Content-Range, body bytes): {puts}"
            )
        assert not broken, "; ".join(broken) + f" (the workflow counted {result.bytes_sent} sent)"
        print(  # shown with -s: the figures of the run
            f"\nload of {self.total} bytes: {resent} sent again ({resent / self.total:.2%}); "
            f"the workflow counted {result.bytes_sent}; PUTs {puts}"
        )


async def staged_load(
    chaos: Harness, client: Client, nats_url: str, sizes: Sequence[int] = (FILE_SIZE,) * FILES
) -> StagedLoad:
    """A node agent with its file server on ``nats_url`` (a small backend, installed in a
    second or two), the model's sources, and the proxy in front of the node's file port.
    No worker yet, no load; the harness stops the proxy and removes the sources."""
    node = await chaos.node(nats_url, files_token=TOKEN, size=256 * 1024, rate=16 * MIB)
    sources = chaos.workdir / f"sources-{uuid.uuid4().hex[:6]}"
    files = write_model(sources, sizes)
    proxy = await ByteCounter("127.0.0.1", node.files_port).start()

    async def clean_up() -> None:
        await proxy.stop()
        shutil.rmtree(sources, ignore_errors=True)

    chaos.on_close(clean_up)
    return StagedLoad(chaos, client, node, files, proxy, sources)
