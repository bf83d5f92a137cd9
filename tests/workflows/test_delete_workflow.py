"""``DeleteBackendWorkflow`` against a real node agent over real NATS and Temporal."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError

from durable_installs.contracts.lifecycle import (
    DeleteBackendInput,
    DeleteBackendResult,
    DeleteOutcome,
)
from durable_installs.contracts.names import DELETE_PROGRESS_QUERY
from durable_installs.contracts.rollout import RolloutAction, RolloutInput
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent import Agent
from durable_installs.protocol.messages import BackendInstallRequest
from tests.node_agent.conftest import AgentFactory, fast_config
from tests.node_agent.helpers import NodeClient
from tests.ports import AGENT_PORTS
from tests.workflow_helpers import assert_replays, install_input, start_install
from workflows.delete_backend import DeleteBackendWorkflow
from workflows.rollout import RolloutBackendWorkflow

FAST = {"request_timeout_seconds": 5.0, "stop_wait_seconds": 30.0, "poll_interval_seconds": 0.2}


async def start_delete(
    client: Client, task_queue: str, node_id: str, backend: str, **fields: object
) -> WorkflowHandle[DeleteBackendWorkflow, DeleteBackendResult]:
    input = DeleteBackendInput.model_validate(
        {"node_id": node_id, "backend": backend, **FAST, **fields}
    )
    return await client.start_workflow(
        DeleteBackendWorkflow.run,
        input,
        id=f"delete-test-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue,
    )


async def running_slot(
    client: Client,
    task_queue: str,
    start_agent: AgentFactory,
    gallery: Gallery,
    archives: Path,
) -> NodeClient:
    """An agent with cpu-echo installed and slot qwen3#0 running it."""
    gallery.add_backend(SampleBackend("cpu-echo"), archives)
    node = await start_agent()
    install = await start_install(
        client, task_queue, install_input(node.node_id, backend="cpu-echo", model_id="qwen3")
    )
    await install.result()
    assert await node.running_keys() == ["qwen3#0"]
    return node


async def test_delete_is_refused_while_a_slot_runs_the_backend_and_nothing_is_touched(
    client: Client, task_queue: str, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    node = await running_slot(client, task_queue, start_agent, gallery, archives)

    handle = await start_delete(client, task_queue, node.node_id, "cpu-echo")
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "DeleteRefused"
    assert "qwen3#0" in cause.message and "force" in cause.message
    assert await node.running_keys() == ["qwen3#0"], "the serving slot was left alone"
    listed = await node.listing()
    assert [b.name for b in listed.backends or []] == ["cpu-echo"]
    await assert_replays(handle)


async def test_forced_delete_stops_the_slots_deletes_and_verifies_nothing_remains(
    client: Client, task_queue: str, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    node = await running_slot(client, task_queue, start_agent, gallery, archives)

    handle = await start_delete(client, task_queue, node.node_id, "cpu-echo", force=True)
    result = await handle.result()

    assert result.outcome is DeleteOutcome.DELETED
    assert result.stopped_slots == ["qwen3#0"]
    assert result.removed == ["cpu-echo"]
    assert await node.running_keys() == []
    assert (await node.listing()).backends is None
    assert not (node.backends_dir / "cpu-echo").exists()
    await assert_replays(handle)


async def test_deleting_an_absent_backend_succeeds_and_says_so(
    client: Client, task_queue: str, start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo"), archives)
    node = await start_agent()
    assert (await node.install("cpu-echo")).success

    first_handle = await start_delete(client, task_queue, node.node_id, "cpu-echo", force=True)
    first = await first_handle.result()
    second_handle = await start_delete(client, task_queue, node.node_id, "cpu-echo")
    second = await second_handle.result()

    assert first.outcome is DeleteOutcome.DELETED and first.removed == ["cpu-echo"]
    assert second.outcome is DeleteOutcome.ABSENT
    assert "not installed" in second.message
    await assert_replays(second_handle)


async def test_the_progress_query_answers_the_phase_as_the_string_it_always_was(
    client: Client, task_queue: str, start_agent: AgentFactory
) -> None:
    """``backendctl delete`` and other clients read the phase as a plain string."""
    node = await start_agent()
    handle = await start_delete(client, task_queue, node.node_id, "cpu-echo")
    await handle.result()

    assert await handle.query(DELETE_PROGRESS_QUERY, result_type=str) == "done"


async def test_delete_of_a_node_that_does_not_answer_fails_naming_the_node(
    client: Client, task_queue: str, node_id: str
) -> None:
    handle = await start_delete(client, task_queue, node_id, "cpu-echo")

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    activity_failure = failure.value.cause
    assert isinstance(activity_failure, ActivityError)
    assert node_id in str(activity_failure.cause)


async def test_an_invalid_node_id_fails_at_once_as_invalid_input_naming_the_field(
    client: Client, task_queue: str
) -> None:
    handle = await start_delete(client, task_queue, "node.*", "cpu-echo")

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert cause.message.startswith("invalid input: node_id: it contains '.'")


async def test_a_delete_rollout_deletes_the_backend_on_every_node_reporting_it(
    client: Client, task_queue: str, nats_url: str, tmp_path: Path, gallery: Gallery, archives: Path
) -> None:
    """Targets omitted: the real node registry names the nodes that report the backend."""
    backend = f"cpu-gone-{uuid.uuid4().hex[:6]}"  # no other test's agent reports this one
    gallery.add_backend(SampleBackend(backend), archives)
    agents: list[Agent] = []
    try:
        for name in ("a", "b", "c"):
            node_id = f"del-{name}-{uuid.uuid4().hex[:6]}"
            config = fast_config(
                node_id, tmp_path / node_id, gallery, nats_url, AGENT_PORTS.block()
            )
            agents.append(Agent(config))
            await agents[-1].start()
        having, without = agents[:2], agents[2]
        for agent in having:
            request = BackendInstallRequest(backend=backend)
            assert (await agent.service.install(request)).success
            assert agent.announcer is not None
            await agent.announcer.announce()  # the fleet knows the new backend now, not in 10 s

        rollout = await client.start_workflow(
            RolloutBackendWorkflow.run,
            RolloutInput(backend=backend, action=RolloutAction.DELETE, force=True),
            id=f"delete-rollout-{uuid.uuid4().hex[:10]}",
            task_queue=task_queue,
        )
        status = await rollout.result()

        by_node = {row.node_id: row.state for row in status.nodes}
        assert by_node == {agent.config.node_id: "succeeded" for agent in having}
        assert without.config.node_id not in by_node
        for agent in having:
            assert agent.service.list_backends().backends is None
        await assert_replays(rollout)
    finally:
        for agent in agents:
            await agent.stop()
