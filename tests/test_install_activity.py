"""The install activity against scripted nodes on a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.install import InstallActivities
from durable_installs.contracts.activities import (
    InstallActivityInput,
    InstallProgress,
    progress_from_details,
)
from durable_installs.contracts.failures import (
    INSTALL_CANCELLED,
    INSTALL_FAILED,
    INSTALL_REJECTED,
    classify_node_error,
)
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode
from tests.workflow_helpers import wait_for


@pytest.fixture
async def activity_nc(nats_url: str):
    """The activity's own connection, so its subscriptions can be counted."""
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


def install(node_id: str, op_id: str = "op-1", **fields: float) -> InstallActivityInput:
    return InstallActivityInput(
        node_id=node_id,
        request=BackendInstallRequest(backend="llama-cpp", op_id=op_id),
        install_timeout_seconds=fields.get("timeout", 5.0),
        heartbeat_interval_seconds=fields.get("heartbeat", 5.0),
        progress_report_interval_seconds=0,
    )


def progress_subscriptions(conn: NATS) -> list[str]:
    """Subjects of the connection's live progress subscriptions."""
    return [sub.subject for sub in conn._subs.values() if sub.subject.endswith(".progress")]


def recording_env() -> tuple[ActivityEnvironment, list[InstallProgress]]:
    env = ActivityEnvironment()
    beats: list[InstallProgress] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    return env, beats


