"""An agent killed after its download completed but before it extracted downloads nothing again."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path

from nats.aio.client import Client as NATS

from durable_installs.devstack.sample_backend import Gallery, SampleBackend, build_archive
from durable_installs.node_agent.pipeline import TEST_PAUSE_BEFORE_EXTRACT
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallRequest
from tests.node_agent.agent_process import agent_command, running_agent
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import ArtifactServer, eventually


class CountingServer(ArtifactServer):
    """Counts the body bytes it sends, whatever the request."""

    def __init__(self) -> None:
        super().__init__()
        self.body_bytes = 0

    def write_body(self, handler: BaseHTTPRequestHandler, payload: bytes) -> None:
        self.body_bytes += len(payload)
        super().write_body(handler, payload)


async def test_a_complete_partial_left_by_a_killed_agent_is_used_without_downloading_again(
    start_agent: AgentFactory,
    nc: NATS,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    archives: Path,
    nats_url: str,
    port_range: tuple[int, int],
) -> None:
    server = CountingServer()
    server.start()
    try:
        built = build_archive(archives / "cpu-echo.tar.gz", SampleBackend("cpu-echo"))
        size = built.path.stat().st_size
        url = server.publish("/cpu-echo.tar.gz", built.path)
        gallery.add({"name": "cpu-echo", "uri": url, "sha256": built.sha256})
        backends = tmp_path / "backends"
        downloads = backends / ".downloads"
        command = agent_command(node_id, backends, gallery, nats_url, port_range)
        pause = {TEST_PAUSE_BEFORE_EXTRACT: "120"}
        async with running_agent(command, tmp_path / "agent.log", pause) as agent:
            request = BackendInstallRequest(backend="cpu-echo", op_id="op-kill").to_wire()
            await nc.publish(subjects.install(node_id), request)
            await eventually(
                lambda: (
                    [p.stat().st_size for p in downloads.glob("*.partial")] == [size]
                    and "pausing before extract" in agent.log_text()
                ),
                "the download to complete and the agent to pause before extracting",
            )
            await agent.kill()
        assert server.body_bytes == size

        node = await start_agent()
        reply = await node.install("cpu-echo")

        assert reply.success, reply.error
        assert server.body_bytes == size  # exactly one full download
        assert [r.range for r in server.requests] == [None, f"bytes={size}-"]
        assert node.partial_files() == []
    finally:
        server.stop()
