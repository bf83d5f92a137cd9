"""Worker Deployment Versioning: installs stay on the version that started them.

On the real dev server: a version is a deployment name plus a build id, new installs go to the
deployment's current version, and a running (PINNED) install finishes on its own version even
after another one became current. Plus how the worker names its version and refuses bad ones.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from temporalio.api.enums.v1 import EventType, VersioningBehavior
from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from durable_installs.orchestrator.versioning import (
    SetCurrent,
    Versioning,
    VersioningError,
    default_build_id,
    git_commit,
    make_current,
    package_version,
    set_current_command,
    warn_if_routed_to_a_version,
)
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from durable_installs.servers import find_binary, free_port
from tests.fake_node import FakeNode
from tests.worker_process import worker_command, worker_process
from tests.workflow_helpers import (
    assert_replays,
    install_input,
    start_install,
    wait_for,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


def deployment_name() -> str:
    """A deployment of this test's own: versions and routing are per deployment."""
    return f"test-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def versioned_worker(
    client: Client, nc: NATS, task_queue: str, versioning: Versioning
) -> AsyncIterator[Worker]:
    """An in-process worker polling as ``versioning``, its identity naming its build id."""
    worker = create_worker(
        client, nc, task_queue, versioning=versioning, identity=f"worker-{versioning.build_id}"
    )
    async with worker:
        yield worker


