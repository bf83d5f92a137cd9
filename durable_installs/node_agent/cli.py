"""``backend-node-agent``: run a node agent until SIGTERM/SIGINT (or an allowed remote stop).

Secrets can come from the environment instead of the command line (where ``ps`` shows them):
``NATS_URL``, ``NATS_TOKEN``, ``NATS_USER``, ``NATS_PASSWORD``, ``NATS_CREDS``. The trust
options have environment forms too (``NODE_AGENT_ALLOW_REQUEST_GALLERIES``,
``NODE_AGENT_ALLOW_REQUEST_URIS``: comma-separated; ``NODE_AGENT_ALLOW_REMOTE_STOP``: 1/true),
and so has the file-transfer token (``NODE_AGENT_FILES_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from durable_installs.invoked import exit_now, invoked_as
from durable_installs.node_agent.agent import Agent
from durable_installs.node_agent.config import AgentConfig, detect_capability
from durable_installs.node_agent.duplicates import DuplicateAgent
from durable_installs.node_agent.files import FilesConfig, FilesStartupError
from durable_installs.node_agent.trust import Trust
from durable_installs.protocol.connection import NatsOptions, NatsStartupError
from durable_installs.protocol.messages import decode_galleries
from durable_installs.protocol.subjects import token_problem
from durable_installs.telemetry import LOG_FORMATS, configure_logging, telemetry_from_env

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """``1073741824``, ``512M``, ``10GiB``, ``2T`` → bytes (1024-based)."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 512M, 10GiB)")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024**power)


def parse_port_range(text: str) -> tuple[int, int]:
    """``50051-50151`` → (50051, 50151)."""
    match = re.fullmatch(r"(\d+)-(\d+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}")
    low, high = int(match.group(1)), int(match.group(2))
    if not 0 < low <= high <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port range {text!r}")
    return low, high


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except where there is none or the help already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.required or "default:" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    """The command line of the node agent."""
    parser = argparse.ArgumentParser(
        prog=invoked_as("durable_installs.node_agent"),
        description=(
            "Node agent: installs inference backends from galleries, runs one backend "
            "process per (model, replica) slot and answers the nodes.<node-id>.* NATS "
            "subjects of the backend install protocol."
        ),
        formatter_class=_HelpFormatter,
    )
    env = os.environ.get
    node = parser.add_argument_group(
        "node",
        "--node-id, --backends-dir, --galleries, --advertise-host and --port-range fall back "
        "to NODE_AGENT_NODE_ID, NODE_AGENT_BACKENDS_DIR, NODE_AGENT_GALLERIES, "
        "NODE_AGENT_ADVERTISE_HOST and NODE_AGENT_PORT_RANGE (what a systemd environment "
        "file sets).",
    )
    node.add_argument(
        "--node-id",
        default=env("NODE_AGENT_NODE_ID"),
        required=not env("NODE_AGENT_NODE_ID"),
        help="this node's id (one NATS subject token)",
    )
    node.add_argument(
        "--backends-dir",
        type=Path,
        default=env("NODE_AGENT_BACKENDS_DIR"),
        required=not env("NODE_AGENT_BACKENDS_DIR"),
        help="directory backends are installed into",
    )
    node.add_argument(
        "--galleries",
        default=env("NODE_AGENT_GALLERIES", "[]"),
        help="the node's gallery list, the same JSON as backend_galleries: "
        '[{"name":"local","url":"file:///srv/index.yaml"}]; used when a request has none',
    )
    node.add_argument(
        "--advertise-host",
        default=env("NODE_AGENT_ADVERTISE_HOST", os.uname().nodename),
        help="host part of the address replies give the orchestrator (must be routable)",
    )
    node.add_argument("--bind-host", default="0.0.0.0", help="address backend processes listen on")
    node.add_argument(
        "--port-range",
        type=parse_port_range,
        default=env("NODE_AGENT_PORT_RANGE", "50051-50151"),
        help="gRPC ports for backend processes, LOW-HIGH inclusive",
    )
    node.add_argument(
        "--capability",
        default=detect_capability(),
        help="capability used to resolve meta backends (falls back to default, then cpu)",
    )
    node.add_argument(
        "--grpc-auth-token",
        help="bearer token passed to backends and used for Health/Free "
        "(default: env LOCALAI_GRPC_AUTH_TOKEN)",
    )
    node.add_argument(
        "--max-download-size", type=parse_size, default="64GiB", help="limit per download"
    )
    node.add_argument(
        "--max-unpacked-size", type=parse_size, default="128GiB", help="limit per unpacked backend"
    )
    node.add_argument(
        "--readiness-timeout",
        type=float,
        default=30.0,
        help="seconds a backend may take to answer Health after start",
    )
    node.add_argument(
        "--duplicate-check-interval",
        type=float,
        default=15.0,
        help="seconds between checks that no other agent serves this node id (0: only at start)",
    )
    node.add_argument(
        "--keep-backends",
        action="store_true",
        default=os.environ.get("NODE_AGENT_KEEP_BACKENDS", "").lower() in _TRUE,
        help="when the agent stops (SIGTERM, SIGINT or an allowed remote stop) leave backend "
        "processes running, for the next agent on this backends dir to adopt: restarting or "
        "upgrading the agent keeps every slot serving "
        "(env NODE_AGENT_KEEP_BACKENDS=1; default: stop them, as a LocalAI worker does)",
    )
    parser.add_argument(
        "--announce-interval",
        type=float,
        default=10.0,
        help="seconds between puts of this agent's entry in the backend-nodes JetStream "
        "key-value bucket, the node registry (0: do not announce)",
    )
    _add_trust_arguments(parser)
    _add_files_arguments(parser)
    NatsOptions.add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    observability = parser.add_argument_group(
        "observability",
        "Tracing follows the OTEL_* environment (OTEL_TRACES_EXPORTER=otlp|console, "
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...); everything is off by default.",
    )
    observability.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("LOG_FORMAT", "logfmt"),
        help="one event per line; install lines carry workflow_id, op_id, node and slot "
        "(env LOG_FORMAT)",
    )
    observability.add_argument(
        "--metrics-address",
        default=os.environ.get("NODE_AGENT_METRICS_ADDRESS", ""),
        help="HOST:PORT where the agent's Prometheus metrics are served at /metrics "
        "(env NODE_AGENT_METRICS_ADDRESS; default: off)",
    )
    return parser


