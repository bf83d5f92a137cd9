"""Fixtures for node agent tests: a gallery in tmp_path, an agent on the real NATS server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from durable_installs.devstack.sample_backend import Gallery
from durable_installs.node_agent import Agent, AgentConfig, NatsOptions
from tests.node_agent.helpers import ArtifactServer, NodeClient
from tests.ports import AGENT_PORTS

ADVERTISE_HOST = "127.0.0.2"
"""Routable on Linux loopback yet different from the agent's local 127.0.0.1 address."""


@pytest.fixture
def port_range() -> tuple[int, int]:
    """A block of 20 ports no other test uses, in this or a parallel worker."""
    return AGENT_PORTS.block()


@pytest.fixture
def gallery(tmp_path: Path) -> Gallery:
    """An empty YAML gallery index under tmp_path; tests add backends to it."""
    gallery = Gallery(path=tmp_path / "gallery" / "index.yaml")
    gallery.write()
    return gallery


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """Where tests build backend archives."""
    return tmp_path / "archives"


@pytest.fixture
def artifact_server() -> Iterator[ArtifactServer]:
    """An HTTP server for artifacts on 127.0.0.1."""
    server = ArtifactServer()
    server.start()
    yield server
    server.stop()


def fast_config(
    node_id: str, backends_dir: Path, gallery: Gallery, nats_url: str, ports: tuple[int, int]
) -> AgentConfig:
    """Reference behaviour with short timings so the suite stays quick."""
    return AgentConfig(
        node_id=node_id,
        backends_dir=backends_dir,
        galleries=(gallery.config,),
        advertise_host=ADVERTISE_HOST,
        port_range=ports,
        capability="default",
        nats=NatsOptions(url=nats_url),
        readiness_timeout=20.0,
        readiness_poll=0.05,
        stop_grace=3.0,
        free_timeout=1.0,
        port_quarantine=0.0,
        download_stall_timeout=30.0,
    )


AgentFactory = Callable[..., Awaitable[NodeClient]]


@pytest.fixture
async def start_agent(
    nats_url: str,
    nc: NATS,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    port_range: tuple[int, int],
) -> AsyncIterator[AgentFactory]:
    """Start an in-process agent (config overrides as keyword arguments); stopped at teardown."""
    agents: list[Agent] = []

    async def start(**overrides: Any) -> NodeClient:
        config = fast_config(node_id, tmp_path / "backends", gallery, nats_url, port_range)
        config = replace(config, **overrides)
        agent = Agent(config)
        await agent.start()
        agents.append(agent)
        return NodeClient(nc, node_id, agent, gallery, config.backends_dir)

    yield start
    for agent in agents:
        await agent.stop()


@pytest.fixture
async def node(start_agent: AgentFactory) -> NodeClient:
    """A started agent with default test settings."""
    return await start_agent()
