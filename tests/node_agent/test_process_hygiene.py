"""Backend processes across a SIGKILL of the agent: adopted or killed, never doubled or leaked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent.records import ProcessRecord, ProcessRecords, proc_stat
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendInstallRequest,
    BackendStopRequest,
    ModelsRunningReply,
)
from tests.node_agent.agent_process import agent_command, running_agent
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import WAIT, eventually


def processes_in(directory: Path) -> list[int]:
    """Pids of every process whose working directory is ``directory`` (a backend's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def reaping(directory: Path) -> Iterator[None]:
    """Whatever the test leaves running in ``directory`` is killed, also on failure."""
    try:
        yield
    finally:
        for pid in processes_in(directory):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # also a stopped one


@dataclass
class EchoNode:
    """An agent command line for this test's node, its gallery offering ``cpu-echo``."""

    command: list[str]
    backend_dir: Path
    """Where ``cpu-echo`` is installed and its processes run."""


@pytest.fixture
def echo_node(
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    archives: Path,
    nats_url: str,
    port_range: tuple[int, int],
) -> EchoNode:
    gallery.add_backend(SampleBackend("cpu-echo"), archives)
    backends = tmp_path / "backends"
    return EchoNode(
        agent_command(node_id, backends, gallery, nats_url, port_range), backends / "cpu-echo"
    )


async def install(nc: NATS, node_id: str) -> BackendInstallReply:
    request = BackendInstallRequest(backend="cpu-echo", model_id="m").to_wire()
    msg = await nc.request(subjects.install(node_id), request, timeout=WAIT)
    return BackendInstallReply.model_validate_json(msg.data)


async def running(nc: NATS, node_id: str) -> list[str]:
    msg = await nc.request(subjects.models_running(node_id), b"{}", timeout=WAIT)
    reply = ModelsRunningReply.model_validate_json(msg.data)
    return [f"{m.model_id}#{m.replica_index} {m.address}" for m in reply.models or []]


async def test_a_backend_outlives_a_killed_agent_and_the_restarted_agent_adopts_it(
    nc: NATS, node_id: str, tmp_path: Path, echo_node: EchoNode
) -> None:
    backend_dir, command = echo_node.backend_dir, echo_node.command
    with reaping(backend_dir):
        async with running_agent(command, tmp_path / "first.log") as first:
            before = await install(nc, node_id)
            assert before.success, before.error
            await first.kill()
        [backend_pid] = processes_in(backend_dir)  # the model keeps serving

        async with running_agent(command, tmp_path / "second.log"):
            after = await install(nc, node_id)

            assert after.success, after.error
            assert after.address == before.address
            assert processes_in(backend_dir) == [backend_pid]
            port = before.address.rsplit(":", 1)[1]
            assert await running(nc, node_id) == [f"m#0 127.0.0.1:{port}"]

            await nc.publish(
                subjects.backend_stop(node_id), BackendStopRequest(backend="m#0").to_wire()
            )
            await eventually(lambda: processes_in(backend_dir) == [], "the adopted one to stop")
            assert await running(nc, node_id) == []


async def test_a_stopped_agent_stops_its_backends_by_default(
    nc: NATS, node_id: str, tmp_path: Path, echo_node: EchoNode
) -> None:
    backend_dir, command = echo_node.backend_dir, echo_node.command
    with reaping(backend_dir):
        async with running_agent(command, tmp_path / "agent.log") as agent:
            assert (await install(nc, node_id)).success
            assert await agent.terminate() == 0

        assert processes_in(backend_dir) == []


async def test_with_keep_backends_a_restarted_agent_adopts_what_the_stopped_one_left_serving(
    nc: NATS, node_id: str, tmp_path: Path, echo_node: EchoNode
) -> None:
    """An agent upgrade or restart (SIGTERM) costs no slot its process."""
    backend_dir, command = echo_node.backend_dir, [*echo_node.command, "--keep-backends"]
    with reaping(backend_dir):
        async with running_agent(command, tmp_path / "first.log") as first:
            before = await install(nc, node_id)
            assert before.success, before.error
            assert await first.terminate() == 0
            assert "left 1 backend process running" in first.log_text()
        [backend_pid] = processes_in(backend_dir)

        async with running_agent(command, tmp_path / "second.log") as second:
            after = await install(nc, node_id)

            assert (after.success, after.address) == (True, before.address)
            assert processes_in(backend_dir) == [backend_pid]
            assert "adopted" in second.log_text()


async def test_a_survivor_that_does_not_answer_health_is_killed_and_the_slot_respawned(
    nc: NATS, node_id: str, tmp_path: Path, echo_node: EchoNode
) -> None:
    backend_dir, command = echo_node.backend_dir, echo_node.command
    with reaping(backend_dir):
        async with running_agent(command, tmp_path / "first.log") as first:
            assert (await install(nc, node_id)).success
            await first.kill()
        [hung] = processes_in(backend_dir)
        os.kill(hung, signal.SIGSTOP)  # alive, but answers nothing

        async with running_agent(command, tmp_path / "second.log"):
            assert proc_stat(hung) is None  # killed at start-up
            reply = await install(nc, node_id)

            assert reply.success, reply.error
            [fresh] = processes_in(backend_dir)
            assert fresh != hung


async def test_a_recorded_pid_now_held_by_an_unrelated_process_is_neither_killed_nor_adopted(
    start_agent: AgentFactory, nc: NATS, node_id: str, tmp_path: Path
) -> None:
    unrelated = await asyncio.create_subprocess_exec("sleep", "300", start_new_session=True)
    try:
        stat = proc_stat(unrelated.pid)
        assert stat is not None
        backends = tmp_path / "backends"
        records = ProcessRecords(backends)
        records.save(
            [
                ProcessRecord(
                    key="m#0",
                    backend="cpu-echo",
                    directory=str(backends / "cpu-echo"),
                    identity=None,
                    port=50051,
                    pid=unrelated.pid,
                    start_ticks=stat.start_ticks - 1,  # what a dead process with this pid had
                    log=str(backends / ".logs" / "m.log"),
                )
            ]
        )

        await start_agent()

        assert proc_stat(unrelated.pid) == stat
        assert await running(nc, node_id) == []
        assert records.load() == []
    finally:
        unrelated.kill()
        await unrelated.wait()


async def test_what_a_dead_recorded_process_forked_in_its_directory_is_killed(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    backends = tmp_path / "backends"
    backend_dir = backends / "cpu-echo"
    backend_dir.mkdir(parents=True)
    with reaping(backend_dir):
        leader = await asyncio.create_subprocess_exec(
            "sh", "-c", "sleep 300 & wait", cwd=backend_dir, start_new_session=True
        )
        await eventually(lambda: len(processes_in(backend_dir)) == 2, "run.sh to fork")
        stat = proc_stat(leader.pid)
        assert stat is not None
        [child] = [pid for pid in processes_in(backend_dir) if pid != leader.pid]
        ProcessRecords(backends).save(
            [
                ProcessRecord(
                    key="m#0",
                    backend="cpu-echo",
                    directory=str(backend_dir),
                    identity=None,
                    port=50051,
                    pid=leader.pid,
                    start_ticks=stat.start_ticks,
                    log=str(backends / ".logs" / "m.log"),
                )
            ]
        )
        leader.kill()
        await leader.wait()
        assert processes_in(backend_dir) == [child]  # the orphan lives on

        await start_agent()

        await eventually(lambda: processes_in(backend_dir) == [], "the orphan to be killed")


def test_records_that_are_malformed_or_point_outside_the_backends_dir_are_ignored(
    tmp_path: Path,
) -> None:
    good = {
        "key": "m#0",
        "backend": "cpu-echo",
        "directory": str(tmp_path / "cpu-echo"),
        "identity": [1, 2],
        "port": 50051,
        "pid": 4242,
        "start_ticks": 99,
        "log": "",
    }
    bad = [
        {**good, "directory": "/etc"},
        {**good, "key": "no replica"},
        {**good, "pid": True},
        {**good, "port": 70000},
        "text",
    ]
    (tmp_path / ".processes.json").write_text(json.dumps({"processes": [good, *bad]}))

    assert [r.pid for r in ProcessRecords(tmp_path).load()] == [4242]
