"""``backend.upgrade`` and ``backend.delete``."""

from __future__ import annotations

from pathlib import Path

from durable_installs.devstack.sample_backend import SampleBackend
from tests.node_agent.helpers import NodeClient


async def test_upgrade_repulls_stops_every_process_of_the_backend_and_starts_none(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), archives)
    await node.install("cpu-echo", model_id="a")
    await node.install("cpu-echo", model_id="a", replica_index=1)
    node.gallery.add_backend(SampleBackend("other"), archives)
    await node.install("other", model_id="b")
    node.gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives)

    reply = await node.upgrade("cpu-echo", op_id="op-up")

    assert reply.success, reply.error
    assert reply.reports_stopped_processes
    assert sorted(reply.stopped_process_keys or []) == ["a#0", "a#1"]
    assert await node.running_keys() == ["b#0"]
    assert node.installed_version("cpu-echo") == "2.0.0"
    respawned = await node.install("cpu-echo", model_id="a")
    assert respawned.success


async def test_install_after_an_upgrade_does_not_reuse_a_process_of_the_old_directory(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), archives)
    await node.install("cpu-echo", model_id="a")
    old = node.agent.service.supervisor.get("a#0")
    node.gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives)
    await node.install("cpu-echo", model_id="a", force=True)

    new = node.agent.service.supervisor.get("a#0")

    assert old is not None and new is not None and new is not old
    assert new.runs_current_directory() and not old.alive


async def test_delete_stops_processes_and_removes_the_backend_and_its_meta(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    node.gallery.add_meta("echo", {"default": "cpu-echo"})
    await node.install("echo", model_id="a")

    reply = await node.delete("echo")

    assert reply.success and reply.stopped_process_keys == ["a#0"]
    assert reply.reports_stopped_processes
    assert (await node.listing()).backends is None
    assert await node.running_keys() == []
    assert [p.name for p in node.backends_dir.iterdir() if p.name[0] != "."] == []


async def test_delete_of_an_unknown_backend_is_the_catalogue_error(node: NodeClient) -> None:
    reply = await node.delete("nope")

    assert reply.error == 'backend "nope": backend not found'
