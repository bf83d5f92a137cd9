"""A long install continues as new when the server suggests it, and keeps its op."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode
from tests.servers import find_binary
from tests.workflow_helpers import assert_replays, install_input, start_install
from worker_main import create_worker
from workflows.install_backend import InstallBackendWorkflow
from workflows.models import SEARCH_ATTRIBUTES


@pytest.fixture(scope="module")
async def small_history_client() -> AsyncIterator[Client]:
    """A dev server that suggests continue-as-new after 40 history events."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=40",
        ],
    )
    yield env.client
    await env.shutdown()


async def test_long_install_continues_as_new_and_keeps_its_op_and_counters(
    small_history_client: Client, nc: NATS, node_id: str
) -> None:
    client = small_history_client
    node = await FakeNode(nc, node_id).start()
    pulling = asyncio.Event()

    async def long_pull(request: BackendInstallRequest, number: int) -> BackendInstallReply | None:
        if number == 1:
            await node.stream_progress(request.op_id, request.backend, pulling, interval=0.1)
            return None
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = long_pull
    queue = f"can-{uuid.uuid4().hex[:8]}"
    async with create_worker(client, nc, queue):
        handle = await start_install(
            client,
            queue,
            install_input(node_id, install_timeout_seconds=1, probe_interval_seconds=0.1),
        )
        first_run = (await handle.describe()).run_id
        # Wait for a later run of the same workflow id to exist.
        latest = client.get_workflow_handle_for(InstallBackendWorkflow.run, handle.id)
        for _ in range(600):
            if (await latest.describe()).run_id != first_run:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the workflow never continued as new")
        status = await latest.query(InstallBackendWorkflow.progress)
        node.mark_running(node.install_requests[0])
        pulling.set()
        result = await latest.result()

    assert result.attempts >= 2 and result.probes >= status.probes
    assert result.started_at == status.started_at
    assert {body["op_id"] for body in node.install_bodies} == {result.op_id}
    await node.stop()
    await assert_replays(client.get_workflow_handle(handle.id, run_id=first_run))
