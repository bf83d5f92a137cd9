"""Temporal killed under a running ``watch``: one line that says what happened, exit 2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durable_installs.contracts.install import InstallBackendInput, install_workflow_id
from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.servers import find_binary, free_port, wait_for_port
from tests.backendctl.cli import ROOT, one_error_line
from workflows.install_backend import InstallBackendWorkflow


@pytest.fixture
def doomed_temporal() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Temporal dev server of this test's own, to be killed by it."""
    port = free_port()
    command = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
    ]
    for key in SEARCH_ATTRIBUTES:
        command += ["--search-attribute", f"{key.name}=Keyword"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60, proc)
        yield f"127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_watch(address: str, workflow_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durable_installs.backendctl",
            "--address",
            address,
            "--no-live",
            "watch",
            workflow_id,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


async def test_watch_says_it_lost_temporal_when_the_server_dies(
    doomed_temporal: tuple[str, subprocess.Popen[bytes]],
) -> None:
    address, server = doomed_temporal
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    workflow_id = install_workflow_id("node-x", "cpu-large", "", 0)
    # Nobody polls this queue: the install waits, and watch keeps polling the server.
    await client.start_workflow(
        InstallBackendWorkflow.run,
        InstallBackendInput(node_id="node-x", backend="cpu-large"),
        id=workflow_id,
        task_queue="nobody-polls-this",
    )
    watch = start_watch(address, workflow_id)
    try:
        assert watch.stdout is not None
        first = await asyncio.to_thread(watch.stdout.readline)
        assert workflow_id in first

        server.send_signal(signal.SIGKILL)
        stdout, stderr = await asyncio.to_thread(watch.communicate, timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()

    # The dead server is not mistaken for a missing worker, and no SDK retry chatter shows.
    assert "connect" not in stdout, stdout
    assert watch.returncode == 2
    line = one_error_line(stderr)
    assert line.startswith(f"error: lost Temporal at {address} (")
    assert line.endswith("installs resume when it is back — run the command again then")