_TRUE = ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    trust = parser.add_argument_group(
        "trust",
        "What a request over NATS may make this node do. Everything is closed by default: the "
        "agent installs only from its own --galleries, refuses a request's uri and ignores "
        "nodes.<node-id>.stop. Prefixes are URL prefixes compared on scheme, host, port and "
        "path at a '/' boundary (https://good.example admits https://good.example/x, never "
        "https://good.example.evil.com). Local paths and file:// URLs from a request are never "
        "accepted, whatever the allow-lists say.",
    )
    trust.add_argument(
        "--allow-request-galleries",
        action="append",
        metavar="PREFIX",
        default=None,
        help="accept a request's backend_galleries when every gallery URL and mirror lies under "
        "one of these http(s):// (or github:) prefixes; repeatable. A gallery equal to one of "
        "--galleries is always accepted, so a stock LocalAI controller sending the same galleries "
        "works without it (env NODE_AGENT_ALLOW_REQUEST_GALLERIES, comma-separated; "
        "default: none)",
    )
    trust.add_argument(
        "--allow-request-uri",
        action="append",
        metavar="PREFIX",
        default=None,
        help="accept a request's uri (external install) under one of these http(s):// URL or "
        "OCI reference (quay.io/org/) prefixes; repeatable (env NODE_AGENT_ALLOW_REQUEST_URIS, "
        "comma-separated; default: none)",
    )
    trust.add_argument(
        "--allow-remote-stop",
        action="store_true",
        default=os.environ.get("NODE_AGENT_ALLOW_REMOTE_STOP", "").lower() in _TRUE,
        help="shut down on nodes.<node-id>.stop as a LocalAI worker does; without it the "
        "message is logged and ignored (env NODE_AGENT_ALLOW_REMOTE_STOP=1; default: off)",
    )


def _add_files_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    files = parser.add_argument_group(
        "file transfer",
        "LocalAI's worker file-transfer HTTP API (/v1/files/<key>): a controller stages model "
        "files here before a backend loads them. Off unless a token is set: without one nothing "
        "listens. Keys models/<...> go to --models-dir, data/<...> and anything else to data/ "
        "and staging/ beside it.",
    )
    files.add_argument(
        "--files-token",
        default=None,
        help="bearer token every request must carry (a LocalAI controller sends its "
        "registration token); prefer the environment, where ps does not show it "
        "(env NODE_AGENT_FILES_TOKEN; default: none, the server is off)",
    )
    files.add_argument(
        "--files-address",
        default=env("NODE_AGENT_FILES_ADDRESS", ""),
        help="HOST:PORT to listen on (env NODE_AGENT_FILES_ADDRESS; default: --bind-host and "
        "the port below the first --port-range port, LocalAI's base-1)",
    )
    files.add_argument(
        "--models-dir",
        type=Path,
        default=env("NODE_AGENT_MODELS_DIR"),
        help="where model files are staged (env NODE_AGENT_MODELS_DIR; default: models/ beside "
        "--backends-dir)",
    )
    files.add_argument(
        "--max-file-size",
        type=parse_size,
        default=env("NODE_AGENT_MAX_FILE_SIZE", "50GiB"),
        help="largest file accepted (env NODE_AGENT_MAX_FILE_SIZE)",
    )
    files.add_argument(
        "--files-reserve",
        type=parse_size,
        default=env("NODE_AGENT_FILES_RESERVE", "1GiB"),
        help="free space an upload must leave on its filesystem; also reported on "
        "nodes.<node-id>.files.space (env NODE_AGENT_FILES_RESERVE)",
    )
    files.add_argument(
        "--files-max-uploads",
        type=int,
        default=4,
        help="uploads received at once; more are answered 503 with Retry-After",
    )
    files.add_argument(
        "--files-idle-timeout",
        type=float,
        default=60.0,
        help="seconds without body bytes before an upload is cut (kept for a resume)",
    )


