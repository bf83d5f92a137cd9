"""The three things every benchmark times, written once: raw NATS, minimal workflow, install.

Each returns when the result is in the client's hands (start-to-result), which is what a
caller of the install would wait for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from temporalio.client import Client, WorkflowHandle

from activities.closings import Closings
from bench.baseline import MINIMAL_WORKFLOW, install_body
from bench.stack import Stack
from durable_installs.contracts.install import InstallBackendInput, InstallBackendResult
from durable_installs.contracts.names import INSTALL_WORKFLOW
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallReply


def run_id() -> str:
    """A short tag that keeps workflow ids and node ids unique across rounds."""
    return uuid.uuid4().hex[:8]


def install_input(node_id: str, **options: object) -> InstallBackendInput:
    return InstallBackendInput.model_validate(
        {"node_id": node_id, "backend": "llama-cpp", "model_id": f"m-{node_id}", **options}
    )


async def raw_request(stack: Stack, node_id: str) -> str:
    """The floor LocalAI's direct path pays: one request-reply, reply parsed."""
    msg = await stack.nc.request(subjects.install(node_id), install_body(node_id), timeout=60)
    return BackendInstallReply.model_validate_json(msg.data).address


async def start_minimal(stack: Stack, node_id: str) -> WorkflowHandle[object, str]:
    return await stack.client.start_workflow(
        MINIMAL_WORKFLOW,
        node_id,
        id=f"minimal-{node_id}",
        task_queue=stack.baseline_queue,
        result_type=str,
    )


async def start_install(
    stack: Stack, node_id: str, **options: object
) -> WorkflowHandle[object, InstallBackendResult]:
    return await stack.client.start_workflow(
        INSTALL_WORKFLOW,
        install_input(node_id, **options),
        id=f"install-{node_id}",
        task_queue=stack.install_queue,
        result_type=InstallBackendResult,
    )


async def minimal(stack: Stack, node_id: str) -> object:
    return await (await start_minimal(stack, node_id)).result()


async def install(stack: Stack, node_id: str) -> object:
    return await (await start_install(stack, node_id)).result()


Workload = Callable[[Stack, str], Awaitable[object]]
WORKLOADS: dict[str, Workload] = {"raw_nats": raw_request, "minimal": minimal, "install": install}


async def timed(workload: Workload, stack: Stack, node_id: str) -> float:
    """Seconds from start to result."""
    began = time.perf_counter()
    await workload(stack, node_id)
    return time.perf_counter() - began


async def burst(workload: Workload, stack: Stack, count: int, tag: str) -> float:
    """Start ``count`` at once, wait for every result; seconds from first start to last result."""
    began = time.perf_counter()
    await asyncio.gather(*(workload(stack, f"{tag}-{i}") for i in range(count)))
    return time.perf_counter() - began


async def all_closed(client: Client, workflow_ids: list[str], poll: float = 0.5) -> None:
    """Until every one of ``workflow_ids`` has closed, asked of visibility every ``poll``
    seconds: a benchmark waiting on thousands of installs holds no long poll per install
    (the server caps a namespace's concurrent long polls; bench/README.md)."""
    closings = Closings(client, workflow_ids)
    while closings.pending:
        await asyncio.sleep(poll)
        await closings.closed()


async def warm_up(stack: Stack, rounds: int = 5) -> None:
    """Import, sandbox and connection costs paid once, before anything is timed."""
    for i in range(rounds):
        for name, workload in WORKLOADS.items():
            await workload(stack, f"warm-{name}-{run_id()}-{i}")