async def test_malformed_progress_events_are_dropped_and_the_install_completes(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()

    async def noisy(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        progress = subjects.progress(node_id, request.op_id)
        await node.publish_progress(request.op_id, request.backend, 10)
        await nc.publish(progress, b"not json")
        await nc.publish(progress, b'{"op_id": 5}')
        await node.publish_progress(request.op_id, request.backend, 20)
        await nc.flush()
        await asyncio.sleep(0.2)
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = noisy
    env, _ = recording_env()
    result = await env.run(InstallActivities(activity_nc).install_backend, install(node_id))

    assert result.address == "10.0.0.7:50051"
    assert result.progress.event_count == 2
    assert result.progress.malformed_events == 2
    assert result.progress.last_event is not None
    assert result.progress.last_event.percentage == 20
    await node.stop()


async def test_heartbeats_continue_on_a_timer_when_no_event_arrives(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()

    async def quiet_start(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await asyncio.sleep(3.5)  # heartbeats are a second apart at least
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = quiet_start
    env, beats = recording_env()
    await env.run(InstallActivities(activity_nc).install_backend, install(node_id, heartbeat=0.2))

    assert len(beats) >= 3
    assert all(beat.event_count == 0 for beat in beats)
    await node.stop()


async def test_progress_is_forwarded_as_heartbeat_details(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()

    async def three_events(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        for percentage in (10, 50, 100):
            await node.publish_progress(request.op_id, request.backend, percentage)
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.5)  # a heartbeat goes out every second at least
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = three_events
    env, beats = recording_env()
    await env.run(InstallActivities(activity_nc).install_backend, install(node_id))

    assert beats[-1].event_count == 3
    assert beats[-1].last_event is not None and beats[-1].last_event.percentage == 100
    assert beats[-1].op_id == "op-1" and beats[-1].node_id == node_id
    await node.stop()


async def test_timeout_raises_benign_worker_still_installing_with_the_last_progress(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()

    async def slow(request: BackendInstallRequest, number: int) -> None:
        await node.publish_progress(request.op_id, request.backend, 42)

    node.script = slow
    env, _ = recording_env()
    with pytest.raises(ApplicationError) as err:
        await env.run(InstallActivities(activity_nc).install_backend, install(node_id, timeout=1))

    assert err.value.type == "WorkerStillInstalling"
    assert not err.value.non_retryable
    assert err.value.category == ApplicationErrorCategory.BENIGN
    progress = progress_from_details(err.value.details)
    assert progress is not None and progress.last_event is not None
    assert progress.last_event.percentage == 42
    assert progress_subscriptions(activity_nc) == []
    await node.stop()


async def test_no_responders_raises_node_unreachable(activity_nc: NATS, node_id: str) -> None:
    env, _ = recording_env()
    with pytest.raises(ApplicationError) as err:
        await env.run(InstallActivities(activity_nc).install_backend, install(node_id))

    assert err.value.type == "NodeUnreachable" and not err.value.non_retryable
    assert node_id in err.value.message
    assert progress_subscriptions(activity_nc) == []


async def test_failure_reply_is_classified_with_the_nodes_text(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()

    async def sha_mismatch(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        return BackendInstallReply(
            success=False,
            error="installing backend from gallery: SHA mismatch for file backend.tar",
        )

    node.script = sha_mismatch
    env, _ = recording_env()
    with pytest.raises(ApplicationError) as err:
        await env.run(InstallActivities(activity_nc).install_backend, install(node_id))

    assert err.value.type == "InstallRejected" and err.value.non_retryable
    assert "SHA mismatch for file backend.tar" in err.value.message
    await node.stop()


async def test_empty_op_id_sends_a_silent_install_without_subscribing(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    subscriptions_during_install: list[int] = []

    async def observe(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        subscriptions_during_install.append(len(progress_subscriptions(activity_nc)))
        return await node.reply_running(request, number)

    node.script = observe
    env, _ = recording_env()
    await env.run(InstallActivities(activity_nc).install_backend, install(node_id, op_id=""))

    assert node.install_bodies == [{"backend": "llama-cpp"}]
    assert subscriptions_during_install == [0]
    await node.stop()


async def test_a_retry_follows_the_op_without_sending_it_again_and_resumes_the_heartbeat(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    """The attempt it retries sent the request (its worker died): the node may be working
    on it, so the retry only listens on the op's reply subject."""
    node = await FakeNode(nc, node_id).start()
    env, _ = recording_env()
    previous = InstallProgress(op_id="op-1", node_id=node_id, attempt=1, event_count=7)
    env.info = dataclasses.replace(
        env.info, attempt=2, heartbeat_details=[previous.model_dump(mode="json")]
    )
    activities = InstallActivities(activity_nc)
    task = asyncio.create_task(env.run(activities.install_backend, install(node_id)))
    reply_subject = activities._replies.subject(node_id, "op-1")
    await wait_for(lambda: reply_subject in {sub.subject for sub in activity_nc._subs.values()})
    await nc.publish(reply_subject, BackendInstallReply(success=True, address="a:1").to_wire())

    result = await task

    assert node.install_bodies == []
    assert result.address == "a:1"
    assert result.progress.event_count == 7 and result.progress.attempt == 2
    await node.stop()


async def test_cancelling_the_activity_unsubscribes_and_asks_the_node_to_cancel_the_op(
    nc: NATS, activity_nc: NATS, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    cancels: list[bytes] = []

    async def on_cancel(msg: Msg) -> None:
        cancels.append(msg.data)

    await nc.subscribe(subjects.cancel(node_id, "op-1"), cb=on_cancel)

    async def silent(request: BackendInstallRequest, number: int) -> None:
        return None

    node.script = silent
    env, _ = recording_env()
    task = asyncio.create_task(
        env.run(InstallActivities(activity_nc).install_backend, install(node_id, timeout=30))
    )
    await wait_for(lambda: bool(node.install_bodies))
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert progress_subscriptions(activity_nc) == []
    await wait_for(lambda: bool(cancels))
    await node.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("invalid request: unexpected end of JSON input", INSTALL_REJECTED),
        ("decoding backend galleries: json: cannot unmarshal", INSTALL_REJECTED),
        ('installing backend from gallery: no backend found with name "x"', INSTALL_REJECTED),
        ("installing backend from gallery: backend name is empty", INSTALL_REJECTED),
        (
            "installing backend from gallery: meta backends cannot be installed directly",
            INSTALL_REJECTED,
        ),
        (
            'installing backend from gallery: not a valid backend: run file not found "/b/run.sh"',
            INSTALL_REJECTED,
        ),
        (
            'installing backend from gallery: backend "x": strict integrity: no sha256',
            INSTALL_REJECTED,
        ),
        (
            'installing backend from gallery: image verification failed for "r": bad sig',
            INSTALL_REJECTED,
        ),
        (
            'installing backend from gallery: failed to download backend "u": '
            "SHA mismatch for file f",
            INSTALL_REJECTED,
        ),
        (
            "installing backend from gallery: error installing backend x: "
            "specifying a name is required for OCI images",
            INSTALL_REJECTED,
        ),
        ('backend "x" not found after install attempt', INSTALL_REJECTED),
        (
            'installing backend from gallery: failed to download backend "u": connection reset',
            INSTALL_FAILED,
        ),
        ("backend x#0 is stopping", INSTALL_FAILED),
        ("backend x#0 did not become ready within 30s. Last stderr:\n", INSTALL_FAILED),
        ("backend x#0 was stopped during startup", INSTALL_FAILED),
        ("allocating gRPC port for backend x#0: no free gRPC port in range: 1-2", INSTALL_FAILED),
        ("something nobody has seen before", INSTALL_FAILED),
        ("installing backend from gallery: unsafe archive \"u\": member '../x'", INSTALL_REJECTED),
        ("download of u exceeds the configured size limit of 1.0 GiB", INSTALL_REJECTED),
        (
            'installing backend from gallery: source "oci://x" is not supported by this agent',
            INSTALL_REJECTED,
        ),
        (
            "installing backend from gallery: request galleries are not allowed on this node: "
            "https://x/index.yaml (start the agent with --allow-request-galleries https://x/ "
            "to allow)",
            INSTALL_REJECTED,
        ),
        (
            "upgrading backend from gallery: request uri is not allowed on this node: "
            "file:///x (local paths and file:// URLs from a request are never allowed)",
            INSTALL_REJECTED,
        ),
        (
            'installing backend from gallery: rejected OCI image "r": layer 1/2 digest mismatch',
            INSTALL_REJECTED,
        ),
        (
            'installing backend from gallery: failed to download backend "r": failed to pull '
            'OCI image "r": manifest v1: the registry is rate limiting this node (HTTP 429)',
            INSTALL_FAILED,
        ),
        ("cancelled", INSTALL_CANCELLED),
    ],
)
def test_node_error_texts_are_classified_by_the_catalogue(text: str, expected: str) -> None:
    assert classify_node_error(text) == expected
