"""A workflow from another codebase installs a slot by type name and task queue only.

``ModelLoaderWorkflow`` stands for another team's code: it imports nothing from this project,
runs on its own task queue and passes plain JSON. Any SDK can do the same.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from nats.aio.client import Client as NATS
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.worker import Worker

from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest
from tests.fake_node import FakeNode
from tests.workflow_helpers import FAST, assert_replays, wait_for, wait_until


@workflow.defn(name="ModelLoaderWorkflow")
class ModelLoaderWorkflow:
    """Needs one slot installed before it loads a model; knows only names and JSON."""

    @workflow.run
    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        install_queue: str = request["install_task_queue"]
        slot: dict[str, Any] = request["slot"]
        install_id = "install/{}/{}/{}/{}".format(
            slot["node_id"], slot["backend"], slot.get("model_id") or "-", slot["replica_index"]
        )
        try:
            result: dict[str, Any] = await workflow.execute_child_workflow(
                "InstallBackendWorkflow",
                slot,
                id=install_id,
                task_queue=install_queue,
                result_type=dict,
            )
            shared = False
        except WorkflowAlreadyStartedError:
            # Someone else is installing this slot: wait for that install instead.
            result = await workflow.execute_activity(
                "await_install",
                install_id,
                task_queue=install_queue,
                result_type=dict,
                start_to_close_timeout=timedelta(hours=7),
                heartbeat_timeout=timedelta(seconds=60),
            )
            shared = True
        return {"address": result["address"], "shared": shared}


async def test_two_foreign_workflows_share_one_install_by_type_name(
    client: Client, nc: NATS, task_queue: str, node_id: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    release = asyncio.Event()

    async def held(request: BackendInstallRequest, number: int) -> BackendInstallReply:
        await release.wait()
        return await node.reply_running(request, number)

    node.script = held
    slot = {
        "node_id": node_id,
        "backend": "llama-cpp",
        "model_id": "qwen3",
        "replica_index": 0,
        **FAST,
        "install_timeout_seconds": 60.0,
    }
    loader_queue = f"loader-{uuid.uuid4().hex[:8]}"
    request = {"install_task_queue": task_queue, "slot": slot}
    async with Worker(client, task_queue=loader_queue, workflows=[ModelLoaderWorkflow]):
        handles = [
            await client.start_workflow(
                ModelLoaderWorkflow.run,
                request,
                id=f"loader-{i}-{node_id}",
                task_queue=loader_queue,
            )
            for i in range(2)
        ]
        await wait_for(lambda: bool(node.install_bodies))

        async def one_loader_waits() -> bool:
            descriptions = [await handle.describe() for handle in handles]
            return any(d.raw_description.pending_activities for d in descriptions)

        await wait_until(one_loader_waits, what="one loader waiting on the other's install")
        release.set()
        results = [await handle.result() for handle in handles]

    assert len(node.install_bodies) == 1
    assert [r["address"] for r in results] == ["10.0.0.7:50051"] * 2
    assert sorted(r["shared"] for r in results) == [False, True]
    install = client.get_workflow_handle(f"install/{node_id}/llama-cpp/qwen3/0")
    assert (await install.describe()).status == WorkflowExecutionStatus.COMPLETED
    await node.stop()
    await assert_replays(install)
