"""``list``, ``nodes``, ``backends``, ``rollout`` and ``cancel`` against a real worker and NATS."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowExecutionStatus

from durable_installs.contracts.install import InstallPhase, install_workflow_id
from durable_installs.protocol.messages import NodeBackendInfo, RunningModelInfo
from tests.backendctl.cli import PROG, one_error_line, run_ctl
from tests.fake_node import FakeNode
from tests.workflow_helpers import FAST, wait_until

FAST_OPTIONS = [arg for key, value in FAST.items() for arg in ("--option", f"{key}={value}")]


async def ctl(
    *args: str, address: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_ctl, *args, address=address, env=env)


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


async def test_cancel_stops_an_install_that_backs_off_on_a_missing_node(
    client: Client, task_queue: str, node_id: str, temporal_address: str
) -> None:
    start = await ctl(
        "install",
        "--node-id",
        node_id,
        "--backend",
        "llama-cpp",
        "--task-queue",
        task_queue,
        "--option",
        "retry_backoff_seconds=600",
        "--no-watch",
        address=temporal_address,
    )
    assert start.returncode == 0, start.stderr
    workflow_id = install_workflow_id(node_id, "llama-cpp", "", 0)
    await listed(client, f"NodeId = '{node_id}' AND InstallPhase = 'backing_off'", 1)

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
    start = await ctl(
        "install",
        "--node-id",
        node_id,
        "--backend",
        "llama-cpp",
        "--task-queue",
        task_queue,
        "--option",
        "retry_backoff_seconds=60",
        "--no-watch",
        address=temporal_address,
    )
    assert start.returncode == 0, start.stderr
    workflow_id = install_workflow_id(node_id, "llama-cpp", "", 0)
    await listed(client, f"NodeId = '{node_id}' AND InstallPhase = 'backing_off'", 1)

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


async def test_nodes_shows_what_each_node_runs_and_which_do_not_answer(
    nc: NATS, nats_url: str, node_id: str, temporal_address: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="cpu-llama-cpp", version="1.2.3")]
    node.running = [RunningModelInfo(model_id="qwen3", replica_index=0, address="10.0.0.7:50051")]
    missing = f"{node_id}-gone"

    out = await ctl(
        "nodes",
        "--node",
        node_id,
        "--node",
        missing,
        "--json",
        address=temporal_address,
        env={"NATS_URL": nats_url},
    )

    assert out.returncode == 0, out.stderr
    reports = {report["node_id"]: report for report in json.loads(out.stdout)}
    assert reports[node_id]["answered"] is True
    assert reports[node_id]["backends"] == [{"name": "cpu-llama-cpp", "version": "1.2.3"}]
    assert reports[node_id]["running"] == [
        {"model_id": "qwen3", "replica_index": 0, "address": "10.0.0.7:50051"}
    ]
    assert reports[missing]["answered"] is False
    assert "no responders" in reports[missing]["problem"]


async def test_nodes_table_escapes_what_a_node_sends(
    nc: NATS, nats_url: str, node_id: str, temporal_address: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="[bold]evil\x1b[31m", version="1")]

    out = await ctl(
        "nodes", "--node", node_id, address=temporal_address, env={"NATS_URL": nats_url}
    )

    assert out.returncode == 0, out.stderr
    assert "[bold]evil?[31m" in out.stdout
    assert "\x1b" not in out.stdout


async def test_nats_down_is_one_line_naming_the_url(temporal_address: str) -> None:
    out = await ctl(
        "nodes",
        "--node",
        "node-1",
        address=temporal_address,
        env={"NATS_URL": "nats://127.0.0.1:1"},
    )

    assert out.returncode == 2
    assert one_error_line(out.stderr).startswith(
        "error: cannot connect to NATS at nats://127.0.0.1:1"
    )


async def test_backends_lists_gallery_entries_with_the_nodes_that_have_them(
    nc: NATS, nats_url: str, node_id: str, temporal_address: str, tmp_path: Path
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="cpu-llama-cpp", version="1.2.3")]
    index = tmp_path / "index.yaml"
    index.write_text(
        "- name: llama-cpp\n  capabilities: {default: cpu-llama-cpp}\n"
        "- name: cpu-llama-cpp\n  uri: https://example.invalid/a.tar\n  version: 1.2.3\n"
        "- name: cpu-whisper\n  uri: https://example.invalid/b.tar\n"
    )

    out = await ctl(
        "backends",
        "--gallery",
        str(index),
        "--node",
        node_id,
        "--json",
        address=temporal_address,
        env={"NATS_URL": nats_url},
    )

    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert node_id in rows["llama-cpp"]["nodes"] and rows["llama-cpp"]["kind"] == "meta"
    assert node_id in rows["cpu-llama-cpp"]["nodes"]
    assert node_id not in rows["cpu-whisper"]["nodes"]


async def test_rollout_starts_and_ends_with_a_per_slot_table(
    client: Client, nc: NATS, task_queue: str, node_id: str, temporal_address: str
) -> None:
    await FakeNode(nc, node_id).start()
    rollout_id = f"rollout-{node_id}"

    out = await ctl(
        "--no-live",
        "rollout",
        "--backend",
        "llama-cpp",
        "--target",
        f"{node_id}:qwen3:0,1",
        "--workflow-id",
        rollout_id,
        "--task-queue",
        task_queue,
        *FAST_OPTIONS,
        address=temporal_address,
    )

    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"rollout {rollout_id}"
    assert lines[-1] == f"rollout {rollout_id} installed 2 slot(s)"
    table = [line for line in lines if node_id in line and "qwen3#" in line]
    assert len(table) == 2 and all("succeeded" in line for line in table)
    description = await client.get_workflow_handle(rollout_id).describe()
    assert await description.static_summary() == "rollout llama-cpp to 2 slot(s)"
    slot = install_workflow_id(node_id, "llama-cpp", "qwen3", 1)
    install = await client.get_workflow_handle(slot).describe()
    assert await install.static_summary() == (
        f"install llama-cpp on {node_id} for qwen3#1 (rollout {rollout_id})"
    )
    assert f"requested by: rollout `{rollout_id}`" in (await install.static_details() or "")


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
