"""Two agents with one node id: the second refuses to start, or the younger stops serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from durable_installs.devstack.sample_backend import Gallery
from durable_installs.node_agent.cli import main
from durable_installs.node_agent.duplicates import Instance, instance_subject, other_instances
from tests.node_agent.agent_process import agent_command, spawn_agent, wait_ready
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import WAIT, eventually

ASKER = Instance("0" * 32, "tests", 1, 0.0)


async def instances(nc: NATS, node_id: str) -> list[Instance]:
    """Every agent answering for ``node_id`` (asked as a newcomer would)."""
    return await other_instances(nc, node_id, ASKER, window=1.0)


async def test_a_second_agent_with_a_taken_node_id_refuses_to_start_naming_the_first(
    start_agent: AgentFactory,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    nats_url: str,
    port_range: tuple[int, int],
) -> None:
    first = await start_agent()
    command = agent_command(node_id, tmp_path / "second", gallery, nats_url, port_range)
    second = await spawn_agent(command, tmp_path / "second.log")
    try:
        async with asyncio.timeout(WAIT):
            code = await second.process.wait()
    finally:
        await second.kill()

    assert code == 2
    last_line = second.log_text().strip().splitlines()[-1]
    assert last_line.startswith(f"error: node id {node_id} is already served by agent ")
    assert first.agent.instance.instance_id in last_line
    assert f"pid {os.getpid()}" in last_line
    assert not (tmp_path / "second").exists()  # refused before touching its directory


async def test_two_agents_started_at_once_end_with_exactly_one_serving(
    nc: NATS,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    nats_url: str,
    port_range: tuple[int, int],
) -> None:
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    command = [*agent_command(node_id, tmp_path / "b", gallery, nats_url, port_range)]
    command += ["--duplicate-check-interval", "0.5"]
    agents = await asyncio.gather(*(spawn_agent(command, log) for log in logs))
    asks: dict[int, int] = {}  # check rounds by agent pid: each round asks the instance subject

    async def count_ask(msg: Msg) -> None:
        asker = Instance.from_wire(msg.data)
        if asker is not None:
            asks[asker.pid] = asks.get(asker.pid, 0) + 1

    counting = None
    try:
        await eventually(
            lambda: sum(a.process.returncode is not None for a in agents) >= 1,
            "one of the two agents to stop",
        )
        # A few more check rounds: the survivor must keep serving through them. Listening only
        # now leaves the start-up checks as they were (a listener there would delay them).
        counting = await nc.subscribe(instance_subject(node_id), cb=count_ask)
        survivor = agents[1] if agents[0].process.returncode is not None else agents[0]
        await eventually(
            lambda: asks.get(survivor.pid, 0) >= 2 or survivor.process.returncode is not None,
            "two more check rounds of the surviving agent",
        )
        stopped = [a for a in agents if a.process.returncode is not None]
        serving = [a for a in agents if a.process.returncode is None]
        assert len(stopped) == 1 and len(serving) == 1
        assert stopped[0].process.returncode in (2,)
        assert "error: node id" in stopped[0].log_text().strip().splitlines()[-1]
        await wait_ready(serving[0])
        answering = await instances(nc, node_id)
        assert [i.pid for i in answering] == [serving[0].pid]
    finally:
        if counting is not None:
            await counting.unsubscribe()
        for agent in agents:
            await agent.kill()


async def test_an_agent_that_missed_the_start_up_check_stops_when_the_older_one_answers(
    nc: NATS,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    nats_url: str,
    port_range: tuple[int, int],
) -> None:
    command = agent_command(node_id, tmp_path / "backends", gallery, nats_url, port_range)
    command += ["--duplicate-check-interval", "0.5"]
    older = await spawn_agent(command, tmp_path / "older.log")
    younger = None
    try:
        await wait_ready(older)
        older.process.send_signal(signal.SIGSTOP)  # subscribed, but answers nobody
        younger = await spawn_agent(command, tmp_path / "younger.log")
        await wait_ready(younger)  # its start-up check heard nothing
        older.process.send_signal(signal.SIGCONT)

        async with asyncio.timeout(WAIT):
            code = await younger.process.wait()

        assert code == 2
        last_line = younger.log_text().strip().splitlines()[-1]
        assert last_line.startswith(f"error: node id {node_id} is also served by the older agent ")
        assert f"pid {older.pid}" in last_line
        await eventually(
            lambda: "also served by the younger agent" in older.log_text(),
            "the older agent to log the younger one",
        )
        assert older.process.returncode is None
        assert [i.pid for i in await instances(nc, node_id)] == [older.pid]
    finally:
        with contextlib.suppress(ProcessLookupError):
            older.process.send_signal(signal.SIGCONT)
        await older.kill()
        if younger is not None:
            await younger.kill()


def test_a_negative_duplicate_check_interval_is_refused_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--node-id", "n", "--backends-dir", str(tmp_path), "--duplicate-check-interval", "-1"]

    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --duplicate-check-interval -1.0: must be 0 or more\n"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"not json",
        b'{"instance_id": "ab", "host": "h", "pid": true, "started_at": 1}',
        b'{"instance_id": "AB;rm", "host": "h", "pid": 1, "started_at": 1}',
        b'{"instance_id": "ab", "host": "h\\nforged log line", "pid": 1, "started_at": 1}',
        b'{"instance_id": "ab", "host": "h", "pid": 1, "started_at": "soon"}',
        b'{"instance_id": "ab", "host": "' + b"h" * 2000 + b'", "pid": 1, "started_at": 1}',
    ],
)
def test_an_instance_reply_that_is_malformed_or_too_large_is_ignored(body: bytes) -> None:
    assert Instance.from_wire(body) is None


def test_the_older_of_two_instances_is_the_earlier_start_then_the_smaller_id() -> None:
    first, second = Instance("aa", "h", 1, 10.0), Instance("bb", "h", 2, 10.0)

    assert first.older_than(second) and not second.older_than(first)
    assert Instance("ff", "h", 3, 9.0).older_than(first)
