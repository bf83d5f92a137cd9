"""Installing a backend: progress, routable address, health, idempotency, process life cycle."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from durable_installs.devstack.sample_backend import SampleBackend
from durable_installs.node_agent import backend_rpc
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendStopRequest, ProgressPhase
from tests.node_agent.conftest import ADVERTISE_HOST
from tests.node_agent.helpers import NodeClient, eventually


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def test_fresh_install_streams_progress_in_all_four_phases(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)

    reply = await node.install("cpu-echo", op_id="op-fresh")

    assert reply.success, reply.error
    events = node.events["op-fresh"]
    await eventually(lambda: bool(events) and events[-1].percentage == 100.0, "final flush")
    phases = [e.phase for e in events]
    assert [p for p in ProgressPhase if p.value in phases] == list(ProgressPhase)
    assert phases.index("resolving") < phases.index("downloading") < phases.index("extracting")
    assert phases.index("extracting") < phases.index("starting")
    assert all(e.op_id == "op-fresh" and e.node_id == node.node_id for e in events)
    assert all(e.backend == "cpu-echo" for e in events)
    downloading = [e for e in events if e.phase == "downloading" and e.total]
    assert downloading and downloading[-1].current.endswith(("B", "KiB"))


async def test_fresh_install_replies_with_the_advertised_address_of_a_healthy_process(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)

    reply = await node.install("cpu-echo", model_id="m1")

    host, port = reply.address.rsplit(":", 1)
    assert host == ADVERTISE_HOST
    assert int(port) in range(*node.agent.config.port_range)
    assert await backend_rpc.health(reply.address)
    assert await node.running_keys() == ["m1#0"]
    running = await node.running()
    assert running.models is not None and running.models[0].address == f"127.0.0.1:{port}"


async def test_repeated_install_returns_the_same_address_without_a_download(
    node: NodeClient, archives: Path
) -> None:
    built = node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    first = await node.install("cpu-echo", model_id="m1")
    built.path.unlink()  # a second download would now fail

    again = await node.install("cpu-echo", model_id="m1", op_id="op-again")

    assert again == first
    assert not [e for e in node.events["op-again"] if e.phase == "downloading"]


async def test_install_of_a_backend_on_disk_only_spawns(node: NodeClient, archives: Path) -> None:
    built = node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    await node.install("cpu-echo", model_id="m1")
    built.path.unlink()

    other_slot = await node.install("cpu-echo", model_id="m2", replica_index=1)

    assert other_slot.success, other_slot.error
    assert await node.running_keys() == ["m1#0", "m2#1"]


async def test_admin_install_runs_an_idle_process_keyed_by_backend(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)

    await node.install("cpu-echo")

    assert await node.running_keys() == ["cpu-echo#0"]


async def test_backend_list_reports_installed_backends_with_metadata(
    node: NodeClient, archives: Path
) -> None:
    assert (await node.listing()).backends is None
    built = node.gallery.add_backend(SampleBackend("cpu-echo", version="2.1.0"), archives)

    await node.install("cpu-echo")

    rows = (await node.listing()).backends
    assert rows is not None and [r.name for r in rows] == ["cpu-echo"]
    assert rows[0].version == "2.1.0" and rows[0].uri == built.uri
    assert rows[0].gallery_url == node.gallery.config.url and rows[0].installed_at


async def test_a_process_that_dies_on_its_own_releases_its_slot_and_is_respawned(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    first = await node.install("cpu-echo", model_id="m1")
    proc = node.agent.service.supervisor.get("m1#0")
    assert proc is not None

    os.killpg(proc.pid, signal.SIGKILL)
    await eventually(lambda: node.agent.service.supervisor.get("m1#0") is None, "slot released")

    assert await node.running_keys() == []
    again = await node.install("cpu-echo", model_id="m1")
    assert again.success and await backend_rpc.health(again.address)
    assert _port(again.address) == _port(first.address)  # affinity: the slot gets its port back


async def test_backend_stop_accepts_key_model_backend_and_null(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    for model, replica in (("a", 0), ("a", 1), ("b", 0), ("c", 0)):
        await node.install("cpu-echo", model_id=model, replica_index=replica)

    await node.stop(BackendStopRequest(backend="a#1", force=True))
    await eventually(lambda: node.agent.service.supervisor.get("a#1") is None, "a#1 stopped")
    assert await node.running_keys() == ["a#0", "b#0", "c#0"]

    await node.stop(BackendStopRequest(backend="a"))
    await eventually(lambda: node.agent.service.supervisor.get("a#0") is None, "a stopped")
    assert await node.running_keys() == ["b#0", "c#0"]

    await node.stop(None)
    await eventually(lambda: not node.agent.service.supervisor.all(), "all stopped")
    await node.install("cpu-echo", model_id="b")
    await node.stop(BackendStopRequest(backend="cpu-echo"))
    await eventually(lambda: not node.agent.service.supervisor.all(), "backend stopped")


async def test_install_from_a_json_index_over_http(
    start_agent, archives: Path, artifact_server
) -> None:
    from durable_installs.devstack.sample_backend import Gallery, build_archive
    from durable_installs.protocol.messages import GalleryConfig, encode_galleries

    node = await start_agent(allow_request_galleries=(artifact_server.url("/"),))
    built = build_archive(archives / "web.tar", SampleBackend("web-echo"))
    url = artifact_server.publish("/web.tar", built.path)
    index = Gallery(path=archives / "index.json", name="web")
    index.add({"name": "web-echo", "uri": url, "sha256": built.sha256})
    index_url = artifact_server.publish("/index.json", index.path)
    galleries = encode_galleries([GalleryConfig(name="web", url=index_url)])

    reply = await node.install("web@web-echo", backend_galleries=galleries)

    assert reply.success, reply.error
    assert node.installed_version("web-echo") == "1.0.0"


async def test_node_stop_shuts_the_agent_down_and_stops_its_processes(
    start_agent, archives: Path
) -> None:
    node = await start_agent(allow_remote_stop=True)
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    await node.install("cpu-echo", model_id="m1")
    proc = node.agent.service.supervisor.get("m1#0")
    assert proc is not None

    await node.nc.publish(subjects.node_stop(node.node_id), b"null")
    await node.agent.wait_stopped()

    assert not proc.alive and node.agent.service.supervisor.all() == []
