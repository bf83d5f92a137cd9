"""The whole embedded stack in one process tree: Temporal, NATS, node agents, the worker.

Everything a newcomer needs to watch an install happen, with state (Temporal's SQLite
history, the nodes' backends) kept under one directory so a restart keeps past workflows.
NATS runs with a user per node and one for the worker (:mod:`protocol.nats_auth`), their
credentials written to ``<state>/nats/`` on every start and handed over in the environment.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from durable_installs.contracts.install import InstallBackendInput, install_workflow_id
from durable_installs.contracts.names import DEFAULT_TASK_QUEUE
from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.contracts.summaries import install_details, install_summary
from durable_installs.devstack.demo_registry import DemoRegistry, start_demo_registry
from durable_installs.devstack.gallery import (
    THROTTLE_BYTES_PER_SECOND,
    ThrottledFileServer,
    prepare_gallery,
)
from durable_installs.devstack.processes import ProcessGroup, wait_for_line
from durable_installs.orchestrator.worker import DEV_CONFIG_FILE, connect_temporal
from durable_installs.protocol import nats_auth
from durable_installs.protocol.announce import open_registry
from durable_installs.protocol.connection import NatsOptions
from durable_installs.protocol.context import DEV_CONTEXT, DEV_STATE, NatsContext, write_context
from durable_installs.protocol.messages import encode_galleries
from durable_installs.servers import (
    check_port_free,
    find_binary,
    nats_server_command,
    registry_binary,
    temporal_dev_server_command,
    wait_for_port,
)
from workflows.install_backend import InstallBackendWorkflow

ROOT = Path(__file__).resolve().parents[2]
TEMPORAL_PROFILE_FILE = DEV_CONFIG_FILE.name
NATS_CONTEXT_FILE = DEV_CONTEXT.name
TEMPORAL_SERVER_DROPPED_ENV = ("OTEL_",)
"""Environment the Temporal dev server is not given: the project's telemetry settings."""


@dataclass(frozen=True)
class StackConfig:
    """Ports, sizes and where state lives; every port can be moved with a flag."""

    state_dir: Path = Path(".state")
    temporal_port: int = 7233
    ui_port: int = 8233
    nats_port: int = 4222
    artifact_port: int = 8099
    registry_port: int = 5099
    """The local OCI registry of the demo (only when docker-registry is installed)."""
    backend_port_base: int = 50100
    nodes: int = 2
    task_queue: str = DEFAULT_TASK_QUEUE
    sample: bool = True
    artifact_rate: int = THROTTLE_BYTES_PER_SECOND
    """Bytes per second for the slow demo backend's download."""
    nats_auth: bool = True
    """A user per node and one for the worker, with per-subject permissions; off: open bus."""

    @property
    def nats_dir(self) -> Path:
        """Where the NATS server configuration and the credential env files are written."""
        return self.state_dir / "nats"

    @property
    def temporal_address(self) -> str:
        return f"localhost:{self.temporal_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def ui_url(self) -> str:
        return f"http://localhost:{self.ui_port}"

    @property
    def gallery_index(self) -> Path:
        """The demo gallery's index file (written by :func:`devstack.gallery.prepare_gallery`)."""
        return self.state_dir / "gallery" / "index.yaml"

    def node_ids(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.nodes + 1)]

    def workflow_url(self, workflow_id: str) -> str:
        quoted = urllib.parse.quote(workflow_id, safe="")
        return f"{self.ui_url}/namespaces/default/workflows/{quoted}"


def check_ports(config: StackConfig) -> None:
    """Every port the stack binds must be free; the message names the flag that moves it."""
    check_port_free(config.temporal_port, "Temporal frontend", "--temporal-port")
    check_port_free(config.ui_port, "Temporal web UI", "--ui-port")
    check_port_free(config.nats_port, "NATS", "--nats-port")
    check_port_free(config.artifact_port, "demo gallery artifacts", "--artifact-port")
    if registry_binary() is not None:
        check_port_free(config.registry_port, "demo OCI registry", "--registry-port")