def temporal_cli(temporal_address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("temporal"), *args, "--address", temporal_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def set_current_with_cli(temporal_address: str, deployment: str, build_id: str) -> None:
    """What the operator runs (docs/operating/versioning.md): retried until the server has seen
    the new pollers."""

    async def done() -> bool:
        out = await asyncio.to_thread(
            temporal_cli,
            temporal_address,
            "worker",
            "deployment",
            "set-current-version",
            "--deployment-name",
            deployment,
            "--build-id",
            build_id,
            "--yes",
        )
        return out.returncode == 0

    await wait_until(done, within=60, what=f"{build_id} made current with the CLI", interval=0.5)


async def current_build_id(client: Client, deployment: str) -> str:
    described = await client.workflow_service.describe_worker_deployment(
        DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
    )
    return described.worker_deployment_info.routing_config.current_deployment_version.build_id


async def task_build_ids(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Build id of the version that completed each workflow task, as the history records it."""
    history = await handle.fetch_history()
    return [
        event.workflow_task_completed_event_attributes.deployment_version.build_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]


async def activity_identities(handle: WorkflowHandle[Any, Any]) -> list[str]:
    history = await handle.fetch_history()
    return [
        event.activity_task_started_event_attributes.identity
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


async def test_running_install_finishes_on_its_version_while_new_installs_go_to_the_current(
    client: Client, nc: NATS, temporal_address: str
) -> None:
    deployment = deployment_name()
    queue = f"versioned-{uuid.uuid4().hex[:8]}"
    version_a = Versioning(deployment, "A")
    version_b = Versioning(deployment, "B")
    held = await FakeNode(nc, f"node-{uuid.uuid4().hex[:12]}").start()
    fresh = await FakeNode(nc, f"node-{uuid.uuid4().hex[:12]}").start()
    release = asyncio.Event()

    async def hold_reply(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await release.wait()
        return await held.reply_running(request, number)

    held.script = hold_reply
    try:
        async with versioned_worker(client, nc, queue, version_a):
            await make_current(client, version_a, "test")
            running = await start_install(
                client, queue, install_input(held.node_id, install_timeout_seconds=120)
            )
            await wait_for(lambda: len(held.install_bodies) == 1, what="install reached node")

            async with versioned_worker(client, nc, queue, version_b):
                await set_current_with_cli(temporal_address, deployment, "B")
                assert await current_build_id(client, deployment) == "B"
                new = await start_install(client, queue, install_input(fresh.node_id))
                await new.result()
                release.set()
                await running.result()
    finally:
        release.set()
        await held.stop()
        await fresh.stop()

    running_tasks = await task_build_ids(running)
    assert len(running_tasks) >= 2, "the install's last task came after B became current"
    assert set(running_tasks) == {"A"}
    assert await activity_identities(running) == ["worker-A"]
    info = (await running.describe()).raw_description.workflow_execution_info.versioning_info
    assert info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
    assert (info.deployment_version.deployment_name, info.deployment_version.build_id) == (
        deployment,
        "A",
    )
    assert set(await task_build_ids(new)) == {"B"}
    assert await activity_identities(new) == ["worker-B"]
    await assert_replays(running)


async def test_worker_process_makes_its_version_current_only_when_none_is(
    client: Client, nats_url: str, temporal_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = deployment_name()
    monkeypatch.setenv("TEMPORAL_DEPLOYMENT_NAME", deployment)
    monkeypatch.setenv("TEMPORAL_WORKER_BUILD_ID", "first")
    with worker_process(temporal_address, nats_url, f"first-{uuid.uuid4().hex[:8]}"):
        assert await current_build_id(client, deployment) == "first"
    monkeypatch.setenv("TEMPORAL_WORKER_BUILD_ID", "second")
    with worker_process(temporal_address, nats_url, f"second-{uuid.uuid4().hex[:8]}"):
        assert await current_build_id(client, deployment) == "first"


async def test_worker_process_without_versioning_runs_installs_unversioned(
    client: Client, nc: NATS, nats_url: str, temporal_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await FakeNode(nc, f"node-{uuid.uuid4().hex[:12]}").start()
    monkeypatch.setenv("TEMPORAL_WORKER_VERSIONING", "off")
    queue = f"unversioned-{uuid.uuid4().hex[:8]}"
    try:
        with worker_process(temporal_address, nats_url, queue):
            handle = await start_install(client, queue, install_input(node.node_id))
            await handle.result()
    finally:
        await node.stop()
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    assert info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_UNSPECIFIED


def test_default_build_id_is_the_package_version_and_the_git_commit() -> None:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    build_id = default_build_id(ROOT)

    assert build_id.startswith(f"{package_version()}+{commit}")


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
        capture_output=True,
        check=True,
    )


def test_local_changes_give_their_own_build_id(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "flow.py").write_text("STEP = 1\n")
    git(tmp_path, "add", "flow.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    clean = git_commit(tmp_path)
    (tmp_path / "flow.py").write_text("STEP = 2\n")
    first_edit = git_commit(tmp_path)
    (tmp_path / "flow.py").write_text("STEP = 3\n")
    second_edit = git_commit(tmp_path)

    assert clean is not None and ".dirty." not in clean
    assert first_edit is not None and first_edit.startswith(f"{clean}.dirty.")
    assert len({clean, first_edit, second_edit}) == 3


def test_without_git_the_build_id_hashes_the_worker_sources(tmp_path: Path) -> None:
    build_id = default_build_id(tmp_path)

    assert build_id.startswith(f"{package_version()}+src.")
    assert build_id == default_build_id(tmp_path), "the same sources give the same id"


@pytest.mark.parametrize(
    ("deployment", "build_id", "named"),
    [
        ("backend.install", "1", "deployment name (--deployment-name"),
        ("", "1", "deployment name (--deployment-name"),
        ("backend-install", "", "build id (--build-id"),
        ("backend-install", "has space", "build id (--build-id"),
        ("backend-install", "x" * 256, "build id (--build-id"),
        ("backend-install", "bell\a", "build id (--build-id"),
    ],
)
def test_invalid_version_names_are_refused_naming_the_flag(
    deployment: str, build_id: str, named: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(named)}"):
        Versioning(deployment, build_id)


def start_up_errors(*args: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run the worker expecting it to stop before connecting: exit code and ``error:`` lines."""
    out = subprocess.run(
        worker_command(*args),
        capture_output=True,
        text=True,
        env={**env, "PATH": "", "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"},
        timeout=60,
        check=False,
    )
    return out.returncode, [line for line in out.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--set-current", "sometimes"), {}, "--set-current"),
        ((), {"TEMPORAL_WORKER_SET_CURRENT": "sometimes"}, "TEMPORAL_WORKER_SET_CURRENT"),
        ((), {"TEMPORAL_WORKER_VERSIONING": "maybe"}, "TEMPORAL_WORKER_VERSIONING"),
        (("--deployment-name", "a.b"), {}, "--deployment-name"),
        ((), {"TEMPORAL_WORKER_BUILD_ID": "two words"}, "--build-id"),
    ],
)
def test_invalid_versioning_settings_stop_the_worker_with_one_line(
    args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    code, errors = start_up_errors(*args, env=env)

    assert code == 2
    assert len(errors) == 1 and named in errors[0] and "versioning" in errors[0]


async def test_if_unset_leaves_another_current_version_alone(client: Client, nc: NATS) -> None:
    deployment = deployment_name()
    queue = f"versioned-{uuid.uuid4().hex[:8]}"
    first = Versioning(deployment, "first", SetCurrent.ALWAYS)
    async with versioned_worker(client, nc, queue, first):
        await make_current(client, first, "test")
        later = Versioning(deployment, "later", SetCurrent.IF_UNSET)
        async with versioned_worker(client, nc, queue, later):
            await make_current(client, later, "test")
            assert await current_build_id(client, deployment) == "first"
            always = Versioning(deployment, "later", SetCurrent.ALWAYS)
            await make_current(client, always, "test")
            assert await current_build_id(client, deployment) == "later"


async def test_unversioned_worker_warns_when_its_deployment_routes_to_a_version(
    client: Client, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    deployment = deployment_name()
    versioning = Versioning(deployment, "A")
    async with versioned_worker(client, nc, f"versioned-{uuid.uuid4().hex[:8]}", versioning):
        await make_current(client, versioning, "test")

    await warn_if_routed_to_a_version(client, deployment)

    assert f"--deployment-name {deployment} --unversioned" in caplog.text


async def test_a_refused_routing_change_names_the_command_to_run_by_hand(
    temporal_address: str,
) -> None:
    elsewhere = await Client.connect(temporal_address, namespace=f"missing-{uuid.uuid4().hex[:8]}")
    versioning = Versioning(deployment_name(), "A")

    with pytest.raises(VersioningError) as refused:
        await make_current(elsewhere, versioning, "test")

    assert "--set-current never" in str(refused.value)
    assert set_current_command(versioning) in str(refused.value)


def test_help_explains_the_versioning_options_and_their_environment() -> None:
    out = subprocess.run(worker_command("--help"), capture_output=True, text=True, check=True)
    for option in (
        "--deployment-name",
        "TEMPORAL_DEPLOYMENT_NAME",
        "--build-id",
        "TEMPORAL_WORKER_BUILD_ID",
        "--set-current",
        "TEMPORAL_WORKER_SET_CURRENT",
        "--no-versioning",
        "TEMPORAL_WORKER_VERSIONING",
    ):
        assert option in out.stdout
