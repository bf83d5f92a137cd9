"""A node agent as a real subprocess (``backend-node-agent``), for tests that SIGKILL it.

The agent's log goes to a file (a pipe nobody drains could block it), and the process is
killed in a ``finally`` so a failing assertion never leaves it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from durable_installs.devstack.sample_backend import Gallery
from durable_installs.protocol.messages import GalleryConfig, encode_galleries
from tests.node_agent.helpers import WAIT


@dataclass
class AgentProcess:
    """One running ``backend-node-agent`` and where its log goes."""

    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def terminate(self) -> int:
        """SIGTERM, as systemd or a container runtime stops it; its exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        async with asyncio.timeout(WAIT):
            return await self.process.wait()


def agent_command(
    node_id: str,
    backends_dir: Path,
    gallery: Gallery | GalleryConfig,
    nats_url: str,
    ports: tuple[int, int],
    *,
    readiness_timeout: float = 20,
) -> list[str]:
    """``backend-node-agent`` for one node: the one command line every test that runs the
    agent as a real process uses (node agent tests, the chaos suite)."""
    config = gallery.config if isinstance(gallery, Gallery) else gallery
    return [
        sys.executable,
        "-m",
        "durable_installs.node_agent",
        "--node-id",
        node_id,
        "--backends-dir",
        str(backends_dir),
        "--galleries",
        encode_galleries([config]),
        "--advertise-host",
        "127.0.0.1",
        "--bind-host",
        "127.0.0.1",
        "--port-range",
        f"{ports[0]}-{ports[1]}",
        "--readiness-timeout",
        f"{readiness_timeout:g}",
        "--nats-url",
        nats_url,
    ]


async def spawn_agent(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> AgentProcess:
    """Start the agent; stdout is a pipe (its ``ready`` line), stderr goes to ``log``."""
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
    return AgentProcess(process, log)


async def wait_ready(agent: AgentProcess) -> None:
    """Wait for the agent's ``ready`` line; fails with its log if it exits first."""
    assert agent.process.stdout is not None
    async with asyncio.timeout(WAIT):
        line = await agent.process.stdout.readline()
    assert b"ready" in line, f"agent did not start:\n{agent.log_text()}"


@contextlib.asynccontextmanager
async def running_agent(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[AgentProcess]:
    """A started agent subprocess, SIGKILLed on exit if still running."""
    agent = await spawn_agent(command, log, env)
    try:
        await wait_ready(agent)
        yield agent
    finally:
        await agent.kill()
