"""``LoadModelWorkflow`` against a real node agent: install, stage over HTTP, ``LoadModel``.

The agent serves LocalAI's file-transfer API and runs real sample backend processes that
answer ``LoadModel``; the worker stages from ``file://`` sources it was told to trust.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError

from activities.sources import TrustedSources
from activities.staging import StagingConfig
from durable_installs.contracts.failures import (
    INVALID_INPUT,
    LOAD_FAILED,
    NODE_CANNOT_STORE_MODEL,
    SOURCE_MISMATCH,
    SOURCE_NOT_TRUSTED,
    STAGING_REFUSED,
    root_application_error,
)
from durable_installs.contracts.load import (
    FileState,
    LoadModelInput,
    LoadModelResult,
    LoadPhase,
    load_workflow_id,
)
from durable_installs.contracts.rollout import RolloutInput
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent.files import PARTIAL_DIR, FilesConfig
from durable_installs.orchestrator.worker import create_worker
from tests.backendctl.cli import ctl, one_error_line
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import ArtifactServer, NodeClient
from tests.workflow_helpers import FAST, assert_replays, wait_until
from workflows.load_model import LoadModelWorkflow
from workflows.rollout import RolloutBackendWorkflow

TOKEN = "files-token-for-load-tests"
MIB = 1024 * 1024


def write_source(directory: Path, name: str, size: int, seed: int = 7) -> dict[str, Any]:
    """A model file of ``size`` pseudo-random bytes; its ``files`` entry."""
    directory.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(f"{name}-{seed}".encode()).digest() * (MIB // 32)
    path = directory / name
    with path.open("wb") as out:
        left = size
        while left:
            out.write(block[: min(left, len(block))])
            left -= min(left, len(block))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"uri": path.as_uri(), "sha256": digest, "size": size, "path": f"m/{name}"}


Start = Callable[..., Awaitable[WorkflowHandle[LoadModelWorkflow, LoadModelResult]]]


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    return tmp_path / "sources"


@pytest.fixture
async def load_queue(client: Client, nc: NATS, tmp_path: Path, sources: Path) -> AsyncIterator[str]:
    """A worker that trusts ``sources`` and holds the nodes' files token."""
    queue = f"load-{uuid.uuid4().hex[:8]}"
    staging = StagingConfig(
        sources=TrustedSources((sources.as_uri() + "/",)),
        files_token=TOKEN,
        cache_dir=tmp_path / "cache",
    )
    async with create_worker(client, nc, queue, staging=staging):
        yield queue


@pytest.fixture
async def loading_node(start_agent: AgentFactory, gallery: Gallery, archives: Path) -> NodeClient:
    gallery.add_backend(SampleBackend("cpu-load"), archives)
    gallery.write()
    return await start_agent(files=FilesConfig(token=TOKEN, address="127.0.0.1:0", reserve_bytes=0))


def load_input(node: NodeClient, files: list[dict[str, Any]], **overrides: Any) -> LoadModelInput:
    """A valid load of ``files`` into the node's ``cpu-load`` slot for ``qwen3``."""
    input = LoadModelInput.model_validate(
        {
            "node_id": node.node_id,
            "backend": "cpu-load",
            "model_id": "qwen3",
            "files": files,
            "install_options": {**FAST},
            "heartbeat_timeout_seconds": 5,
            **overrides,
        }
    )
    assert not input.problems(), input.problems()
    return input


async def start(
    client: Client, queue: str, input: LoadModelInput
) -> WorkflowHandle[LoadModelWorkflow, LoadModelResult]:
    return await client.start_workflow(
        LoadModelWorkflow.run,
        input,
        id=load_workflow_id(input.node_id, input.backend, input.model_id, input.replica_index)
        + uuid.uuid4().hex[:6],
        task_queue=queue,
    )


