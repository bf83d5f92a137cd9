"""The probe: what a node has for a slot, from the status extension or stock subjects."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NATS
from temporalio.testing import ActivityEnvironment

from activities.probe import ProbeActivities
from durable_installs.contracts.activities import ProbeInput, ProbeResult, ProbeState
from durable_installs.protocol.messages import (
    BackendInstallProgressEvent,
    GalleryConfig,
    InstallStatusReply,
    NodeBackendInfo,
    RunningModelInfo,
    encode_galleries,
)
from tests.fake_node import FakeNode


async def probe(nc: NATS, node_id: str, **fields: object) -> ProbeResult:
    input = ProbeInput.model_validate(
        {"node_id": node_id, "backend": "llama-cpp", "listen_seconds": 0.5, **fields}
    )
    return await ActivityEnvironment().run(ProbeActivities(nc).probe_slot, input)


async def test_running_slot_is_reported_with_its_local_address(nc: NATS, node_id: str) -> None:
    node = await FakeNode(nc, node_id).start()
    node.running = [RunningModelInfo(model_id="qwen3", replica_index=1, address="127.0.0.1:50052")]

    result = await probe(nc, node_id, model_id="qwen3", replica_index=1)

    assert result.state == ProbeState.RUNNING and result.source == "stock"
    assert result.address == "127.0.0.1:50052"
    await node.stop()


async def test_another_replica_running_does_not_count_as_this_slot(nc: NATS, node_id: str) -> None:
    node = await FakeNode(nc, node_id).start()
    node.running = [RunningModelInfo(model_id="qwen3", replica_index=0)]

    result = await probe(nc, node_id, model_id="qwen3", replica_index=1)

    assert result.state == ProbeState.ABSENT
    await node.stop()


async def test_progress_events_on_the_op_mean_in_flight(nc: NATS, node_id: str) -> None:
    node = await FakeNode(nc, node_id).start()
    streaming = asyncio.Event()
    node.spawn(_stream_until(node, "op-7", streaming))

    result = await probe(nc, node_id, op_id="op-7")
    streaming.set()

    assert result.state == ProbeState.IN_FLIGHT
    assert result.events_seen >= 1 and result.last_event is not None
    await node.stop()


async def _stream_until(node: FakeNode, op_id: str, until: asyncio.Event) -> None:
    await node.stream_progress(op_id, "llama-cpp", until, interval=0.1)


async def test_backend_on_disk_but_not_running_is_installed(nc: NATS, node_id: str) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="llama-cpp")]

    result = await probe(nc, node_id)

    assert result.state == ProbeState.INSTALLED and result.installed_backend == "llama-cpp"
    await node.stop()


async def test_meta_name_maps_to_its_concrete_through_the_gallery(
    nc: NATS, node_id: str, tmp_path: Path
) -> None:
    index = tmp_path / "index.yaml"
    index.write_text(
        "- name: llama-cpp\n  capabilities: {default: cpu-llama-cpp}\n"
        "- name: cpu-llama-cpp\n  alias: llama-cpp\n  uri: file:///nowhere.tar\n"
    )
    galleries = encode_galleries([GalleryConfig(url=f"file://{index}", name="local")])
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="cpu-llama-cpp"), NodeBackendInfo(name="whisper")]

    result = await probe(nc, node_id, galleries_json=galleries)

    assert result.state == ProbeState.INSTALLED
    assert result.installed_backend == "cpu-llama-cpp"
    await node.stop()


async def test_without_a_gallery_a_variant_prefixed_name_counts_as_the_concrete(
    nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="cuda12-llama-cpp")]

    result = await probe(nc, node_id)

    assert result.state == ProbeState.INSTALLED
    assert result.installed_backend == "cuda12-llama-cpp"
    assert any("by its name" in note for note in result.notes)
    await node.stop()


async def test_nothing_on_the_node_is_absent(nc: NATS, node_id: str) -> None:
    node = await FakeNode(nc, node_id).start()

    result = await probe(nc, node_id, op_id="op-1")

    assert result.state == ProbeState.ABSENT and result.node_answered
    await node.stop()


async def test_an_offline_node_is_unknown_never_absent(nc: NATS, node_id: str) -> None:
    result = await probe(nc, node_id)

    assert result.state == ProbeState.UNKNOWN
    assert result.node_offline and not result.node_answered


async def test_the_status_extension_is_preferred_when_the_node_speaks_it(
    nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.running = [RunningModelInfo(model_id="llama-cpp", replica_index=0)]
    event = BackendInstallProgressEvent(
        op_id="op-1", node_id=node_id, backend="llama-cpp", percentage=30
    )
    await node.answer_status(InstallStatusReply(state="in_flight", progress=event))

    result = await probe(nc, node_id, op_id="op-1", model_id="m", replica_index=2)

    assert result.state == ProbeState.IN_FLIGHT and result.source == "status"
    assert result.last_event == event
    assert node.status_requests == [
        {"op_id": "op-1", "backend": "llama-cpp", "model_id": "m", "replica_index": 2}
    ]
    await node.stop()


async def test_status_extension_running_carries_the_routable_address(
    nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    await node.answer_status(InstallStatusReply(state="running", address="10.0.0.7:50051"))

    result = await probe(nc, node_id)

    assert result.state == ProbeState.RUNNING and result.address == "10.0.0.7:50051"
    await node.stop()
