"""The Temporal worker: runs ``InstallBackendWorkflow`` and the install and probe activities.

Temporal settings follow Temporal's environment configuration (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS_*``, ``TEMPORAL_PROFILE`` and the
TOML config file), NATS settings ``NATS_URL`` and friends. One NATS connection is shared by
all activities and reconnects on its own. SIGINT/SIGTERM stop polling, let running activities
finish within the grace period, then drain NATS.
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

from nats.aio.client import Client as NATS
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from activities.attach import await_install
from activities.install import InstallActivities
from activities.install_slots import install_slots
from activities.probe import ProbeActivities
from contracts.names import DEFAULT_TASK_QUEUE
from contracts.search_attributes import SEARCH_ATTRIBUTES
from protocol.connection import NatsOptions
from telemetry import LOG_FORMATS, Telemetry, configure_logging, telemetry_from_env
from telemetry.temporal import client_traces, temporal_interceptors, temporal_runtime
from workflows.install_backend import InstallBackendWorkflow
from workflows.rollout import RolloutBackendWorkflow

DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"

log = logging.getLogger("worker_main")


def create_worker(
    client: Client,
    nc: NATS,
    task_queue: str = DEFAULT_TASK_QUEUE,
    telemetry: Telemetry | None = None,
    **worker_options: object,
) -> Worker:
    """A worker with every workflow and activity of this project registered.

    With ``telemetry`` tracing, workflows and activities are traced: by the client's tracing
    interceptor when it has one (workers inherit it), else by one added here.
    """
    telemetry = telemetry or Telemetry()
    install = InstallActivities(nc, telemetry)
    probe = ProbeActivities(nc, telemetry)
    if telemetry.tracing and not client_traces(client) and "interceptors" not in worker_options:
        worker_options["interceptors"] = temporal_interceptors(telemetry)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[InstallBackendWorkflow, RolloutBackendWorkflow],
        activities=[install.install_backend, probe.probe_slot, await_install, install_slots],
        **worker_options,  # type: ignore[arg-type]
    )


async def connect_temporal(
    address: str | None = None,
    namespace: str | None = None,
    profile: str | None = None,
    config_file: str | None = None,
    telemetry: Telemetry | None = None,
    runtime: Runtime | None = None,
) -> Client:
    """Connect with Temporal's env config; explicit arguments override it.

    ``telemetry`` adds the tracing interceptor when it traces; ``runtime`` is the one that
    serves Temporal's metrics (see :func:`telemetry.temporal.temporal_runtime`).
    """
    config = ClientConfig.load_client_connect_config(profile=profile, config_file=config_file)
    if address:
        config["target_host"] = address
    config.setdefault("target_host", DEFAULT_TEMPORAL_ADDRESS)
    if namespace:
        config["namespace"] = namespace
    return await Client.connect(
        **config,
        data_converter=pydantic_data_converter,
        interceptors=temporal_interceptors(telemetry or Telemetry()),
        runtime=runtime,
    )


async def ensure_search_attributes(client: Client) -> None:
    """Register the workflow's keyword search attributes where they are missing.

    Upserting an unregistered attribute fails the workflow task, so the worker makes sure
    first. Where the credentials may not do this (Temporal Cloud uses tcld or the UI) a
    warning names the attributes to create by hand.
    """
    names = [key.name for key in SEARCH_ATTRIBUTES]
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        missing = [name for name in names if name not in existing.custom_attributes]
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=client.namespace,
                    search_attributes={
                        name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in missing
                    },
                )
            )
            log.info("registered search attributes %s", ", ".join(missing))
    except Exception as err:
        log.warning(
            "could not check or register search attributes %s (%s); create them as Keyword "
            "attributes in namespace %s or installs will fail",
            ", ".join(names),
            err,
            client.namespace,
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="worker_main.py",
        description=(
            "Temporal worker for durable backend installs: runs InstallBackendWorkflow and "
            "the install and probe activities that talk to nodes over NATS."
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
    temporal.add_argument(
        "--max-concurrent-activities",
        type=int,
        default=int(env("WORKER_MAX_CONCURRENT_ACTIVITIES", "1000")),
        help="install and probe activities this worker runs at once; an install mostly "
        "waits on the node, so this is far above the SDK's 100 "
        "(env WORKER_MAX_CONCURRENT_ACTIVITIES; default %(default)s)",
    )
    temporal.add_argument(
        "--no-register-search-attributes",
        action="store_true",
        help="do not register the search attributes "
        + ", ".join(key.name for key in SEARCH_ATTRIBUTES)
        + " (Keyword; create them by hand on Temporal Cloud)",
    )
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
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    try:
        telemetry = telemetry_from_env(
            "backend-install-worker", metrics_address=args.install_metrics_address
        )
        runtime = temporal_runtime(args.metrics_address)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: telemetry: {err}", file=sys.stderr)
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
    nats_options = NatsOptions.from_args(args)
    try:
        nc = await nats_options.connect(f"backend-install-worker-{os.getpid()}")
    except Exception as err:
        print(f"error: cannot connect to NATS at {nats_options.url}: {err!r}", file=sys.stderr)
        return 2

    if not args.no_register_search_attributes:
        await ensure_search_attributes(client)
    worker = create_worker(
        client,
        nc,
        args.task_queue,
        telemetry,
        graceful_shutdown_timeout=timedelta(seconds=args.graceful_shutdown_seconds),
        max_concurrent_activities=args.max_concurrent_activities,
    )
    log.info(
        "worker polling task queue %s in namespace %s; NATS %s",
        args.task_queue,
        client.namespace,
        nats_options.url,
    )
    async with worker:
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


if __name__ == "__main__":
    sys.exit(main())
