"""``install``, ``watch``, ``list`` and ``cancel`` against a real worker and NATS."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowExecutionStatus

from durable_installs.contracts.install import InstallPhase, install_workflow_id
from tests.backendctl.cli import FAST_OPTIONS, PROG, ctl, one_error_line, run_ctl
from tests.fake_node import FakeNode
from tests.workflow_helpers import wait_until


async def install_via_ctl(
    address: str, task_queue: str, node_id: str, model_id: str, *extra: str
) -> str:
    out = await ctl(
        "--no-live",
        "install",
        "--node-id",
        node_id,
        "--backend",
        "llama-cpp",
        "--model-id",
        model_id,
        "--task-queue",
        task_queue,
        *FAST_OPTIONS,
        *extra,
        address=address,
    )
    assert out.returncode == 0, out.stderr
    return install_workflow_id(node_id, "llama-cpp", model_id, 0)


async def listed(client: Client, query: str, count: int) -> None:
    async def visible() -> bool:
        return len([w async for w in client.list_workflows(query)]) >= count

    await wait_until(visible, what=f"{count} workflow(s) visible for {query}")


async def test_install_then_list_by_node_newest_first_as_json(
    client: Client, nc: NATS, task_queue: str, node_id: str, temporal_address: str
) -> None:
    await FakeNode(nc, node_id).start()
    first = await install_via_ctl(temporal_address, task_queue, node_id, "qwen3")
    second = await install_via_ctl(temporal_address, task_queue, node_id, "phi")
    await listed(client, f"NodeId = '{node_id}' AND InstallPhase = 'completed'", 2)

    out = await ctl("list", "--node", node_id, "--json", address=temporal_address)

    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [row["workflow_id"] for row in rows] == [second, first]
    assert {row["phase"] for row in rows} == {"completed"}
    assert {(row["node_id"], row["backend"], row["kind"]) for row in rows} == {
        (node_id, "llama-cpp", "install")
    }


async def test_list_filters_by_model_and_phase_in_a_table(
    client: Client, nc: NATS, task_queue: str, node_id: str, temporal_address: str
) -> None:
    await FakeNode(nc, node_id).start()
    wanted = await install_via_ctl(temporal_address, task_queue, node_id, "wanted")
    other = await install_via_ctl(temporal_address, task_queue, node_id, "other")
    await listed(client, f"NodeId = '{node_id}'", 2)

    out = await ctl(
        "list",
        "--node",
        node_id,
        "--model",
        "wanted",
        "--phase",
        "completed",
        address=temporal_address,
    )

    assert out.returncode == 0, out.stderr
    assert wanted in out.stdout and other not in out.stdout
    assert "1 workflow(s), newest first" in out.stdout


async def test_list_prints_the_query_to_paste_into_the_web_ui() -> None:
    out = await ctl(
        "list",
        "--node",
        "node-1",
        "--phase",
        "still_installing",
        "--print-query",
        address="127.0.0.1:1",
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "WorkflowType = 'InstallBackendWorkflow' AND NodeId = 'node-1' "
        "AND InstallPhase = 'still_installing'"
    )


async def test_a_filter_value_with_a_quote_is_refused() -> None:
    out = await ctl("list", "--node", "a' OR '1'='1", "--print-query", address="127.0.0.1:1")

    assert out.returncode == 2
    assert "quotes, backslashes and control characters cannot appear" in one_error_line(out.stderr)


async def backing_off_install(
    client: Client, task_queue: str, node_id: str, temporal_address: str, backoff_seconds: int
) -> str:
    """``backendctl install --no-watch`` on a node nobody answers for; its workflow id once the
    install is backing off."""
    start = await ctl(
        "install",
        "--node-id",
        node_id,
        "--backend",
        "llama-cpp",
        "--task-queue",
        task_queue,
        "--option",
        f"retry_backoff_seconds={backoff_seconds}",
        "--no-watch",
        address=temporal_address,
    )
    assert start.returncode == 0, start.stderr
    await listed(client, f"NodeId = '{node_id}' AND InstallPhase = 'backing_off'", 1)
    return install_workflow_id(node_id, "llama-cpp", "", 0)


async def test_cancel_stops_an_install_that_backs_off_on_a_missing_node(
    client: Client, task_queue: str, node_id: str, temporal_address: str
) -> None:
    workflow_id = await backing_off_install(
        client, task_queue, node_id, temporal_address, backoff_seconds=600
    )

    out = await ctl("cancel", workflow_id, address=temporal_address)

    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        f"cancel requested for {workflow_id}; it stops within seconds — "
        f"{PROG} watch {workflow_id}\n"
    )
    watched = await ctl("--no-live", "watch", workflow_id, address=temporal_address)
    assert watched.returncode == 1
    assert watched.stdout.splitlines()[-1] == f"cancelled: {workflow_id} was cancelled"
    description = await client.get_workflow_handle(workflow_id).describe()
    assert description.status is WorkflowExecutionStatus.CANCELED


async def test_a_piped_watch_of_a_backing_off_install_prints_on_change_only(
    client: Client, task_queue: str, node_id: str, temporal_address: str
) -> None:
    """The countdown to the next try changes every second; a log wants no line for it."""
    workflow_id = await backing_off_install(
        client, task_queue, node_id, temporal_address, backoff_seconds=60
    )

    with pytest.raises(subprocess.TimeoutExpired) as watching:
        await asyncio.to_thread(
            run_ctl, "--no-live", "watch", workflow_id, address=temporal_address, timeout=4
        )
    await client.get_workflow_handle(workflow_id).terminate()

    output = watching.value.stdout or b""
    lines = (output.decode() if isinstance(output, bytes) else output).splitlines()
    assert len(lines) == 1, lines
    assert "backing off" in lines[0]


async def test_cancelling_a_finished_install_says_there_is_nothing_to_cancel(
    nc: NATS, task_queue: str, node_id: str, temporal_address: str
) -> None:
    await FakeNode(nc, node_id).start()
    workflow_id = await install_via_ctl(temporal_address, task_queue, node_id, "done")

    out = await ctl("cancel", workflow_id, address=temporal_address)

    assert out.returncode == 2
    assert one_error_line(out.stderr) == (
        f"error: {workflow_id} is not running (completed); nothing to cancel"
    )


async def test_an_install_started_by_backendctl_carries_a_static_summary_and_details(
    client: Client, nc: NATS, task_queue: str, node_id: str, temporal_address: str
) -> None:
    await FakeNode(nc, node_id).start()
    workflow_id = await install_via_ctl(temporal_address, task_queue, node_id, "demo")

    description = await client.get_workflow_handle(workflow_id).describe()

    assert await description.static_summary() == f"install llama-cpp on {node_id} for demo#0"
    details = await description.static_details()
    assert details is not None and "requested by: backendctl" in details
    phase = description.typed_search_attributes
    assert phase is not None and InstallPhase.COMPLETED.value in str(phase)
