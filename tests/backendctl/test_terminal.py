"""Live views and Ctrl-C in a pseudo-terminal, as a person at a terminal sees them."""

from __future__ import annotations

import asyncio
import re

import pexpect
from nats.aio.client import Client as NATS
from temporalio.client import Client, WorkflowExecutionStatus

from durable_installs.contracts.install import install_workflow_id
from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.backendctl.cli import PROG, Child, spawn_ctl
from tests.fake_node import FakeNode

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen(child: Child) -> str:
    """What the terminal showed so far, without the escape sequences that drew it, with the
    terminal's line wrapping undone (a long status line wraps at the terminal's width)."""
    text = (child.before or "") + (child.after if isinstance(child.after, str) else "")
    return re.sub(r" ?\r\n", " ", ANSI.sub("", text))


async def expect(child: Child, pattern: str) -> str:
    await asyncio.to_thread(child.expect, pattern)
    return screen(child)


async def finish(child: Child) -> int:
    """Read to the end and return the exit code."""
    await asyncio.to_thread(child.expect, pexpect.EOF)
    child.close()
    assert child.exitstatus is not None
    return child.exitstatus


async def test_ctrl_c_in_watch_says_the_install_goes_on_and_how_to_watch_again(
    client: Client, task_queue: str, node_id: str, temporal_address: str
) -> None:
    workflow_id = install_workflow_id(node_id, "llama-cpp", "", 0)
    child = spawn_ctl(
        "install",
        "--node-id",
        node_id,
        "--backend",
        "llama-cpp",
        "--task-queue",
        task_queue,
        "--option",
        "retry_backoff_seconds=600",
        address=temporal_address,
    )
    try:
        # The node does not exist: the live line says when the next try is and how to stop it.
        shown = await expect(child, r"stop it: \S*backendctl cancel\s+install/\S+/0")
        assert "backing off" in shown
        assert re.search(r"next try \d\d:\d\d:\d\d UTC \(in (\d+m|\d+s)\)", shown), shown
        assert f"stop it: {PROG} cancel {workflow_id}" in shown

        child.sendintr()
        await asyncio.to_thread(child.expect, pexpect.EOF)
        said = screen(child)
        child.close()
    finally:
        child.close(force=True)

    assert child.exitstatus == 130
    assert f"stopped watching; {workflow_id} goes on — {PROG} watch {workflow_id}" in said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said
    handle = client.get_workflow_handle(workflow_id)
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
    await handle.cancel()


async def test_ctrl_c_message_is_exact_and_without_traceback(
    client: Client, task_queue: str, node_id: str, temporal_address: str
) -> None:
    workflow_id = install_workflow_id(node_id, "llama-cpp", "", 0)
    await client.start_workflow(
        "InstallBackendWorkflow",
        {"node_id": node_id, "backend": "llama-cpp", "retry_backoff_seconds": 600},
        id=workflow_id,
        task_queue=task_queue,
    )
    child = spawn_ctl("watch", workflow_id, address=temporal_address)
    try:
        await expect(child, "backing off")
        child.sendintr()
        await asyncio.to_thread(child.expect, pexpect.EOF)
        tail = ANSI.sub("", child.before or "").replace("\r\n", "\n")
        child.close()
    finally:
        child.close(force=True)

    assert child.exitstatus == 130
    assert tail.strip().splitlines()[-1] == (
        f"stopped watching; {workflow_id} goes on — {PROG} watch {workflow_id}"
    )
    assert "Traceback" not in tail
    await client.get_workflow_handle(workflow_id).cancel()


async def test_a_rollout_draws_a_live_per_slot_table_in_a_terminal(
    nc: NATS, task_queue: str, node_id: str, temporal_address: str
) -> None:
    await FakeNode(nc, node_id).start()
    child = spawn_ctl(
        "rollout",
        "--backend",
        "llama-cpp",
        "--target",
        f"{node_id}:qwen3:0,1",
        "--workflow-id",
        f"rollout-live-{node_id}",
        "--task-queue",
        task_queue,
        "--option",
        "install_timeout_seconds=5",
        address=temporal_address,
    )
    try:
        shown = await expect(child, r"installed 2 slot\(s\)")
        code = await finish(child)
    finally:
        child.close(force=True)

    assert code == 0
    assert "┃ node" in shown or "node" in shown.split("\n")[1], shown
    rows = [line for line in shown.splitlines() if node_id in line and "qwen3#" in line]
    assert any("succeeded" in line for line in rows), shown


async def test_install_redraws_one_live_progress_line_to_the_address(
    nc: NATS, task_queue: str, node_id: str, temporal_address: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    done = asyncio.Event()

    async def downloading(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await node.stream_progress(request.op_id, request.backend, done, interval=0.2)
        return await node.reply_running(request, number)

    node.script = downloading
    child = spawn_ctl(
        "install",
        "--node-id",
        node_id,
        "--backend",
        "llama-cpp",
        "--model-id",
        "bar",
        "--task-queue",
        task_queue,
        "--option",
        "install_timeout_seconds=60",
        address=temporal_address,
    )
    try:
        shown = await expect(child, r"downloading · \[#+\.*\]\s+\d+\.\d%")
        assert "bar#0 on " + node_id in shown
        done.set()
        shown = await expect(child, r"installed llama-cpp for bar#0 on \S+ at 10\.0\.0\.7:50051")
        code = await finish(child)
    finally:
        child.close(force=True)

    assert code == 0
    assert f"bar#0 on {node_id} · installed llama-cpp at 10.0.0.7:50051" in shown