class Stack:
    """Starts the stack in order and stops it in reverse."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state = config.state_dir.resolve()
        self.group = ProcessGroup(self.state / "logs")
        self.artifacts = ThrottledFileServer(
            self.state / "artifacts", config.artifact_port, config.artifact_rate
        )
        self.oci = DemoRegistry(None, "")

    def start(self) -> None:
        config = self.config
        self.state.mkdir(parents=True, exist_ok=True)
        self.artifacts.start()
        self.oci = start_demo_registry(self.group, self.state, config.registry_port)
        extra = [self.oci.entry] if self.oci.entry is not None else []
        gallery = prepare_gallery(self.state / "gallery", self.artifacts, extra)

        temporal = temporal_dev_server_command(
            config.temporal_port,
            ui_port=config.ui_port,
            db_file=self.state / "temporal.db",
            search_attributes=[key.name for key in SEARCH_ATTRIBUTES],
        )
        self.group.start(
            "temporal",
            temporal,
            ready=lambda c: wait_for_port(config.temporal_port, 60, c.proc),
            # The dev server reads OTEL_* too and refuses exporters it lacks (``console``);
            # the project's telemetry settings are for the worker and the node agents.
            drop_env_prefixes=TEMPORAL_SERVER_DROPPED_ENV,
            server=True,
        )
        credentials: dict[str, dict[str, str]] = {}
        nats_config = None
        if config.nats_auth:
            nats_dir = self.state / "nats"
            nats_auth.write_auth_dir(nats_dir, config.node_ids())
            nats_config = nats_dir / nats_auth.CONFIG_FILE
            credentials = {
                name: nats_auth.read_env_file(nats_dir / file)
                for name, file in [
                    ("worker", nats_auth.ORCHESTRATOR_ENV_FILE),
                    *((node, nats_auth.node_env_file(node)) for node in config.node_ids()),
                ]
            }
        # JetStream holds the node registry bucket (node agents announce themselves there)
        nats = nats_server_command(
            config.nats_port, jetstream_dir=self.state / "jetstream", config=nats_config
        )
        self.group.start(
            "nats", nats, ready=lambda c: wait_for_port(config.nats_port, 20, c.proc), server=True
        )
        write_client_settings(config, credentials.get("worker", {}))
        # The worker's user creates the registry bucket; node users may only write their keys.
        asyncio.run(create_registry(config.nats_url, credentials.get("worker", {})))
        for position, node_id in enumerate(config.node_ids()):
            low = config.backend_port_base + 20 * position
            self.group.start(
                node_id,
                [
                    sys.executable,
                    "-m",
                    "durable_installs.node_agent",
                    "--node-id",
                    node_id,
                    "--backends-dir",
                    str(self.state / "nodes" / node_id / "backends"),
                    "--galleries",
                    encode_galleries([gallery]),
                    "--advertise-host",
                    "127.0.0.1",
                    "--bind-host",
                    "127.0.0.1",
                    "--port-range",
                    f"{low}-{low + 19}",
                    "--nats-url",
                    config.nats_url,
                ],
                env=credentials.get(node_id),  # env, not flags: ps shows flags to everyone
                ready=lambda c: wait_for_line(c.log, "ready", 30, c.proc),
            )
        self.group.start(
            "worker",
            [
                sys.executable,
                "-m",
                "worker_main",
                "--temporal-address",
                config.temporal_address,
                "--nats-url",
                config.nats_url,
                "--task-queue",
                config.task_queue,
            ],
            # One fixed version that takes all new work on every start, so installs left
            # running by a previous run resume on the new code (docs/operating/versioning.md,
            # "In the dev stack"); the environment overrides both.
            env={
                "PYTHONUNBUFFERED": "1",
                "TEMPORAL_WORKER_BUILD_ID": os.environ.get("TEMPORAL_WORKER_BUILD_ID", "dev"),
                "TEMPORAL_WORKER_SET_CURRENT": os.environ.get(
                    "TEMPORAL_WORKER_SET_CURRENT", "always"
                ),
                **credentials.get("worker", {}),
            },
            ready=lambda c: wait_for_line(c.log, "worker polling", 60, c.proc),
        )

    def stop(self) -> None:
        self.group.stop(say=lambda text: print(f"  {text}", flush=True))
        self.artifacts.stop()


async def create_registry(url: str, credentials: dict[str, str]) -> None:
    """Create the node registry bucket as the orchestrator, before any agent announces."""
    options = NatsOptions(
        url=url,
        user=credentials.get("NATS_USER", ""),
        password=credentials.get("NATS_PASSWORD", ""),
    )
    nc = await options.connect("devstack-registry")
    try:
        await open_registry(nc, create=True)
    finally:
        await nc.close()


async def start_sample_install(config: StackConfig) -> str:
    """Start (or re-run) the sample install of the slow backend on the first node."""
    client = await connect_temporal(config.temporal_address)
    input = InstallBackendInput(
        node_id="node-1",
        backend="cpu-large",
        model_id="demo",
    )
    workflow_id = install_workflow_id(input.node_id, input.backend, input.model_id, 0)
    await client.start_workflow(
        InstallBackendWorkflow.run,
        input,
        id=workflow_id,
        task_queue=config.task_queue,
        static_summary=install_summary(input.backend, input.node_id, input.model_id, 0),
        static_details=install_details(
            input.backend, input.node_id, input.model_id, 0, "make run (the sample install)"
        ),
    )
    return workflow_id


def next_steps(config: StackConfig, sample_id: str | None, oci_note: str = "") -> str:
    """What to print once the stack runs: links, and commands that work exactly as printed.

    backendctl and the worker find the stack by themselves (the Temporal profile and NATS
    context in the state directory, see :func:`write_client_settings`); only a stack whose
    state is not ``./.state`` needs them named, and then each command says so.
    """
    temporal = shlex.quote(_relative(find_binary("temporal")))
    bin_dir = Path(sys.executable).parent
    ctl = shlex.quote(_relative(str(bin_dir / "backendctl")))
    worker = shlex.quote(_relative(str(bin_dir / "backend-install-worker")))
    settings = _settings_prefix(config)
    address = f"--address {config.temporal_address}"
    second_id = install_workflow_id("node-2", "echo", "", 0)
    second_input = '{"node_id": "node-2", "backend": "echo"}'
    second_summary = install_summary("echo", "node-2", "", 0)
    lines = [
        "",
        f"Stack is up. State: {config.state_dir}  Logs: {config.state_dir / 'logs'}",
        f"  Temporal web UI   {config.ui_url}",
        f"  Temporal          {config.temporal_address}   task queue {config.task_queue}",
        f"  NATS              {config.nats_url}"
        + ("   users and permissions on" if config.nats_auth else "   open: no auth"),
        f"  nodes             {', '.join(config.node_ids())}   backends: cpu-echo (alias echo), "
        "cpu-large (slow download), cpu-slow-load (slow LoadModel)",
        f"  client settings   {config.state_dir / TEMPORAL_PROFILE_FILE} (Temporal env config), "
        f"{config.nats_dir / NATS_CONTEXT_FILE} (NATS context)",
    ]
    if oci_note:
        lines.append(f"  {oci_note}")
    if sample_id:
        lines += [
            "",
            f"Sample install started: {sample_id}",
            f"  {config.workflow_url(sample_id)}",
            f"  watch it:  {settings}{ctl} watch {shlex.quote(sample_id)}",
        ]
    if config.nats_auth:
        lines += _nats_auth_lines(config)
    lines += [
        "",
        "Try next (from this directory, exactly as printed):",
        f"  {temporal} workflow start {address} --type InstallBackendWorkflow "
        f"--task-queue {config.task_queue} --workflow-id {shlex.quote(second_id)} "
        f"--input {shlex.quote(second_input)} --static-summary {shlex.quote(second_summary)}",
        f"  {temporal} workflow query {address} --workflow-id {shlex.quote(second_id)} "
        "--name progress",
        f"  {temporal} workflow describe {address} --workflow-id {shlex.quote(second_id)}",
        "",
        "The fleet from backendctl (list, nodes, backends, install, rollout, cancel; --help):",
        f"  {settings}{ctl} list",
        f"  {settings}{ctl} nodes",
        f"  {settings}{ctl} backends",
        "",
        "One more worker of the same version (it finds the stack the same way):",
        f"  {settings}{worker} --task-queue {config.task_queue} --build-id dev",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _settings_prefix(config: StackConfig) -> str:
    """Nothing for a stack in ``./.state`` (commands find it); else the variables naming it."""
    if config.state_dir.resolve() == (Path.cwd() / DEV_STATE).resolve():
        return ""
    profile = shlex.quote(str((config.state_dir / TEMPORAL_PROFILE_FILE).resolve()))
    context = shlex.quote(str((config.nats_dir / NATS_CONTEXT_FILE).resolve()))
    return f"TEMPORAL_CONFIG_FILE={profile} NATS_CONTEXT={context} "


def _nats_auth_lines(config: StackConfig) -> list[str]:
    """Where the secured NATS keeps whose credentials."""
    nats_dir = config.nats_dir
    return [
        "",
        f"NATS auth is on (--no-nats-auth turns it off); new passwords every start, in {nats_dir}:",
        f"  server config     {nats_dir / nats_auth.CONFIG_FILE}   (bcrypt hashes, permissions)",
        f"  worker            {nats_dir / NATS_CONTEXT_FILE} (a nats CLI context; also "
        f"{nats_auth.ORCHESTRATOR_ENV_FILE})   nodes: {nats_dir}/node-<id>.env",
    ]


def write_client_settings(config: StackConfig, worker: dict[str, str]) -> None:
    """Write where the stack is in the ecosystems' own formats, for every client to find:
    a Temporal env-config profile (what the ``temporal`` CLI and the SDKs read) and a
    ``nats`` CLI context with the worker's credentials (``worker``: NATS_USER/PASSWORD)."""
    (config.state_dir / TEMPORAL_PROFILE_FILE).write_text(
        "# Written by backend-devstack: where its Temporal dev server listens.\n"
        "[profile.default]\n"
        f'address = "{config.temporal_address}"\n'
        'namespace = "default"\n'
    )
    write_context(
        config.nats_dir / NATS_CONTEXT_FILE,
        NatsContext(
            url=config.nats_url,
            user=worker.get("NATS_USER", ""),
            password=worker.get("NATS_PASSWORD", ""),
            description="backend-devstack: the worker (orchestrator) user",
        ),
    )


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def check_prerequisites(config: StackConfig) -> None:
    """Everything the stack runs must be installed before anything starts: the binaries of
    the devstack extra, and bcrypt for the NATS users. Raises naming the extra."""
    find_binary("temporal")
    find_binary("nats-server")
    if config.nats_auth:
        nats_auth.bcrypt_hash("check", cost=4)


def run(config: StackConfig) -> int:
    """Run the stack in the foreground until Ctrl-C (or a component dies)."""
    check_prerequisites(config)
    check_ports(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(config)
    print(f"starting the stack in {config.state_dir} ...", flush=True)
    try:
        stack.start()
        sample_id = asyncio.run(start_sample_install(config)) if config.sample else None
        print(next_steps(config, sample_id, stack.oci.note), flush=True)
        while not stop.wait(0.5):
            died = stack.group.exited()
            if died is not None:
                print(
                    f"error: {died.name} exited with code {died.proc.returncode}; see {died.log}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        print("stopping ...", flush=True)
        return 0
    finally:
        stack.stop()
        print("stopped.", flush=True)
