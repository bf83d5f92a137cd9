"""worker_main.py as a process: CLI starts, crash recovery, start-up errors, help."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid

from nats.aio.client import Client as NATS
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from durable_installs.servers import find_binary, free_port
from tests.fake_node import FakeNode
from tests.worker_process import worker_command, worker_process
from tests.workflow_helpers import (
    assert_replays,
    heartbeat_with_events,
    install_input,
    start_install,
    wait_for,
)
from workflows.install_backend import InstallBackendWorkflow


async def test_workflow_started_from_the_temporal_cli_runs_on_worker_main(
    client: Client, nc: NATS, nats_url: str, temporal_address: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    task_queue = f"cli-{uuid.uuid4().hex[:8]}"
    workflow_id = f"install-{node_id}-llama-cpp"
    with worker_process(temporal_address, nats_url, task_queue):
        start = await asyncio.to_thread(
            subprocess.run,
            [
                find_binary("temporal"),
                "workflow",
                "start",
                "--address",
                temporal_address,
                "--type",
                "InstallBackendWorkflow",
                "--task-queue",
                task_queue,
                "--workflow-id",
                workflow_id,
                "--input",
                json.dumps({"node_id": node_id, "backend": "llama-cpp", "model_id": "qwen3"}),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert start.returncode == 0, start.stderr
        handle = client.get_workflow_handle_for(InstallBackendWorkflow.run, workflow_id)
        result = await handle.result()

        query = await asyncio.to_thread(
            subprocess.run,
            [
                find_binary("temporal"),
                "workflow",
                "query",
                "--address",
                temporal_address,
                "--workflow-id",
                workflow_id,
                "--name",
                "progress",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.address == "10.0.0.7:50051" and result.slot == "qwen3#0"
    assert query.returncode == 0, query.stderr
    assert '"completed"' in query.stdout
    await node.stop()
    await assert_replays(handle)


async def test_killed_worker_resumes_the_same_op_from_its_heartbeat_without_asking_again(
    client: Client, nc: NATS, nats_url: str, temporal_address: str, node_id: str
) -> None:
    """The retry on another worker listens on the op's reply subject: the node's one reply
    to the first request reaches it, and nothing is sent a second time."""
    node = await FakeNode(nc, node_id).start()
    finished = asyncio.Event()

    async def pull(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await node.stream_progress(request.op_id, request.backend, finished, interval=0.1)
        return await node.reply_running(request, number)

    node.script = pull
    task_queue = f"crash-{uuid.uuid4().hex[:8]}"
    input = install_input(node_id, install_timeout_seconds=120, heartbeat_timeout_seconds=2)
    with worker_process(temporal_address, nats_url, task_queue) as first:
        handle = await start_install(client, task_queue, input)
        progress = await heartbeat_with_events(client, handle, at_least=5)
        first.send_signal(signal.SIGKILL)
        first.wait()
    with worker_process(temporal_address, nats_url, task_queue):
        resumed = await heartbeat_with_events(client, handle, at_least=progress.event_count + 5)
        assert resumed.attempt == 2
        finished.set()
        result = await handle.result()

    assert len(node.install_bodies) == 1
    assert node.install_bodies[0]["op_id"] == progress.op_id
    assert result.attempts == 1, "the retry is the same install attempt, resumed"
    assert result.progress_events >= progress.event_count
    history = await handle.fetch_history()
    attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts == [2]
    await node.stop()
    await assert_replays(handle)


def test_help_explains_every_option() -> None:
    out = subprocess.run(worker_command("--help"), capture_output=True, text=True, check=True)
    for option in (
        "--temporal-address",
        "--namespace",
        "--task-queue",
        "--nats-url",
        "--nats-creds",
        "--nats-token",
        "--nats-user",
        "--nats-password",
        "--nats-tls-ca",
        "TEMPORAL_API_KEY",
    ):
        assert option in out.stdout


def start_up_errors(*args: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run the worker expecting it to stop at start-up: its exit code and ``error:`` lines."""
    out = subprocess.run(
        worker_command(*args),
        capture_output=True,
        text=True,
        env={**env, "PATH": ""},
        timeout=60,
        check=False,
    )
    return out.returncode, [line for line in out.stderr.splitlines() if line.startswith("error:")]


def test_unreachable_nats_gives_a_one_line_error(temporal_address: str) -> None:
    code, errors = start_up_errors(
        "--nats-url", f"nats://127.0.0.1:{free_port()}", env={"TEMPORAL_ADDRESS": temporal_address}
    )
    assert code == 2
    assert len(errors) == 1 and "NATS" in errors[0]


def test_unreachable_temporal_gives_a_one_line_error(nats_url: str) -> None:
    code, errors = start_up_errors(
        "--temporal-address", f"127.0.0.1:{free_port()}", env={"NATS_URL": nats_url}
    )
    assert code == 2
    assert len(errors) == 1 and "Temporal" in errors[0]


async def test_two_workers_on_one_task_queue_share_the_installs(
    client: Client, nc: NATS, nats_url: str, temporal_address: str
) -> None:
    """Past one worker: another process on the same task queue takes its share of the work."""
    node_ids = [f"share-{uuid.uuid4().hex[:8]}" for _ in range(40)]
    nodes = [await FakeNode(nc, node_id).start() for node_id in node_ids]
    release = asyncio.Event()

    async def held(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await release.wait()
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    for node in nodes:
        node.script = held
    task_queue = f"shared-{uuid.uuid4().hex[:8]}"
    with (
        worker_process(temporal_address, nats_url, task_queue),
        worker_process(temporal_address, nats_url, task_queue),
    ):
        handles = [
            await start_install(
                client, task_queue, install_input(node_id, install_timeout_seconds=60)
            )
            for node_id in node_ids
        ]
        await wait_for(lambda: all(node.install_bodies for node in nodes), what="40 requests")
        release.set()
        results = [await handle.result() for handle in handles]
    for node in nodes:
        await node.stop()

    assert len(results) == 40 and all(r.address for r in results)
    assert all(len(node.install_bodies) == 1 for node in nodes), "one request per install"
    identities = set()
    for handle in handles:
        for event in (await handle.fetch_history()).events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                identities.add(event.activity_task_started_event_attributes.identity)
    assert len(identities) == 2, f"both workers ran install activities: {identities}"
