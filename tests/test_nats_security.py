"""NATS with users, per-subject permissions and TLS, on a real nats-server (issue 11).

The server runs with the configuration :mod:`protocol.nats_auth` writes for ``node-1`` and
``node-2``; every check is made against what that real server allows or refuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.fleet import FleetActivities
from activities.install import InstallActivities
from durable_installs.contracts.activities import InstallActivityInput
from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from durable_installs.node_agent import Agent
from durable_installs.orchestrator.worker import create_worker
from durable_installs.protocol import nats_auth, subjects
from durable_installs.protocol.connection import CREDENTIALS_HINT, NatsOptions, NatsStartupError
from durable_installs.protocol.messages import (
    BackendInstallReply,
    BackendInstallRequest,
    FilesSpaceReply,
)
from durable_installs.protocol.nats_auth import Fleet, TlsFiles, User
from durable_installs.servers import find_binary, free_port, nats_server
from tests.backendctl.cli import one_error_line, run_ctl
from tests.node_agent.conftest import ADVERTISE_HOST, fast_config
from tests.tls import CertFiles, make_tls_files
from tests.worker_process import ROOT, worker_command
from tests.workflow_helpers import install_input, start_install, wait_for

NODES = ["node-1", "node-2"]
LOW_COST = 4
"""bcrypt cost for test servers: the format is the same, the hashing cheaper."""


@dataclass(frozen=True)
class SecuredNats:
    """A running nats-server with the generated configuration, and who may use it."""

    url: str
    fleet: Fleet
    auth_dir: Path
    tls_ca: str = ""

    def options(self, user: User | None, **overrides: str) -> NatsOptions:
        """Connection options of ``user`` (None: anonymous), TLS trust included."""
        fields = {
            "url": self.url,
            "user": user.name if user else "",
            "password": user.password if user else "",
            "tls_ca": self.tls_ca,
        }
        return NatsOptions(**(fields | overrides))

    def node(self, node_id: str) -> User:
        return self.fleet.nodes[node_id]


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    """nats-server with users and permissions, no TLS."""
    auth_dir = tmp_path_factory.mktemp("nats-auth")
    fleet = nats_auth.write_auth_dir(auth_dir, NODES, cost=LOW_COST)
    with nats_server(config=auth_dir / nats_auth.CONFIG_FILE, jetstream=True) as url:
        yield SecuredNats(url, fleet, auth_dir)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory, certs: CertFiles) -> Iterator[SecuredNats]:
    """The same users and permissions, and TLS with a certificate from a test CA."""
    auth_dir = tmp_path_factory.mktemp("nats-auth-tls")
    tls = TlsFiles(certs.server_cert, certs.server_key)
    fleet = nats_auth.write_auth_dir(auth_dir, NODES, tls=tls, cost=LOW_COST)
    with nats_server(config=auth_dir / nats_auth.CONFIG_FILE) as url:
        yield SecuredNats(url, fleet, auth_dir, tls_ca=str(certs.ca))


@dataclass
class Connection:
    """A raw connection as one user, with every error the server sent it."""

    nc: NATS
    errors: list[str] = dataclasses.field(default_factory=list)
    received: list[str] = dataclasses.field(default_factory=list)

    async def on_message(self, msg: Msg) -> None:
        self.received.append(msg.subject)

    async def violation(self, subject: str) -> None:
        """Wait for the server to report a permissions violation on ``subject``."""
        await wait_for(
            lambda: any("permissions violation" in e and f'"{subject}"' in e for e in self.errors),
            within=10,
            what=f"a permissions violation for {subject}",
        )


@pytest.fixture
async def connect_as(secured_nats: SecuredNats) -> AsyncIterator[object]:
    """Open raw connections as a user; closed at teardown."""
    opened: list[Connection] = []

    async def connect(user: User) -> Connection:
        conn = Connection(nc=NATS())

        async def on_error(err: Exception) -> None:
            conn.errors.append(str(err).lower())

        await conn.nc.connect(
            secured_nats.url, user=user.name, password=user.password, error_cb=on_error
        )
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.nc.close()


# --- who may connect ---------------------------------------------------------------------


async def test_a_client_without_credentials_is_refused_with_one_line(
    secured_nats: SecuredNats,
) -> None:
    with pytest.raises(NatsStartupError) as refused:
        await secured_nats.options(None).connect("anonymous")

    message = str(refused.value)
    assert "refused: credentials" in message
    assert "NATS_USER/NATS_PASSWORD or NATS_CREDS" in message
    assert "\n" not in message


async def test_a_wrong_password_is_refused_without_retrying(secured_nats: SecuredNats) -> None:
    wrong = User("node-1", "not-the-password", secured_nats.node("node-1").permissions)
    with pytest.raises(NatsStartupError, match="refused: credentials"):
        await secured_nats.options(wrong).connect("wrong-password")


def test_the_generated_files_keep_the_passwords_to_their_owner(secured_nats: SecuredNats) -> None:
    config = (secured_nats.auth_dir / nats_auth.CONFIG_FILE).read_text()
    for user in secured_nats.fleet.users():
        assert user.password not in config, "the server config holds bcrypt hashes only"
    assert "no_auth_user" not in config
    for path in secured_nats.auth_dir.iterdir():
        if path.suffix in (".conf", ".env"):
            assert path.stat().st_mode & 0o777 == 0o600, path
    env = nats_auth.read_env_file(secured_nats.auth_dir / "node-node-1.env")
    assert env == {"NATS_USER": "node-1", "NATS_PASSWORD": secured_nats.node("node-1").password}


# --- what a node may do ------------------------------------------------------------------


async def test_a_node_cannot_subscribe_to_another_nodes_subjects(
    secured_nats: SecuredNats, connect_as
) -> None:
    node1 = await connect_as(secured_nats.node("node-1"))
    orchestrator = await connect_as(secured_nats.fleet.orchestrator)
    await node1.nc.subscribe("nodes.node-2.>", cb=node1.on_message)
    await node1.nc.subscribe("nodes.node-1.>", cb=node1.on_message)
    await node1.violation("nodes.node-2.>")

    # One publisher, one receiving connection: order is kept, so had the first subscription
    # worked, node-2's message would arrive before node-1's.
    await orchestrator.nc.publish("nodes.node-2.backend.list", b"{}")
    await orchestrator.nc.publish("nodes.node-1.backend.list", b"{}")
    await wait_for(lambda: bool(node1.received), within=10, what="node-1's own message")

    assert node1.received == ["nodes.node-1.backend.list"]


async def test_a_node_cannot_publish_its_stop_nor_another_nodes_install(
    secured_nats: SecuredNats, connect_as
) -> None:
    node1 = await connect_as(secured_nats.node("node-1"))
    node2 = await connect_as(secured_nats.node("node-2"))
    await node1.nc.subscribe("nodes.node-1.>", cb=node1.on_message)
    await node2.nc.subscribe("nodes.node-2.>", cb=node2.on_message)
    await node1.nc.flush()
    await node2.nc.flush()

    await node1.nc.publish("nodes.node-1.stop", b"")
    await node1.nc.publish("nodes.node-2.backend.install", b'{"backend": "evil"}')
    await node1.violation("nodes.node-1.stop")
    await node1.violation("nodes.node-2.backend.install")
    await node2.nc.flush()
    await node1.nc.publish("nodes.node-1.backend.install.op-1.progress", b"{}")
    await wait_for(lambda: bool(node1.received), within=10, what="node-1's own progress")

    assert node1.received == ["nodes.node-1.backend.install.op-1.progress"]
    assert node2.received == []


async def request_once_subscribed(nc: NATS, subject: str) -> Msg:
    """A request, repeated while the server still says no responders.

    The responder has flushed its SUB, yet under load the server has answered a request made
    right after with "no responders" (nats-io/nats-server#2876); a refused *response* would
    time out or show as a permissions violation instead, so retrying keeps the test's point.
    """
    for _ in range(50):
        try:
            return await nc.request(subject, b"{}", timeout=10)
        except NoRespondersError:
            await asyncio.sleep(0.1)
    return await nc.request(subject, b"{}", timeout=10)


async def test_a_node_answers_requests_through_allow_responses(
    secured_nats: SecuredNats, connect_as
) -> None:
    node1 = await connect_as(secured_nats.node("node-1"))
    orchestrator = await connect_as(secured_nats.fleet.orchestrator)

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"models": []}')

    await node1.nc.subscribe("nodes.node-1.models.running", cb=answer)
    await node1.nc.flush()
    reply = await request_once_subscribed(orchestrator.nc, "nodes.node-1.models.running")

    assert reply.data == b'{"models": []}'
    assert node1.errors == []


async def test_the_orchestrator_cannot_stop_a_node_nor_forge_its_progress(
    secured_nats: SecuredNats, connect_as
) -> None:
    node1 = await connect_as(secured_nats.node("node-1"))
    orchestrator = await connect_as(secured_nats.fleet.orchestrator)
    await node1.nc.subscribe("nodes.node-1.>", cb=node1.on_message)
    await node1.nc.flush()

    await orchestrator.nc.publish("nodes.node-1.stop", b"")
    await orchestrator.nc.publish("nodes.node-1.backend.install.op-1.progress", b"{}")
    await orchestrator.violation("nodes.node-1.stop")
    await orchestrator.violation("nodes.node-1.backend.install.op-1.progress")
    await orchestrator.nc.publish("nodes.node-1.backend.stop", b"")
    await wait_for(lambda: bool(node1.received), within=10, what="the allowed backend.stop")

    assert node1.received == ["nodes.node-1.backend.stop"]


# --- the node agent and the worker with auth on -------------------------------------------


async def test_an_agent_with_another_nodes_credentials_refuses_to_start(
    secured_nats: SecuredNats, tmp_path: Path
) -> None:
    gallery = Gallery(path=tmp_path / "gallery" / "index.yaml")
    gallery.write()
    config = fast_config("node-1", tmp_path / "backends", gallery, secured_nats.url, (52000, 52019))
    agent = Agent(
        dataclasses.replace(config, nats=secured_nats.options(secured_nats.node("node-2")))
    )

    with pytest.raises(NatsStartupError) as refused:
        await agent.start()
    await agent.stop()

    message = str(refused.value)
    assert "NATS refused node node-1 the use of nodes.node-1." in message
    assert "permissions violation" in message and "\n" not in message


async def test_an_agent_announces_under_its_own_credentials_and_the_worker_reads_the_fleet(
    secured_nats: SecuredNats, tmp_path: Path
) -> None:
    worker_nc = await secured_nats.options(secured_nats.fleet.orchestrator).connect("worker")
    gallery = Gallery(path=tmp_path / "gallery" / "index.yaml")
    gallery.write()
    config = fast_config("node-1", tmp_path / "backends", gallery, secured_nats.url, (52000, 52019))
    agent = Agent(
        dataclasses.replace(config, nats=secured_nats.options(secured_nats.node("node-1")))
    )
    try:
        await FleetActivities(worker_nc).list_nodes()  # the worker creates the bucket
        await agent.start()
        assert agent.announcer is not None and agent.announcer.announced == 1
        view = await FleetActivities(worker_nc).list_nodes()
    finally:
        await agent.stop()
        await worker_nc.close()

    assert [(n.node_id, n.instance_id) for n in view.nodes] == [
        ("node-1", agent.service.instance_id)
    ]


async def test_the_worker_asks_a_real_agent_for_its_free_space_under_auth(
    secured_nats: SecuredNats, tmp_path: Path
) -> None:
    worker_nc = await secured_nats.options(secured_nats.fleet.orchestrator).connect("worker")
    gallery = Gallery(path=tmp_path / "gallery" / "index.yaml")
    gallery.write()
    config = fast_config("node-1", tmp_path / "backends", gallery, secured_nats.url, (52000, 52019))
    agent = Agent(
        dataclasses.replace(
            config, nats=secured_nats.options(secured_nats.node("node-1")), announce_interval=0
        )
    )
    try:
        await agent.start()
        msg = await worker_nc.request(subjects.files_space("node-1"), b"{}", timeout=10)
    finally:
        await agent.stop()
        await worker_nc.close()

    reply = FilesSpaceReply.model_validate_json(msg.data)
    assert reply.total_disk > 0 and reply.error == ""


async def test_a_node_cannot_announce_as_another_node_and_the_worker_cannot_announce_at_all(
    secured_nats: SecuredNats, connect_as
) -> None:
    node1 = await connect_as(secured_nats.node("node-1"))
    orchestrator = await connect_as(secured_nats.fleet.orchestrator)

    await node1.nc.publish("$KV.backend-nodes.node-2.forged", b"{}")
    await orchestrator.nc.publish("$KV.backend-nodes.node-1.forged", b"{}")

    # the recorded errors are lower-cased
    await node1.violation("$kv.backend-nodes.node-2.forged")
    await orchestrator.violation("$kv.backend-nodes.node-1.forged")


@pytest.fixture(params=["auth", "auth+tls"])
def bus(request: pytest.FixtureRequest) -> SecuredNats:
    """The secured server, without and with TLS."""
    fixture = "secured_nats" if request.param == "auth" else "tls_nats"
    server: SecuredNats = request.getfixturevalue(fixture)
    return server


async def test_an_install_through_the_real_agent_and_worker_succeeds_with_progress(
    bus: SecuredNats, client: Client, tmp_path: Path
) -> None:
    gallery = Gallery(path=tmp_path / "gallery" / "index.yaml")
    gallery.add_backend(SampleBackend("cpu-echo"), tmp_path / "archives")
    gallery.write()
    low = 45000 + (uuid.uuid4().int % 500) * 20
    config = fast_config("node-1", tmp_path / "backends", gallery, bus.url, (low, low + 19))
    agent = Agent(dataclasses.replace(config, nats=bus.options(bus.node("node-1"))))
    worker_nc = await bus.options(bus.fleet.orchestrator).connect("worker")
    queue = f"secure-{uuid.uuid4().hex[:8]}"
    try:
        await agent.start()
        async with create_worker(client, worker_nc, queue):
            handle = await start_install(
                client, queue, install_input("node-1", backend="cpu-echo", model_id="m")
            )
            result = await handle.result()
    finally:
        await agent.stop()
        await worker_nc.close()

    assert result.address.startswith(f"{ADVERTISE_HOST}:")
    assert result.progress_events > 0, "progress crossed the bus under the node's permissions"


@pytest.fixture(scope="module")
def worker_without_progress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    """A server whose orchestrator user was left without ``subscribe ...progress``."""
    auth_dir = tmp_path_factory.mktemp("nats-auth-narrow")
    fleet = nats_auth.make_fleet(NODES)
    narrow = dataclasses.replace(
        fleet.orchestrator,
        permissions=dataclasses.replace(
            nats_auth.ORCHESTRATOR_PERMISSIONS, subscribe=("_INBOX.>",)
        ),
    )
    fleet = dataclasses.replace(fleet, orchestrator=narrow)
    config = auth_dir / nats_auth.CONFIG_FILE
    config.write_text(nats_auth.server_config(fleet, cost=LOW_COST))
    with nats_server(config=config) as url:
        yield SecuredNats(url, fleet, auth_dir)


async def test_the_install_activity_warns_when_its_progress_subscription_is_refused(
    worker_without_progress: SecuredNats, caplog: pytest.LogCaptureFixture
) -> None:
    bus = worker_without_progress
    node = await bus.options(bus.node("node-1")).connect("scripted-node-1")
    worker_nc = await bus.options(bus.fleet.orchestrator).connect("worker")

    async def installed(msg: Msg) -> None:
        await msg.respond(BackendInstallReply(success=True, address="10.0.0.7:1").to_wire())

    await node.subscribe(subjects.install("node-1"), cb=installed)
    await node.flush()
    activity_input = InstallActivityInput(
        node_id="node-1",
        request=BackendInstallRequest(backend="llama-cpp", op_id="op-narrow"),
        install_timeout_seconds=10,
        heartbeat_interval_seconds=5,
        progress_report_interval_seconds=0,
    )
    try:
        result = await ActivityEnvironment().run(
            InstallActivities(worker_nc).install_backend, activity_input
        )
    finally:
        await node.close()
        await worker_nc.close()

    assert result.address == "10.0.0.7:1", "a refused progress subscription is not fatal"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "NATS refused the subscription to nodes.node-1.backend.install.op-narrow.progress" in w
        for w in warnings
    ), warnings


# --- TLS -----------------------------------------------------------------------------------


async def test_tls_without_the_ca_is_refused_with_one_line(tls_nats: SecuredNats) -> None:
    options = dataclasses.replace(tls_nats.options(tls_nats.node("node-1")), tls_ca="")
    with pytest.raises(NatsStartupError) as refused:
        await options.connect("no-ca")

    assert "NATS_TLS_CA" in str(refused.value)


async def test_mutual_tls_admits_a_client_certificate_signed_by_the_ca(
    tmp_path: Path, certs: CertFiles
) -> None:
    tls = TlsFiles(certs.server_cert, certs.server_key, ca=certs.ca)
    fleet = nats_auth.write_auth_dir(tmp_path, NODES, tls=tls, cost=LOW_COST)
    with nats_server(config=tmp_path / nats_auth.CONFIG_FILE) as url:
        bus = SecuredNats(url, fleet, tmp_path, tls_ca=str(certs.ca))
        with_cert = bus.options(
            bus.node("node-1"), tls_cert=str(certs.client_cert), tls_key=str(certs.client_key)
        )
        nc = await with_cert.connect("mtls")
        await nc.close()
        # The server's "certificate required" alert can lose the race with its closing the
        # socket on every attempt; then the client only saw a dead connection.
        with pytest.raises(NatsStartupError, match=r"NATS_TLS_CERT|no server answered"):
            await bus.options(bus.node("node-1")).connect("no-client-cert")


async def test_a_client_asking_for_tls_refuses_a_server_without_it(
    secured_nats: SecuredNats, certs: CertFiles
) -> None:
    options = secured_nats.options(secured_nats.node("node-1"), tls_ca=str(certs.ca))
    with pytest.raises(NatsStartupError, match="does not offer TLS"):
        await options.connect("tls-expected")


# --- the processes: one line, exit code 2 --------------------------------------------------


def run_process(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    return subprocess.run(
        command,
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_refusal(out: subprocess.CompletedProcess[str], url: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: NATS at {url} refused: credentials (these credentials) — {CREDENTIALS_HINT}"
    ], out.stderr


@pytest.mark.parametrize("password", [None, "wrong"])
def test_the_worker_process_says_authorization_violation_in_one_line(
    secured_nats: SecuredNats, temporal_address: str, password: str | None
) -> None:
    env = {"TEMPORAL_ADDRESS": temporal_address, "NATS_URL": secured_nats.url}
    if password is not None:
        env |= {"NATS_USER": "orchestrator", "NATS_PASSWORD": password}

    out = run_process(worker_command("--task-queue", f"q-{uuid.uuid4().hex[:6]}"), env)

    assert_one_line_refusal(out, secured_nats.url)


@pytest.mark.parametrize("password", [None, "wrong"])
def test_the_node_agent_process_says_authorization_violation_in_one_line(
    secured_nats: SecuredNats, tmp_path: Path, password: str | None
) -> None:
    env = {"NATS_URL": secured_nats.url}
    if password is not None:
        env |= {"NATS_USER": "node-1", "NATS_PASSWORD": password}
    command = [sys.executable, "-m", "durable_installs.node_agent", "--node-id", "node-1"]
    command += ["--backends-dir", str(tmp_path / "backends")]

    out = run_process(command, env)

    assert_one_line_refusal(out, secured_nats.url)


def test_an_unreachable_nats_still_gives_one_line(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "durable_installs.node_agent", "--node-id", "node-1"]
    command += ["--backends-dir", str(tmp_path / "backends"), "--nats-url", url]

    out = run_process(command, {})

    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: cannot connect to NATS at {url}: no server answered after 3 attempts — "
        "is nats-server running there? set NATS_URL (or --nats-url)"
    ]


def test_the_generator_command_writes_a_config_the_server_accepts(tmp_path: Path) -> None:
    code = nats_auth.main(["--out", str(tmp_path / "auth"), "--node", "gpu-1", "--node", "gpu-2"])

    assert code == 0
    assert sorted(p.name for p in (tmp_path / "auth").iterdir()) == [
        "nats-server.conf",
        "node-gpu-1.env",
        "node-gpu-2.env",
        "orchestrator.env",
    ]
    check = subprocess.run(
        [find_binary("nats-server"), "-c", str(tmp_path / "auth" / "nats-server.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr


async def test_the_generator_refuses_a_node_named_like_the_orchestrator() -> None:
    with pytest.raises(ValueError, match="orchestrator"):
        nats_auth.make_fleet(["orchestrator"])
    with pytest.raises(ValueError, match="not a valid subject token"):
        nats_auth.make_fleet(["node.*"])


async def test_a_node_agent_uses_an_inbox_inside_its_own_subjects() -> None:
    assert nats_auth.node_inbox_prefix("node-1").startswith("nodes.node-1.agent.")
    await asyncio.sleep(0)


# --- the dev stack's context ------------------------------------------------------------------


def dev_stack_dir(tmp_path: Path, context: dict[str, str]) -> Path:
    """A directory laid out like a checkout where the dev stack runs: ``.state/nats/...``."""
    (tmp_path / ".state" / "nats").mkdir(parents=True)
    (tmp_path / ".state" / "nats" / "context.json").write_text(json.dumps(context))
    return tmp_path


def test_backendctl_finds_the_dev_stacks_credentials_with_no_settings(
    secured_nats: SecuredNats, temporal_address: str, tmp_path: Path
) -> None:
    """The stack writes a nats CLI context; commands run where it runs need no env $(...)."""
    worker = secured_nats.fleet.orchestrator
    here = dev_stack_dir(
        tmp_path, {"url": secured_nats.url, "user": worker.name, "password": worker.password}
    )

    out = run_ctl("nodes", "--json", address=temporal_address, cwd=here, env=without_nats())

    assert out.returncode in (0, 2), out.stderr
    assert "refused" not in out.stderr and "cannot connect" not in out.stderr


def test_a_refused_dev_stack_context_says_credentials_and_where_the_stack_keeps_them(
    secured_nats: SecuredNats, temporal_address: str, tmp_path: Path
) -> None:
    here = dev_stack_dir(tmp_path, {"url": secured_nats.url, "user": "orchestrator"})

    out = run_ctl("nodes", address=temporal_address, cwd=here, env=without_nats())

    assert out.returncode == 2
    assert one_error_line(out.stderr) == (
        f"error: NATS at {secured_nats.url} refused: credentials (the credentials from the dev "
        f"stack's .state/nats/context.json) — {CREDENTIALS_HINT}; the dev stack keeps its "
        "users in .state/nats (context .state/nats/context.json, one env file per user)"
    )


def without_nats() -> dict[str, str]:
    """The environment minus every NATS_* variable, as a fresh shell has it."""
    return {key: "" for key in os.environ if key.startswith("NATS_")}