@pytest.fixture
def start_load(client: Client, load_queue: str) -> Start:
    async def start_one(
        node: NodeClient, files: list[dict[str, Any]], **overrides: Any
    ) -> WorkflowHandle[LoadModelWorkflow, LoadModelResult]:
        return await start(client, load_queue, load_input(node, files, **overrides))

    return start_one


def models_dir(node: NodeClient) -> Path:
    return node.backends_dir.parent / "models"


async def failure_type(handle: WorkflowHandle[Any, Any]) -> tuple[str, str]:
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    cause = root_application_error(caught.value)
    assert cause is not None
    return cause.type or "", cause.message


async def test_a_model_is_staged_and_loaded_and_the_result_says_where_and_what(
    loading_node: NodeClient, sources: Path, start_load: Start
) -> None:
    files = [write_source(sources, "model.gguf", 3 * MIB), write_source(sources, "tok.json", 1000)]

    handle = await start_load(loading_node, files)
    result = await handle.result()

    assert result.address
    assert [f.state for f in result.files] == [FileState.STAGED, FileState.STAGED]
    for spec, staged in zip(files, result.files, strict=True):
        on_node = models_dir(loading_node) / spec["path"]
        assert staged.local_path == str(on_node)
        assert hashlib.sha256(on_node.read_bytes()).hexdigest() == spec["sha256"]
    assert result.bytes_sent == 3 * MIB + 1000
    assert set(result.phase_seconds) == {"installing", "staging", "loading"}
    assert not result.already_loaded
    assert (await handle.query(LoadModelWorkflow.progress)).phase is LoadPhase.READY
    await assert_replays(handle)


async def test_a_slot_loaded_with_the_same_files_answers_at_once(
    loading_node: NodeClient, sources: Path, start_load: Start
) -> None:
    files = [write_source(sources, "model.gguf", 2 * MIB)]
    await (await start_load(loading_node, files)).result()

    again = await (await start_load(loading_node, files)).result()

    assert again.already_loaded
    assert again.bytes_sent == 0
    assert [f.state for f in again.files] == [FileState.PRESENT]


async def test_a_partial_file_on_the_node_is_resumed_not_resent(
    loading_node: NodeClient, sources: Path, start_load: Start
) -> None:
    [spec] = files = [write_source(sources, "model.gguf", 4 * MIB)]
    await _put_first_bytes(loading_node, spec, MIB)

    result = await (await start_load(loading_node, files)).result()

    assert result.bytes_sent == 3 * MIB, "the first MiB the node had was not sent again"


async def _put_first_bytes(node: NodeClient, spec: dict[str, Any], count: int) -> None:
    """A transfer cut after ``count`` bytes, as a crashed worker leaves it."""
    import httpx

    files = node.agent.files
    assert files is not None
    host, port = files.bound
    data = await asyncio.to_thread(Path(spec["uri"].removeprefix("file://")).read_bytes)
    async with httpx.AsyncClient() as client:
        response = await client.put(
            f"http://{host}:{port}/v1/files/models/{spec['path']}",
            content=data[:count],
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "X-Content-SHA256": spec["sha256"],
                "Content-Range": f"bytes 0-{count - 1}/{len(data)}",
            },
        )
    assert response.status_code == 308


async def test_a_source_the_worker_does_not_trust_is_refused_and_nothing_is_written(
    loading_node: NodeClient, tmp_path: Path, start_load: Start
) -> None:
    spec = write_source(tmp_path / "elsewhere", "model.gguf", MIB)

    handle = await start_load(loading_node, [spec])

    kind, message = await failure_type(handle)
    assert kind == SOURCE_NOT_TRUSTED
    assert "--allow-model-source" in message or "trusted:" in message
    assert not (models_dir(loading_node) / "m").exists()


async def test_a_source_whose_bytes_do_not_hash_is_refused_and_nothing_is_in_place(
    loading_node: NodeClient, sources: Path, start_load: Start
) -> None:
    spec = write_source(sources, "model.gguf", MIB)
    spec["sha256"] = "0" * 64

    kind, message = await failure_type(await start_load(loading_node, [spec]))

    assert kind == SOURCE_MISMATCH
    assert "sha256" in message
    assert not (models_dir(loading_node) / "m" / "model.gguf").exists()


