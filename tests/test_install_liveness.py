"""While an install request is outstanding, the activity notices a node that restarted or died.

A scripted node over real NATS stays silent on the install request; what it answers on the
status extension and the stock subjects decides whether the activity keeps waiting. Every
request timeout here is long (60 s): the failures below can only come from a liveness check.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.install import InstallActivities
from durable_installs.contracts.activities import InstallActivityInput, InstallActivityResult
from durable_installs.contracts.failures import NODE_UNREACHABLE, WORKER_STILL_INSTALLING
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendInstallRequest,
    InstallStatusReply,
)
from tests.fake_node import FakeNode
from tests.workflow_helpers import install_input, wait_for

REQUEST_TIMEOUT = 60.0
BOUND = 30.0
"""Generous upper bound on every outcome below; never a performance assertion."""


def install(node_id: str, interval: float = 1.0) -> InstallActivityInput:
    return InstallActivityInput(
        node_id=node_id,
        request=BackendInstallRequest(backend="llama-cpp", model_id="qwen3", op_id="op-1"),
        install_timeout_seconds=REQUEST_TIMEOUT,
        heartbeat_interval_seconds=1.0,
        progress_report_interval_seconds=0,
        liveness_check_interval_seconds=interval,
    )


async def run_install(nc: NATS, input: InstallActivityInput) -> InstallActivityResult:
    async with asyncio.timeout(BOUND):
        return await ActivityEnvironment().run(InstallActivities(nc).install_backend, input)


async def install_failure(nc: NATS, input: InstallActivityInput) -> ApplicationError:
    with pytest.raises(ApplicationError) as failure:
        await run_install(nc, input)
    return failure.value


def in_flight(instance_id: str = "agent-1") -> InstallStatusReply:
    return InstallStatusReply(state="in_flight", instance_id=instance_id)


@pytest.fixture
async def node(nc: NATS, node_id: str) -> AsyncIterator[FakeNode]:
    """A node that never answers its install request unless a test scripts it."""
    node = await FakeNode(nc, node_id).start()
    never = asyncio.Event()

    async def silent(request: BackendInstallRequest, number: int) -> None:
        await never.wait()

    node.script = silent
    yield node
    await node.stop()


async def test_a_node_agent_that_restarted_ends_the_wait_as_still_installing(
    nc: NATS, node: FakeNode
) -> None:
    await node.answer_status(in_flight("agent-1"))

    async def restart_after_first_check() -> None:
        await wait_for(lambda: len(node.status_requests) >= 1, what="a first status check")
        node.status_reply = in_flight("agent-2")  # a new agent, busy with someone else's op

    node.spawn(restart_after_first_check())
    failure = await install_failure(nc, install(node.node_id))

    assert failure.type == WORKER_STILL_INSTALLING
    assert "restarted" in failure.message and "agent-2" not in failure.message
    assert node.status_requests[0] == {
        "op_id": "op-1",
        "backend": "llama-cpp",
        "model_id": "qwen3",
    }


async def test_a_node_agent_that_forgot_the_op_ends_the_wait_after_a_second_look(
    nc: NATS, node: FakeNode
) -> None:
    await node.answer_status(InstallStatusReply(state="absent", instance_id="agent-1"))

    failure = await install_failure(nc, install(node.node_id))

    assert failure.type == WORKER_STILL_INSTALLING
    assert "absent" in failure.message
    assert len(node.status_requests) == 2, "one answer alone may be a reply in transit"


async def test_a_reply_in_transit_is_not_taken_for_a_forgotten_op(nc: NATS, node: FakeNode) -> None:
    # The node finished: its status already says running, its reply follows a moment later.
    await node.answer_status(InstallStatusReply(state="running", instance_id="agent-1"))

    async def reply_just_after_the_check(
        request: BackendInstallRequest, number: int
    ) -> BackendInstallReply:
        await wait_for(lambda: node.status_answers >= 1, what="the first status answer sent")
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = reply_just_after_the_check
    result = await run_install(nc, install(node.node_id, interval=1.0))

    assert result.address == "10.0.0.7:50051"


async def test_a_node_agent_still_pulling_the_op_keeps_the_wait(nc: NATS, node: FakeNode) -> None:
    await node.answer_status(in_flight())

    async def reply_after_three_checks(
        request: BackendInstallRequest, number: int
    ) -> BackendInstallReply:
        await wait_for(lambda: len(node.status_requests) >= 3, what="three status checks")
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = reply_after_three_checks
    result = await run_install(nc, install(node.node_id))

    assert result.address == "10.0.0.7:50051"


async def test_a_stock_node_without_the_status_extension_keeps_the_wait(
    nc: NATS, node: FakeNode
) -> None:
    async def reply_after_a_few_seconds(
        request: BackendInstallRequest, number: int
    ) -> BackendInstallReply:
        # Two liveness checks, each asking models.running after start()'s own question.
        await wait_for(lambda: node.running_requests >= 1 + 2, what="two liveness checks")
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = reply_after_a_few_seconds
    result = await run_install(nc, install(node.node_id))

    assert result.address == "10.0.0.7:50051"
    assert node.running_requests >= 1 + 2, "start() asks once, then every liveness check"


async def test_a_node_nothing_answers_for_any_more_is_unreachable(nc: NATS, node: FakeNode) -> None:
    async def vanish_after_the_request() -> None:
        await wait_for(lambda: bool(node.install_bodies), what="the install request")
        await node.stop()

    node.spawn(vanish_after_the_request())
    failure = await install_failure(nc, install(node.node_id))

    assert failure.type == NODE_UNREACHABLE
    assert "nothing answers" in failure.message


async def test_progress_events_stand_in_for_liveness_checks(nc: NATS, node: FakeNode) -> None:
    # A status answer that would end the wait if it were asked.
    await node.answer_status(InstallStatusReply(state="absent", instance_id="agent-1"))
    done = asyncio.Event()

    async def pull_with_progress(
        request: BackendInstallRequest, number: int
    ) -> BackendInstallReply:
        async def stop_soon() -> None:
            # The span is what is tested: several liveness intervals in which progress keeps
            # arriving and nothing is asked; no event marks its end but the clock.
            await asyncio.sleep(3.5)
            done.set()

        node.spawn(stop_soon())
        await node.stream_progress(request.op_id, request.backend, done, interval=0.2)
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = pull_with_progress
    result = await run_install(nc, install(node.node_id))

    assert result.address == "10.0.0.7:50051"
    assert node.status_requests == []


async def test_a_zero_interval_turns_the_checks_off(nc: NATS, node: FakeNode) -> None:
    await node.answer_status(InstallStatusReply(state="absent", instance_id="agent-1"))

    async def reply_after_a_few_seconds(
        request: BackendInstallRequest, number: int
    ) -> BackendInstallReply:
        # The silence is what is tested: over two would-be check intervals (1 s each when
        # on), nothing may be asked; no event marks "nothing happened" but the clock.
        await asyncio.sleep(2.5)
        return BackendInstallReply(success=True, address="10.0.0.7:50051")

    node.script = reply_after_a_few_seconds
    result = await run_install(nc, install(node.node_id, interval=0))

    assert result.address == "10.0.0.7:50051"
    assert node.status_requests == []


@pytest.mark.parametrize("seconds", [0.5, 3601, -1, math.nan, math.inf])
def test_a_liveness_interval_out_of_bounds_is_refused_naming_the_field(seconds: float) -> None:
    problems = install_input("node-1", liveness_check_interval_seconds=seconds).problems()

    assert [field for field, _ in problems] == ["liveness_check_interval_seconds"]


@pytest.mark.parametrize("seconds", [0, 1, 15, 3600])
def test_a_liveness_interval_in_bounds_is_accepted(seconds: float) -> None:
    assert install_input("node-1", liveness_check_interval_seconds=seconds).problems() == []


def test_a_status_reply_without_an_instance_id_is_the_stock_shape() -> None:
    assert InstallStatusReply(state="absent").to_wire() == b'{"state":"absent"}'
    assert InstallStatusReply.model_validate_json(b'{"state":"absent"}').instance_id == ""


def test_an_oversized_instance_id_makes_the_status_reply_unreadable() -> None:
    with pytest.raises(ValidationError, match="instance_id"):
        InstallStatusReply.model_validate_json(
            b'{"state":"in_flight","instance_id":"' + b"x" * 129 + b'"}'
        )
