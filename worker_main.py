"""The Temporal worker: runs every workflow type and activity of :mod:`orchestrator.registry`.

That is six workflow types (install, rollout, upgrade, delete, drift check, model load) and
the eighteen activities they schedule, which talk to nodes over NATS and, to stage model
files, over the nodes' file-transfer HTTP API.

Temporal settings follow Temporal's environment configuration (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS_*``, ``TEMPORAL_PROFILE`` and the
TOML config file), NATS settings ``NATS_URL`` and friends. One NATS connection is shared by
all activities and reconnects on its own. SIGINT/SIGTERM stop polling, let running activities
finish within the grace period, then drain NATS.

The command line around :mod:`orchestrator.worker` (importable without argparse). The worker
runs as one version of a Temporal Worker Deployment (:mod:`orchestrator.versioning`):
installs and rollouts are PINNED to the version that started them, so a new worker version
takes new installs while running ones finish on the old code. ``--no-versioning`` turns this
off for servers without worker deployments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta

from activities.budget import ForwardBudget
from activities.staging import default_cache_dir
from durable_installs.contracts.names import DEFAULT_TASK_QUEUE
from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.invoked import exit_now, invoked_as
from durable_installs.orchestrator.capacity import CapacityMonitor, monitoring
from durable_installs.orchestrator.sizing import WorkerSizing
from durable_installs.orchestrator.staging_options import staging_config
from durable_installs.orchestrator.versioning import (
    DEFAULT_DEPLOYMENT_NAME,
    SetCurrent,
    Versioning,
    VersioningError,
    default_build_id,
    make_current,
    warn_if_routed_to_a_version,
)
from durable_installs.orchestrator.worker import (
    DEFAULT_TEMPORAL_ADDRESS,
    connect_temporal,
    create_worker,
    ensure_search_attributes,
)
from durable_installs.protocol.connection import NatsOptions, NatsStartupError
from durable_installs.telemetry import LOG_FORMATS, configure_logging, telemetry_from_env
from durable_installs.telemetry.temporal import temporal_runtime

log = logging.getLogger("worker_main")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line; defaults come from the environment (also the docs' source)."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog=invoked_as("worker_main"),
        description=(
            "Temporal worker for durable backend installs: runs the install, rollout, upgrade, "
            "delete, drift-check and model-load workflows and the activities that talk to "
            "nodes (all listed in durable_installs/orchestrator/registry.py)."
        ),
    )
    temporal = parser.add_argument_group(
        "Temporal",
        "Unset options fall back to Temporal's environment configuration "
        "(TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, "
        "TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE).",
    )
    temporal.add_argument(
        "--temporal-address",
        default=None,
        help=f"frontend host:port (env TEMPORAL_ADDRESS; default {DEFAULT_TEMPORAL_ADDRESS})",
    )
    temporal.add_argument(
        "--namespace", default=None, help="namespace (env TEMPORAL_NAMESPACE; default default)"
    )
    temporal.add_argument("--profile", default=None, help="env-config profile (TEMPORAL_PROFILE)")
    temporal.add_argument(
        "--config-file", default=None, help="env-config TOML file (TEMPORAL_CONFIG_FILE)"
    )
    temporal.add_argument(
        "--task-queue",
        default=env("TEMPORAL_TASK_QUEUE", DEFAULT_TASK_QUEUE),
        help="task queue to poll (env TEMPORAL_TASK_QUEUE; default %(default)s)",
    )
    temporal.add_argument(
        "--graceful-shutdown-seconds",
        type=float,
        default=float(env("WORKER_GRACEFUL_SHUTDOWN_SECONDS", "10")),
        help="on SIGINT/SIGTERM, how long running activities may finish before they are "
        "cancelled (env WORKER_GRACEFUL_SHUTDOWN_SECONDS; default %(default)s)",
    )
    sizing = WorkerSizing()
    temporal.add_argument(
        "--max-concurrent-activities",
        type=int,
        default=int(env("WORKER_MAX_CONCURRENT_ACTIVITIES", str(sizing.activities))),
        help="activities (installs, probes and the rest) this worker runs at once, and as many "
        "fast-path requests; an install mostly waits on the node, so this is far above the "
        "SDK's 100 (env WORKER_MAX_CONCURRENT_ACTIVITIES; default %(default)s)",
    )
    temporal.add_argument(
        "--max-concurrent-workflow-tasks",
        type=int,
        default=int(env("WORKER_MAX_CONCURRENT_WORKFLOW_TASKS", str(sizing.workflow_tasks))),
        help="workflow tasks at once, each install's first one with its fast-path request "
        "(env WORKER_MAX_CONCURRENT_WORKFLOW_TASKS; default %(default)s)",
    )
    temporal.add_argument(
        "--max-cached-workflows",
        type=int,
        default=int(env("WORKER_MAX_CACHED_WORKFLOWS", str(sizing.cached_workflows))),
        help="workflow runs kept in memory between their tasks; at least the installs this "
        "worker carries, or each of their tasks replays a history "
        "(env WORKER_MAX_CACHED_WORKFLOWS; default %(default)s)",
    )
    temporal.add_argument(
        "--no-register-search-attributes",
        action="store_true",
        help="do not register the search attributes "
        + ", ".join(key.name for key in SEARCH_ATTRIBUTES)
        + " (Keyword; create them by hand on Temporal Cloud)",
    )
    add_versioning_arguments(parser)
    add_staging_arguments(parser)
    NatsOptions.add_arguments(parser)
    parser.add_argument(
        "--log-level",
        default=env("LOG_LEVEL", "INFO"),
        help="log level (env LOG_LEVEL; default %(default)s)",
    )
    observability = parser.add_argument_group(
        "observability",
        "Tracing follows the OTEL_* environment (OTEL_TRACES_EXPORTER=otlp|console, "
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...); "
        "everything is off by default.",
    )
    observability.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=env("LOG_FORMAT", "logfmt"),
        help="one event per line; install lines carry workflow_id, op_id, node and slot "
        "(env LOG_FORMAT; default %(default)s)",
    )
    observability.add_argument(
        "--metrics-address",
        default=env("METRICS_ADDRESS", ""),
        help="HOST:PORT where the Temporal SDK's Prometheus metrics are served at /metrics "
        "(env METRICS_ADDRESS; default off)",
    )
    observability.add_argument(
        "--install-metrics-address",
        default=env("INSTALL_METRICS_ADDRESS", ""),
        help="HOST:PORT where this worker's install metrics are served at /metrics "
        "(env INSTALL_METRICS_ADDRESS; default off)",
    )
    return parser


OFF = ("0", "off", "false", "no")
ON = ("1", "on", "true", "yes")
"""Values of ``TEMPORAL_WORKER_VERSIONING``; anything else stops the worker at start-up."""


def add_staging_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    group = parser.add_argument_group(
        "model staging (LoadModelWorkflow)",
        "Where model files may come from, and how the worker reaches the nodes' file-transfer API.",
    )
    group.add_argument(
        "--allow-model-source",
        action="append",
        default=None,
        metavar="PREFIX",
        help="a URL or file:// prefix model files may be read from; repeat for more "
        "(env MODEL_SOURCES, space-separated; default: none, every source refused)",
    )
    group.add_argument(
        "--node-files-token-file",
        default=env("NODE_FILES_TOKEN_FILE"),
        metavar="PATH",
        help="file holding the bearer token of the nodes' file-transfer API "
        "(env NODE_FILES_TOKEN_FILE, or the token itself in NODE_FILES_TOKEN)",
    )
    group.add_argument(
        "--model-cache-dir",
        default=env("MODEL_CACHE_DIR", str(default_cache_dir())),
        help="where model files fetched over http(s) are kept, by sha256 "
        "(env MODEL_CACHE_DIR; default %(default)s)",
    )
    group.add_argument(
        "--model-cache-bytes",
        default=env("MODEL_CACHE_BYTES", "50G"),
        help="bound on that cache (env MODEL_CACHE_BYTES; default %(default)s)",
    )
    group.add_argument(
        "--staging-rate-limit",
        default=env("STAGING_RATE_LIMIT", "0"),
        help="bytes per second per file transfer, 0 for none (like 100M; "
        "env STAGING_RATE_LIMIT; default %(default)s)",
    )


def add_versioning_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    group = parser.add_argument_group(
        "worker versioning",
        "The worker polls as one version (deployment name + build id) of a Temporal Worker "
        "Deployment. New installs and rollouts go to the deployment's current version and stay "
        "PINNED to it until they finish. See docs/operating/versioning.md.",
    )
    group.add_argument(
        "--no-versioning",
        action="store_true",
        default=env("TEMPORAL_WORKER_VERSIONING", "on").strip().lower() in OFF,
        help="poll unversioned, for servers without worker deployments "
        "(env TEMPORAL_WORKER_VERSIONING=off)",
    )
    group.add_argument(
        "--deployment-name",
        default=env("TEMPORAL_DEPLOYMENT_NAME", DEFAULT_DEPLOYMENT_NAME),
        help="Worker Deployment name, no '.' (env TEMPORAL_DEPLOYMENT_NAME; default %(default)s)",
    )
    group.add_argument(
        "--build-id",
        default=env("TEMPORAL_WORKER_BUILD_ID", ""),
        help="this worker's build id (env TEMPORAL_WORKER_BUILD_ID; default "
        "<package version>+<git commit>, with a hash of local changes if any)",
    )
    group.add_argument(
        "--set-current",
        default=env("TEMPORAL_WORKER_SET_CURRENT", SetCurrent.IF_UNSET.value),
        metavar="{" + ",".join(SetCurrent) + "}",
        help="make this version the deployment's current one on start: if-unset (only when "
        "there is none), always, or never (the operator runs "
        "'temporal worker deployment set-current-version') "
        "(env TEMPORAL_WORKER_SET_CURRENT; default %(default)s)",
    )


def versioning_from_args(args: argparse.Namespace) -> Versioning | None:
    """The worker's version from flags and environment; None when versioning is off.

    Raises ValueError naming the flag (and its environment variable) that is wrong.
    """
    switch = os.environ.get("TEMPORAL_WORKER_VERSIONING", "on").strip().lower()
    if switch not in OFF + ON:
        raise ValueError(f"TEMPORAL_WORKER_VERSIONING must be on or off, not {switch[:40]!r}")
    if args.no_versioning:
        return None
    try:
        set_current = SetCurrent(args.set_current)
    except ValueError:
        raise ValueError(
            f"--set-current (TEMPORAL_WORKER_SET_CURRENT) must be one of "
            f"{', '.join(SetCurrent)}, not {args.set_current[:40]!r}"
        ) from None
    return Versioning(
        deployment_name=args.deployment_name,
        build_id=args.build_id or default_build_id(),
        set_current=set_current,
    )


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    try:
        telemetry = telemetry_from_env(
            "backend-install-worker", metrics_address=args.install_metrics_address
        )
        runtime = temporal_runtime(args.metrics_address)  # the core logs through Python too
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: telemetry: {err}", file=sys.stderr)
        return 2
    try:
        versioning = versioning_from_args(args)
    except ValueError as err:
        print(f"error: worker versioning: {err}", file=sys.stderr)
        return 2
    try:
        staging = staging_config(
            args.allow_model_source,
            args.node_files_token_file,
            args.model_cache_dir,
            args.model_cache_bytes,
            args.staging_rate_limit,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        client = await connect_temporal(
            args.temporal_address,
            args.namespace,
            args.profile,
            args.config_file,
            telemetry=telemetry,
            runtime=runtime,
        )
    except Exception as err:
        print(f"error: cannot connect to Temporal: {err}", file=sys.stderr)
        return 2
    try:
        nats_options = NatsOptions.from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        nc = await nats_options.connect(f"backend-install-worker-{os.getpid()}")
    except NatsStartupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if not args.no_register_search_attributes:
        await ensure_search_attributes(client)
    sizing = WorkerSizing(
        activities=args.max_concurrent_activities,
        workflow_tasks=args.max_concurrent_workflow_tasks,
        cached_workflows=args.max_cached_workflows,
    )
    budget = ForwardBudget()
    capacity = CapacityMonitor(budget, sizing.activities)
    capacity.instrument(telemetry.meter())
    worker = create_worker(
        client,
        nc,
        args.task_queue,
        telemetry,
        versioning=versioning,
        budget=budget,
        sizing=sizing,
        capacity=capacity,
        staging=staging,
        graceful_shutdown_timeout=timedelta(seconds=args.graceful_shutdown_seconds),
    )
    async with worker, monitoring(capacity):
        if versioning is None:
            await warn_if_routed_to_a_version(client, args.deployment_name)
        else:
            try:
                await make_current(client, versioning, client.identity)
            except VersioningError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        log.info(
            "worker polling task queue %s in namespace %s as %s; NATS %s",
            args.task_queue,
            client.namespace,
            f"version {versioning}" if versioning else "unversioned",
            nats_options.url,
        )
        await stop.wait()
        log.info("shutting down: finishing running activities")
    await nc.drain()
    telemetry.shutdown()
    log.info("worker stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    return asyncio.run(run(args))


def console() -> None:
    """The ``backend-install-worker`` command: :func:`main`, then leave at once
    (:func:`durable_installs.invoked.exit_now`)."""
    exit_now(main())


if __name__ == "__main__":
    console()