async def test_a_source_that_lies_about_its_size_is_refused(
    loading_node: NodeClient, sources: Path, start_load: Start
) -> None:
    spec = write_source(sources, "model.gguf", MIB)
    spec["size"] = 2 * MIB

    kind, message = await failure_type(await start_load(loading_node, [spec]))

    assert kind == SOURCE_MISMATCH
    assert str(2 * MIB) in message
    assert not (models_dir(loading_node) / "m").exists()


async def test_a_worker_without_the_nodes_token_is_refused_by_the_node(
    client: Client, nc: NATS, loading_node: NodeClient, sources: Path, tmp_path: Path
) -> None:
    spec = write_source(sources, "model.gguf", MIB)
    queue = f"load-{uuid.uuid4().hex[:8]}"
    staging = StagingConfig(
        sources=TrustedSources((sources.as_uri() + "/",)), cache_dir=tmp_path / "cache"
    )
    async with create_worker(client, nc, queue, staging=staging):
        handle = await start(client, queue, load_input(loading_node, [spec]))
        kind, message = await failure_type(handle)

    assert kind == STAGING_REFUSED
    assert "NODE_FILES_TOKEN" in message
    assert not (models_dir(loading_node) / "m").exists()


async def test_a_node_that_cannot_store_the_model_is_refused_before_anything_is_written(
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
    sources: Path,
    start_load: Start,
) -> None:
    gallery.add_backend(SampleBackend("cpu-load"), archives)
    gallery.write()
    free = os.statvfs(str(sources.parent)).f_bavail * os.statvfs(str(sources.parent)).f_frsize
    node = await start_agent(
        files=FilesConfig(token=TOKEN, address="127.0.0.1:0", reserve_bytes=free)
    )
    spec = write_source(sources, "model.gguf", MIB)

    kind, message = await failure_type(await start_load(node, [spec]))

    assert kind == NODE_CANNOT_STORE_MODEL
    assert "nothing was written" in message
    assert not (models_dir(node) / "m").exists()


async def test_a_path_that_leaves_the_models_directory_is_invalid_input(
    loading_node: NodeClient, sources: Path, client: Client, load_queue: str
) -> None:
    spec = write_source(sources, "model.gguf", MIB)
    spec["path"] = "../../escape.gguf"
    input = LoadModelInput.model_validate(
        {"node_id": loading_node.node_id, "backend": "cpu-load", "model_id": "q", "files": [spec]}
    )

    handle = await client.start_workflow(
        LoadModelWorkflow.run, input, id=f"load-bad-{uuid.uuid4().hex[:8]}", task_queue=load_queue
    )

    kind, message = await failure_type(handle)
    assert kind == INVALID_INPUT
    assert "files[0].path" in message


async def test_a_load_rollout_loads_the_model_into_every_slot_with_a_per_slot_table(
    client: Client, load_queue: str, loading_node: NodeClient, sources: Path
) -> None:
    files = [write_source(sources, "model.gguf", MIB)]
    rollout = RolloutInput.model_validate(
        {
            "backend": "cpu-load",
            "action": "load",
            "targets": [
                {"node_id": loading_node.node_id, "model_id": "qwen3", "replica_indexes": [0, 1]}
            ],
            "install_options": {**FAST},
            "load": {"files": files, "heartbeat_timeout_seconds": 5},
            "max_in_flight": 2,
        }
    )
    assert not rollout.problems(), rollout.problems()

    status = await client.execute_workflow(
        RolloutBackendWorkflow.run,
        rollout,
        id=f"rollout-load-{uuid.uuid4().hex[:8]}",
        task_queue=load_queue,
    )

    assert status.counts["succeeded"] == 2, status.slots
    assert {s.workflow_id for s in status.slots} == {
        load_workflow_id(loading_node.node_id, "cpu-load", "qwen3", replica) for replica in (0, 1)
    }
    assert all(s.address for s in status.slots)
    assert (models_dir(loading_node) / "m" / "model.gguf").exists()


