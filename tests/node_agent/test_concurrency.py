"""Concurrent requests: single flight per slot, one lock per resolved backend, parallelism."""

from __future__ import annotations

import asyncio
from pathlib import Path

from durable_installs.devstack.sample_backend import SampleBackend
from tests.node_agent.helpers import ArtifactServer, NodeClient, eventually


def _publish_held(
    node: NodeClient, server: ArtifactServer, archives: Path, spec: SampleBackend
) -> None:
    """Publish ``spec`` behind the HTTP server, which holds every download until released."""
    server.publish_backend(node.gallery, archives, spec)
    server.hold_after = 64


def _gets(server: ArtifactServer, name: str) -> int:
    return sum(1 for r in server.requests if r.path == f"/{name}.tar.gz")


async def test_second_request_for_same_slot_joins_the_inflight_install(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives, SampleBackend("cpu-echo"))

    first = asyncio.create_task(node.install("cpu-echo", model_id="m", op_id="op-1"))
    await eventually(lambda: _gets(artifact_server, "cpu-echo") == 1, "download started")
    second = asyncio.create_task(node.install("cpu-echo", model_id="m", op_id="op-1"))
    await eventually(lambda: len(node.agent.service._installs.all()[0].waiters) == 2, "joined")
    artifact_server.release()

    replies = await asyncio.gather(first, second)
    assert replies[0].success and replies[0] == replies[1]
    assert _gets(artifact_server, "cpu-echo") == 1


async def test_requests_from_different_ops_for_one_slot_share_one_download(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives, SampleBackend("cpu-echo"))

    first = asyncio.create_task(node.install("cpu-echo", op_id="op-a"))
    await eventually(lambda: _gets(artifact_server, "cpu-echo") == 1, "download started")
    second = asyncio.create_task(node.install("cpu-echo", op_id="op-b"))
    await eventually(lambda: len(node.agent.service._installs.all()[0].ops) == 2, "joined")
    artifact_server.release()

    replies = await asyncio.gather(first, second)
    assert replies[0].success and replies[0] == replies[1]
    assert _gets(artifact_server, "cpu-echo") == 1
    await eventually(lambda: any(e.phase == "starting" for e in node.events["op-b"]), "op-b")
    assert {e.op_id for e in node.events["op-b"]} == {"op-b"}


async def test_two_different_backends_install_in_parallel(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives, SampleBackend("cpu-one"))
    _publish_held(node, artifact_server, archives, SampleBackend("cpu-two"))

    installs = [asyncio.create_task(node.install(name)) for name in ("cpu-one", "cpu-two")]
    await eventually(lambda: artifact_server.active == 2, "both downloads in progress at once")
    artifact_server.release()

    replies = await asyncio.gather(*installs)
    assert all(r.success for r in replies)
    assert replies[0].address != replies[1].address


async def test_alias_meta_and_concrete_names_share_one_lock_and_one_directory(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives, SampleBackend("cpu-llm", alias="llm-builds"))
    node.gallery.add_meta("llm", {"default": "cpu-llm", "nvidia": "cuda-llm"})

    names = {"a": "llm", "b": "cpu-llm", "c": "llm-builds"}
    installs = [
        asyncio.create_task(node.install(backend, model_id=model))
        for model, backend in names.items()
    ]
    await eventually(lambda: _gets(artifact_server, "cpu-llm") == 1, "download started")
    artifact_server.release()

    replies = await asyncio.gather(*installs)
    assert all(r.success for r in replies), [r.error for r in replies]
    assert _gets(artifact_server, "cpu-llm") == 1
    assert sorted(p.name for p in node.backends_dir.iterdir() if p.name[0] != ".") == [
        "cpu-llm",
        "llm",
    ]
    rows = (await node.listing()).backends or []
    assert {(r.name, r.is_meta) for r in rows} == {("cpu-llm", False), ("llm", True)}
    procs = node.agent.service.supervisor.all()
    assert {p.backend for p in procs} == {"cpu-llm"} and len(procs) == 3


async def test_a_meta_name_reuses_the_concrete_installed_under_its_own_name(
    node: NodeClient, archives: Path, artifact_server: ArtifactServer
) -> None:
    _publish_held(node, artifact_server, archives, SampleBackend("cpu-llm"))
    node.gallery.add_meta("llm", {"default": "cpu-llm"})
    artifact_server.release()
    await node.install("cpu-llm", model_id="a")

    reply = await node.install("llm", model_id="b")

    assert reply.success, reply.error
    assert _gets(artifact_server, "cpu-llm") == 1
    rows = (await node.listing()).backends or []
    assert {(r.name, r.is_meta) for r in rows} == {("cpu-llm", False), ("llm", True)}
