"""Node agents announce themselves in the JetStream KV bucket; ``list_nodes`` reads it.

Real nats-server with JetStream, real agents. The bucket is shared by the whole session, so
every check looks only at this test's node id.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.exceptions import ApplicationError

from activities.fleet import FleetActivities
from durable_installs.contracts.nodes import NODE_ANNOUNCE_TTL_SECONDS, FleetView, NodeAnnouncement
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent import NatsOptions
from durable_installs.protocol.announce import announcement_key, open_registry
from durable_installs.servers import nats_server
from tests.backendctl.cli import run_ctl
from tests.node_agent.agent_process import agent_command, running_agent
from tests.node_agent.conftest import AgentFactory
from tests.workflow_helpers import wait_until


async def fleet_of(nc: NATS, node_id: str) -> FleetView:
    """The registry as ``list_nodes`` reads it, cut down to one node id."""
    view = await FleetActivities(nc).list_nodes()
    return FleetView(
        nodes=[n for n in view.nodes if n.node_id == node_id],
        duplicates=[d for d in view.duplicates if d == node_id],
        skipped_entries=view.skipped_entries,
    )


def forged(node_id: str, instance_id: str) -> NodeAnnouncement:
    now = datetime.now(UTC)
    return NodeAnnouncement(
        node_id=node_id, instance_id=instance_id, started_at=now, announced_at=now
    )


async def test_a_started_agent_is_in_the_registry_with_its_identity(
    nc: NATS, start_agent: AgentFactory
) -> None:
    node = await start_agent()

    view = await fleet_of(nc, node.node_id)

    assert [n.instance_id for n in view.nodes] == [node.agent.service.instance_id]
    announced = view.nodes[0]
    assert announced.capability == "default"
    assert announced.agent_version
    assert announced.backends == [] and announced.running == []
    assert view.duplicates == []


async def test_the_entry_follows_what_the_agent_installs_and_runs(
    nc: NATS, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo", version="2.1.0"), archives)
    node = await start_agent(announce_interval=0.2)
    assert (await node.install("cpu-echo", model_id="qwen3")).success

    async def announced_install() -> bool:
        view = await fleet_of(nc, node.node_id)
        return bool(view.nodes) and bool(view.nodes[0].running)

    await wait_until(announced_install, what="the install in the node's registry entry")
    entry = (await fleet_of(nc, node.node_id)).nodes[0]
    assert [(b.name, b.version) for b in entry.backends] == [("cpu-echo", "2.1.0")]
    assert [(m.model_id, m.replica_index, m.backend) for m in entry.running] == [
        ("qwen3", 0, "cpu-echo")
    ]


async def test_a_clean_stop_removes_the_entry(nc: NATS, start_agent: AgentFactory) -> None:
    node = await start_agent()
    assert (await fleet_of(nc, node.node_id)).nodes

    await node.agent.stop()

    assert (await fleet_of(nc, node.node_id)).nodes == []


async def test_two_processes_announcing_one_node_id_are_reported_as_a_duplicate(
    nc: NATS, start_agent: AgentFactory
) -> None:
    node = await start_agent()
    kv = await open_registry(nc, create=True)
    other = forged(node.node_id, uuid.uuid4().hex)
    await kv.put(announcement_key(other.node_id, other.instance_id), other.to_wire())

    view = await fleet_of(nc, node.node_id)

    assert len(view.nodes) == 2
    assert view.duplicates == [node.node_id]
    await kv.delete(announcement_key(other.node_id, other.instance_id))


async def test_entries_that_are_unreadable_or_name_another_node_than_their_key_are_skipped(
    nc: NATS, node_id: str
) -> None:
    kv = await open_registry(nc, create=True)
    impostor = forged("someone-else", uuid.uuid4().hex)
    await kv.put(f"{node_id}.{impostor.instance_id}", impostor.to_wire())
    await kv.put(f"{node_id}.garbage", b"{not json")

    view = await FleetActivities(nc).list_nodes()

    assert not [n for n in view.nodes if n.node_id in (node_id, "someone-else")]
    assert view.skipped_entries >= 2
    await kv.delete(f"{node_id}.{impostor.instance_id}")
    await kv.delete(f"{node_id}.garbage")


async def test_an_agent_on_a_server_without_jetstream_still_serves(
    start_agent: AgentFactory,
) -> None:
    with nats_server() as plain_url:
        node = await start_agent(nats=NatsOptions(url=plain_url))
        assert node.agent.announcer is not None and node.agent.announcer.announced == 0
        await node.agent.stop()


async def test_a_killed_agents_entry_expires_with_the_ttl(
    nc: NATS,
    nats_url: str,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    port_range: tuple[int, int],
) -> None:
    command = agent_command(node_id, tmp_path / "backends", gallery, nats_url, port_range)
    async with running_agent(command, tmp_path / "agent.log") as agent:
        assert (await fleet_of(nc, node_id)).nodes, "announced once ready"
        await agent.kill()  # SIGKILL: no goodbye

        assert (await fleet_of(nc, node_id)).nodes, "the entry outlives the process for a while"

        async def expired() -> bool:
            return not (await fleet_of(nc, node_id)).nodes

        await wait_until(
            expired, within=NODE_ANNOUNCE_TTL_SECONDS + 60, interval=1.0, what="the TTL expiry"
        )


async def test_list_nodes_without_jetstream_fails_saying_what_to_turn_on() -> None:
    with nats_server() as plain_url:
        plain = await NatsOptions(url=plain_url).connect("test-plain")
        try:
            with pytest.raises(ApplicationError) as failure:
                await FleetActivities(plain).list_nodes()
        finally:
            await plain.close()

    assert failure.value.type == "RegistryUnavailable"
    assert "JetStream (-js)" in failure.value.message


async def test_backendctl_nodes_lists_the_announced_fleet_without_being_told_any_node(
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
    nats_url: str,
    temporal_address: str,
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo", version="2.1.0"), archives)
    node = await start_agent(announce_interval=0.2)
    assert (await node.install("cpu-echo", model_id="qwen3")).success
    seen: dict[str, Any] = {}

    async def listed_with_its_slot() -> bool:
        out = await asyncio.to_thread(
            run_ctl, "nodes", "--json", address=temporal_address, env={"NATS_URL": nats_url}
        )
        assert out.returncode == 0, out.stderr
        reports = {r["node_id"]: r for r in json.loads(out.stdout)}
        seen.update(reports.get(node.node_id) or {})
        return bool(seen.get("running"))

    await wait_until(listed_with_its_slot, what="the node and its slot in backendctl nodes")
    assert seen["source"] == "registry" and seen["capability"] == "default"
    assert seen["agent_version"] and seen["last_seen"] and seen["agents"] == 1
    assert seen["backends"] == [{"name": "cpu-echo", "version": "2.1.0"}]
    assert [(m["model_id"], m["replica_index"]) for m in seen["running"]] == [("qwen3", 0)]


async def test_backendctl_backends_reads_the_galleries_the_nodes_announce(
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
    nats_url: str,
    temporal_address: str,
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo", version="2.1.0"), archives)
    node = await start_agent()
    assert (await node.install("cpu-echo")).success

    out = await asyncio.to_thread(
        run_ctl, "backends", "--json", address=temporal_address, env={"NATS_URL": nats_url}
    )

    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["cpu-echo"]["version"] == "2.1.0"