def test_a_load_rollout_checks_its_files_once_before_anything_starts() -> None:
    rollout = RolloutInput.model_validate(
        {
            "backend": "cpu-load",
            "action": "load",
            "targets": [{"node_id": "n1", "model_id": "qwen3"}],
            "load": {"files": [{"uri": "ftp://x", "sha256": "zz", "path": "/abs"}]},
        }
    )

    fields = {field for field, _ in rollout.problems()}

    assert {"load.files[0].uri", "load.files[0].sha256", "load.files[0].path"} <= fields


@pytest.fixture
async def http_load_queue(
    client: Client, nc: NATS, tmp_path: Path, artifact_server: ArtifactServer
) -> AsyncIterator[str]:
    """A worker that trusts the artifact server's ``/models/`` and nothing else."""
    queue = f"load-http-{uuid.uuid4().hex[:8]}"
    staging = StagingConfig(
        sources=TrustedSources((artifact_server.url("/models/"),)),
        files_token=TOKEN,
        cache_dir=tmp_path / "cache",
    )
    async with create_worker(client, nc, queue, staging=staging):
        yield queue


def publish_model(server: ArtifactServer, sources: Path, size: int) -> dict[str, Any]:
    spec = write_source(sources, "model.gguf", size)
    url = server.publish("/models/model.gguf", sources / "model.gguf")
    return {**spec, "uri": url}


async def test_one_download_from_an_http_source_feeds_every_slot(
    client: Client,
    http_load_queue: str,
    loading_node: NodeClient,
    sources: Path,
    artifact_server: ArtifactServer,
) -> None:
    spec = publish_model(artifact_server, sources, 2 * MIB)
    for replica in (0, 1):
        files = [{**spec, "path": f"r{replica}/model.gguf"}]
        input = load_input(loading_node, files, replica_index=replica)
        await (await start(client, http_load_queue, input)).result()

    assert [r.path for r in artifact_server.requests] == ["/models/model.gguf"]


async def test_a_cut_source_download_resumes_with_a_range(
    client: Client,
    http_load_queue: str,
    loading_node: NodeClient,
    sources: Path,
    artifact_server: ArtifactServer,
) -> None:
    spec = publish_model(artifact_server, sources, 2 * MIB)
    artifact_server.truncate_once_after = MIB

    handle = await start(client, http_load_queue, load_input(loading_node, [spec]))
    result = await handle.result()

    assert result.files[0].state is FileState.STAGED
    ranges = [r.range for r in artifact_server.requests]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert ranges[1] != "bytes=0-", "the second request continued, not restarted"


async def test_a_backend_that_cannot_load_the_model_fails_the_load_with_its_message(
    loading_node: NodeClient, sources: Path, start_load: Start
) -> None:
    files = [write_source(sources, "model.gguf", MIB)]

    handle = await start_load(loading_node, files, load_options={"model": "m/not-staged.gguf"})

    kind, message = await failure_type(handle)
    assert kind == LOAD_FAILED
    assert "could not load m/not-staged.gguf" in message
    assert (await handle.query(LoadModelWorkflow.progress)).phase is LoadPhase.FAILED


@pytest.fixture
async def slow_load_queue(
    client: Client, nc: NATS, tmp_path: Path, sources: Path
) -> AsyncIterator[str]:
    """A worker that stages at 1 MiB/s: a transfer to catch in the middle."""
    queue = f"load-slow-{uuid.uuid4().hex[:8]}"
    staging = StagingConfig(
        sources=TrustedSources((sources.as_uri() + "/",)),
        files_token=TOKEN,
        cache_dir=tmp_path / "cache",
        max_bytes_per_second=MIB,
    )
    async with create_worker(client, nc, queue, staging=staging):
        yield queue


