"""``rollout`` against a real worker and a scripted node."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from temporalio.client import Client

from durable_installs.contracts.install import install_workflow_id
from tests.backendctl.cli import FAST_OPTIONS, ctl
from tests.fake_node import FakeNode


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
