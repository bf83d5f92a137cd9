"""``backend-node-agent`` as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent import backend_rpc
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendInstallRequest,
    encode_galleries,
)

OPTIONS = [
    "--node-id",
    "--backends-dir",
    "--galleries",
    "--advertise-host",
    "--bind-host",
    "--port-range",
    "--capability",
    "--grpc-auth-token",
    "--max-download-size",
    "--max-unpacked-size",
    "--readiness-timeout",
    "--allow-request-galleries",
    "--allow-request-uri",
    "--allow-remote-stop",
    "--files-token",
    "--files-address",
    "--models-dir",
    "--max-file-size",
    "--files-reserve",
    "--nats-url",
    "--nats-creds",
    "--nats-token",
    "--nats-user",
    "--nats-password",
    "--nats-tls-ca",
    "--nats-tls-cert",
    "--nats-tls-key",
    "--log-level",
]


def _pids_listening_on(port: int) -> list[int]:
    """Processes whose command line carries ``--addr ...:<port>`` (our backends)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--addr" in cmdline and any(arg.endswith(f":{port}".encode()) for arg in cmdline):
            pids.append(int(entry.name))
    return pids


def test_help_explains_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "durable_installs.node_agent", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )

    for option in OPTIONS:
        assert option in result.stdout, option
    assert "NATS_URL" in result.stdout
    for env in (
        "NODE_AGENT_ALLOW_REQUEST_GALLERIES",
        "NODE_AGENT_ALLOW_REQUEST_URIS",
        "NODE_AGENT_ALLOW_REMOTE_STOP",
        "NODE_AGENT_FILES_TOKEN",
        "NODE_AGENT_MODELS_DIR",
    ):
        assert env in result.stdout, env


def test_a_file_url_allow_list_entry_is_refused_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "durable_installs.node_agent", "--node-id", "n",
         "--backends-dir", str(tmp_path), "--allow-request-uri", "file:///srv/"],
        capture_output=True,
        text=True,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --allow-request-uri 'file:///srv/': local paths and file:// URLs are never "
        "accepted from requests"
    ]


def test_allow_lists_come_from_the_environment_when_no_flag_is_given(tmp_path: Path) -> None:
    from durable_installs.node_agent.cli import build_parser, config_from_args

    env = {
        "NODE_AGENT_ALLOW_REQUEST_GALLERIES": "https://a.example/g/, https://b.example",
        "NODE_AGENT_ALLOW_REQUEST_URIS": "https://c.example/",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.setenv("NODE_AGENT_ALLOW_REMOTE_STOP", "1")
        args = build_parser().parse_args(["--node-id", "n", "--backends-dir", str(tmp_path)])
        config = config_from_args(args)

    assert config.allow_request_galleries == ("https://a.example/g/", "https://b.example")
    assert config.allow_request_uris == ("https://c.example/",)
    assert config.allow_remote_stop


def test_an_invalid_node_id_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_installs.node_agent",
            "--node-id",
            "a.b",
            "--backends-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 2 and "--node-id 'a.b'" in result.stderr


async def test_cli_agent_installs_and_sigterm_stops_its_backend_processes(
    nc: NATS,
    nats_url: str,
    node_id: str,
    tmp_path: Path,
    gallery: Gallery,
    archives: Path,
    port_range: tuple[int, int],
) -> None:
    gallery.add_backend(SampleBackend("cpu-echo"), archives)
    env = {**os.environ, "NATS_URL": nats_url}
    command = [
        sys.executable, "-m", "durable_installs.node_agent", "--node-id", node_id,
        "--backends-dir", str(tmp_path / "backends"),
        "--galleries", encode_galleries([gallery.config]),
        "--advertise-host", "127.0.0.1", "--port-range", f"{port_range[0]}-{port_range[1]}",
    ]  # fmt: skip
    agent = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE)
    try:
        assert agent.stdout is not None
        assert b"ready" in await agent.stdout.readline()
        msg = await nc.request(
            subjects.install(node_id), BackendInstallRequest(backend="cpu-echo").to_wire(), 60
        )
        reply = BackendInstallReply.model_validate_json(msg.data)
        assert reply.success, reply.error
        assert await backend_rpc.health(reply.address)
        port = int(reply.address.rsplit(":", 1)[1])
        assert _pids_listening_on(port)

        agent.send_signal(signal.SIGTERM)
        assert await agent.wait() == 0
        assert _pids_listening_on(port) == []
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