def partials(node: NodeClient) -> list[Path]:
    directory = models_dir(node) / PARTIAL_DIR
    return sorted(directory.iterdir()) if directory.exists() else []


async def test_a_cancelled_load_stops_the_transfer_and_leaves_no_partial_on_the_node(
    client: Client, slow_load_queue: str, loading_node: NodeClient, sources: Path
) -> None:
    spec = write_source(sources, "model.gguf", 30 * MIB)
    handle = await start(client, slow_load_queue, load_input(loading_node, [spec]))
    await wait_until(
        lambda: _has_partial(loading_node), within=60, what="the transfer under way on the node"
    )

    await handle.cancel()

    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    assert isinstance(caught.value.cause, CancelledError)
    assert (await handle.query(LoadModelWorkflow.progress)).phase is LoadPhase.CANCELLED
    assert partials(loading_node) == []
    assert not (models_dir(loading_node) / "m" / "model.gguf").exists()


async def _has_partial(node: NodeClient) -> bool:
    return bool(partials(node))


async def test_a_backend_that_stops_answering_while_it_loads_is_a_stalled_load(
    start_agent: AgentFactory, gallery: Gallery, archives: Path, sources: Path, start_load: Start
) -> None:
    gallery.add_backend(SampleBackend("cpu-load", load_seconds=60), archives)
    gallery.write()
    node = await start_agent(files=FilesConfig(token=TOKEN, address="127.0.0.1:0", reserve_bytes=0))
    handle = await start_load(
        node, [write_source(sources, "model.gguf", MIB)], load_stall_seconds=3
    )
    await wait_until(
        lambda: _phase_is(handle, LoadPhase.LOADING), within=60, what="the load under way"
    )
    backend = node.agent.service.supervisor.get("qwen3#0")
    assert backend is not None

    os.killpg(backend.pid, signal.SIGSTOP)  # wedged: alive, silent
    try:
        kind, message = await failure_type(handle)
    finally:
        os.killpg(backend.pid, signal.SIGCONT)

    assert kind == LOAD_FAILED
    assert "stalled" in message


async def _phase_is(handle: WorkflowHandle[Any, Any], phase: LoadPhase) -> bool:
    return bool((await handle.query(LoadModelWorkflow.progress)).phase is phase)


async def test_backendctl_load_follows_every_phase_to_the_loaded_model(
    load_queue: str, loading_node: NodeClient, sources: Path, temporal_address: str
) -> None:
    spec = write_source(sources, "model.gguf", 2 * MIB)

    run = await ctl(
        "load",
        "--node-id",
        loading_node.node_id,
        "--backend",
        "cpu-load",
        "--model-id",
        "qwen3",
        "--file",
        spec["path"],
        spec["uri"],
        spec["sha256"],
        "--task-queue",
        load_queue,
        "--option",
        f"install_options={json.dumps(FAST)}",
        address=temporal_address,
    )

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    workflow_id = load_workflow_id(loading_node.node_id, "cpu-load", "qwen3", 0)
    assert lines[0] == f"load {workflow_id}"
    phases = [line.split(": ", 1)[1].split(" ·")[0] for line in lines[1:-1]]
    assert phases[-1] == "ready" and "installing" in phases
    assert lines[-1].startswith("loaded: qwen3 in qwen3#0 at ")
    assert "(sent 2.0 MiB; installing " in lines[-1]


async def test_backendctl_load_refuses_a_bad_hash_in_one_line_before_connecting() -> None:
    run = await ctl(
        "load",
        "--node-id",
        "node-1",
        "--backend",
        "cpu-load",
        "--model-id",
        "qwen3",
        "--file",
        "m.gguf",
        "file:///srv/m.gguf",
        "not-a-hash",
        address="127.0.0.1:1",
    )

    assert run.returncode == 2
    assert "sha256: must be 64 lowercase hexadecimal digits" in one_error_line(run.stderr)