def files_config_from_args(args: argparse.Namespace) -> FilesConfig:
    """The file-transfer part of the options; raises ValueError naming the flag."""
    token = args.files_token or os.environ.get("NODE_AGENT_FILES_TOKEN", "")
    if args.files_address and not token:
        raise ValueError(
            "--files-address needs --files-token (or NODE_AGENT_FILES_TOKEN): the file-transfer "
            "server never runs without a token"
        )
    config = FilesConfig(
        token=token,
        address=args.files_address,
        models_dir=args.models_dir.resolve() if args.models_dir else None,
        max_file_bytes=args.max_file_size,
        reserve_bytes=args.files_reserve,
        max_uploads=args.files_max_uploads,
        idle_timeout=args.files_idle_timeout,
    )
    problems = config.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return config


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Validate the parsed options into an :class:`AgentConfig`; raises ValueError."""
    env = os.environ
    problem = token_problem(args.node_id)
    if problem is not None:
        raise ValueError(f"--node-id {args.node_id!r}: {problem}")
    if not 0 <= args.announce_interval <= 25:
        raise ValueError(
            f"--announce-interval {args.announce_interval!r}: must be 0 (off) or up to 25 "
            "seconds, below the registry's 30 s TTL"
        )
    if not args.duplicate_check_interval >= 0:
        raise ValueError(
            f"--duplicate-check-interval {args.duplicate_check_interval!r}: must be 0 or more"
        )
    try:
        galleries = decode_galleries(args.galleries.strip())
    except (ValidationError, ValueError) as err:
        raise ValueError(f"--galleries is not a JSON list of galleries: {err}") from err
    allow_galleries = tuple(
        args.allow_request_galleries or _env_list("NODE_AGENT_ALLOW_REQUEST_GALLERIES")
    )
    allow_uris = tuple(args.allow_request_uri or _env_list("NODE_AGENT_ALLOW_REQUEST_URIS"))
    Trust.build(tuple(galleries), allow_galleries, allow_uris)  # ValueError names the flag
    return AgentConfig(
        node_id=args.node_id,
        backends_dir=args.backends_dir.resolve(),
        galleries=tuple(galleries),
        advertise_host=args.advertise_host,
        bind_host=args.bind_host,
        port_range=args.port_range,
        capability=args.capability,
        grpc_auth_token=args.grpc_auth_token or env.get("LOCALAI_GRPC_AUTH_TOKEN", ""),
        max_download_bytes=args.max_download_size,
        max_unpacked_bytes=args.max_unpacked_size,
        readiness_timeout=args.readiness_timeout,
        duplicate_check_interval=args.duplicate_check_interval,
        announce_interval=args.announce_interval,
        nats=NatsOptions.from_args(args, discover=False),
        allow_request_galleries=allow_galleries,
        allow_request_uris=allow_uris,
        allow_remote_stop=args.allow_remote_stop,
        keep_backends=args.keep_backends,
        files=files_config_from_args(args),
    )


async def run(config: AgentConfig) -> None:
    """Run until a signal or an allowed ``nodes.<node>.stop``; backend processes stop on exit."""
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(agent.stop()))
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    await agent.start()
    print(f"node agent {config.node_id} ready", flush=True)
    await agent.wait_stopped()
    if agent.conflict:
        raise DuplicateAgent(agent.conflict)
    if agent.left_running:
        # asyncio kills a still-running child when its transport is closed or collected,
        # which Python's shutdown would do; leave now, with everything still referenced.
        logging.shutdown()
        exit_now(0)


def dump_tasks() -> None:
    """SIGUSR1: print every asyncio task's stack to stderr, to see what a stuck agent awaits."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
        telemetry = telemetry_from_env("node-agent", metrics_address=args.metrics_address)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(replace(config, telemetry=telemetry)))
    except (DuplicateAgent, NatsStartupError, FilesStartupError) as err:  # one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        telemetry.shutdown()
    return 0


def console() -> None:
    """The ``backend-node-agent`` command."""
    sys.exit(main())
