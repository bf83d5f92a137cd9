"""``nodes.<node>.files.space``: free space for staged model files, asked over NATS."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from durable_installs.node_agent.files import FilesConfig
from durable_installs.protocol import nats_auth, subjects
from durable_installs.protocol.headroom import GIB, disk_requirement_for
from durable_installs.protocol.messages import FilesSpaceReply
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import WAIT

TOKEN = "files-token-for-tests-0123456789"


def test_the_subject_lives_under_the_nodes_own_prefix() -> None:
    assert subjects.files_space("gpu-1") == "nodes.gpu-1.files.space"
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.files_space("a.b")


def test_the_subject_does_not_clash_with_localais_file_subjects() -> None:
    localai = {"files.ensure", "files.stage", "files.temp", "files.listdir"}
    assert subjects.files_space("n").removeprefix("nodes.n.") not in localai


def test_the_reply_ignores_unknown_fields_and_omits_empty_ones() -> None:
    reply = FilesSpaceReply.model_validate_json(
        '{"available_disk": 5, "total_disk": 10, "from_the_future": [1, 2]}'
    )
    assert reply == FilesSpaceReply(available_disk=5, total_disk=10)
    assert reply.to_wire() == b'{"available_disk":5,"total_disk":10}'


@pytest.mark.parametrize(
    "body",
    [
        '{"available_disk": -1, "total_disk": 10}',
        '{"available_disk": "5", "total_disk": 10}',
        '{"available_disk": 1, "total_disk": 18446744073709551616}',
        '{"available_disk": 1, "total_disk": 2, "address": "' + "h" * 600 + '"}',
        '{"available_disk": 1, "total_disk": 2, "error": "' + "e" * 5000 + '"}',
    ],
)
def test_the_reply_is_bounded(body: str) -> None:
    with pytest.raises(ValidationError):
        FilesSpaceReply.model_validate_json(body)


def test_usable_space_keeps_the_nodes_reserve() -> None:
    reply = FilesSpaceReply(available_disk=10 * GIB, total_disk=100 * GIB, reserved_disk=GIB)
    assert reply.usable_disk == 9 * GIB
    assert reply.fits(9 * GIB) and not reply.fits(9 * GIB + 1)
    full = FilesSpaceReply(available_disk=0, total_disk=100 * GIB, reserved_disk=GIB)
    assert full.usable_disk == 0 and not full.fits(1)


def test_a_node_that_does_not_report_disk_is_not_ruled_out() -> None:
    """As LocalAI: total 0 means "unknown", never "full"."""
    assert FilesSpaceReply(available_disk=0, total_disk=0).fits(10 * GIB)


def test_the_requirement_for_a_model_follows_localai() -> None:
    assert disk_requirement_for(0) == 2 * GIB  # size unknown: a "not wedged" floor
    assert disk_requirement_for(-5) == 2 * GIB
    assert disk_requirement_for(100) == 100 + GIB  # at least 1 GiB of margin
    assert disk_requirement_for(100 * GIB) == 105 * GIB  # 5 % above 20 GiB


def test_the_orchestrator_may_ask_and_a_node_may_answer() -> None:
    """Nodes subscribe ``nodes.<id>.>`` and answer through allow_responses; the orchestrator
    needs the one subject added to what it may publish, and nothing else under ``files.``."""
    node = nats_auth.node_permissions("gpu-1")
    assert "nodes.gpu-1.>" in node.subscribe and node.allow_responses
    assert "nodes.*.files.space" in nats_auth.ORCHESTRATOR_PERMISSIONS.publish
    assert "nodes.*.files.>" not in nats_auth.ORCHESTRATOR_PERMISSIONS.publish


async def _ask(node) -> FilesSpaceReply:
    msg = await node.nc.request(subjects.files_space(node.node_id), b"", timeout=WAIT)
    return FilesSpaceReply.model_validate_json(msg.data)


async def test_the_agent_answers_with_the_models_filesystem(start_agent: AgentFactory) -> None:
    node = await start_agent(files=FilesConfig(reserve_bytes=3 * GIB))
    reply = await _ask(node)

    stat = os.statvfs(node.backends_dir.parent)  # where the models directory lives
    assert reply.total_disk == stat.f_blocks * stat.f_frsize
    assert abs(reply.available_disk - stat.f_bavail * stat.f_frsize) < 64 * 1024**2
    assert reply.reserved_disk == 3 * GIB
    assert reply.address == "", "no token: the file-transfer server is off"
    assert reply.error == ""


async def test_the_reply_names_the_file_transfer_address_when_it_serves(
    start_agent: AgentFactory,
) -> None:
    node = await start_agent(files=FilesConfig(token=TOKEN, address="127.0.0.1:0"))
    reply = await _ask(node)

    assert node.agent.files is not None
    assert reply.address == node.agent.files.advertised_address
    assert reply.address.startswith("127.0.0.1:") and not reply.address.endswith(":0")
    assert reply.max_file_size == FilesConfig().max_file_bytes


async def test_a_body_that_is_not_json_is_still_answered(start_agent: AgentFactory) -> None:
    node = await start_agent()
    for body in (b"", b"{}", b'{"anything": 1}', b"not json"):
        msg = await node.nc.request(subjects.files_space(node.node_id), body, timeout=WAIT)
        assert FilesSpaceReply.model_validate_json(msg.data).total_disk > 0
