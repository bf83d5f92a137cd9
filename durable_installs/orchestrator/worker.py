"""The worker as a library: what a process needs to run this project's workflows and activities.

Importable without argparse or a command line: ``create_worker`` registers every workflow and
activity (with each workflow type's versioning behavior), ``connect_temporal`` connects the
way the worker does (Temporal's env config, the pydantic data converter, tracing), and
``ensure_search_attributes`` registers the search attributes where it may.
``worker_main.py`` is the command line around it; tests, the dev stack, benchmarks and
``backendctl`` use this module directly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import py_compile
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from nats.aio.client import Client as NATS
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from activities.budget import MIN_HEARTBEAT_INTERVAL, ForwardBudget
from activities.staging import StagingConfig
from durable_installs.contracts.names import DEFAULT_TASK_QUEUE
from durable_installs.contracts.search_attributes import SEARCH_ATTRIBUTES
from durable_installs.orchestrator.capacity import CapacityMonitor
from durable_installs.orchestrator.registry import WORKFLOW_BEHAVIORS, Activity, activities
from durable_installs.orchestrator.sizing import WorkerSizing
from durable_installs.orchestrator.versioning import Versioning
from durable_installs.protocol.context import DEV_STATE
from durable_installs.telemetry import Telemetry
from durable_installs.telemetry.temporal import client_traces, temporal_interceptors

DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"

HEARTBEAT_THROTTLE = timedelta(seconds=MIN_HEARTBEAT_INTERVAL)
"""Longest the SDK holds a heartbeat back; how often is the forwarding budget's business."""

log = logging.getLogger(__name__)


def default_behavior() -> VersioningBehavior:
    """The one behavior all workflow types share; a new type must be added with one."""
    behaviors = set(WORKFLOW_BEHAVIORS.values())
    if len(behaviors) != 1 or VersioningBehavior.UNSPECIFIED in behaviors:
        raise ValueError(
            "every workflow type in WORKFLOW_BEHAVIORS needs the same, specified behavior"
        )
    return behaviors.pop()


def compile_workflow_modules(workflows: Sequence[type[Any]]) -> list[str]:
    """Byte-compile the modules of ``workflows`` once; the paths written.

    Temporal's sandbox imports a workflow's module afresh for every workflow run. Where
    bytecode is not written (``PYTHONDONTWRITEBYTECODE=1``, common in containers) and none was
    shipped, every run compiled its module from source: half of a warm install's one workflow
    task (bench/README.md, "The warm path at its limit"). ``py_compile`` writes the ``.pyc``
    where the import system reads it whatever that setting says, once per worker start; a
    read-only install is left as it is, only slower.
    """
    written: list[str] = []
    for workflow_class in workflows:
        source = getattr(sys.modules.get(workflow_class.__module__), "__file__", None)
        if not source or not source.endswith(".py"):
            continue
        cached = importlib.util.cache_from_source(source)
        try:
            py_compile.compile(source, cfile=cached, doraise=True)
        except (OSError, py_compile.PyCompileError) as err:
            log.debug("workflow module %s stays uncompiled: %s", source, err)
        else:
            written.append(cached)
    return written


def create_worker(
    client: Client,
    nc: NATS,
    task_queue: str = DEFAULT_TASK_QUEUE,
    telemetry: Telemetry | None = None,
    *,
    versioning: Versioning | None = None,
    budget: ForwardBudget | None = None,
    sizing: WorkerSizing | None = None,
    capacity: CapacityMonitor | None = None,
    replace: Mapping[str, Activity] | None = None,
    staging: StagingConfig | None = None,
    **worker_options: object,
) -> Worker:
    """A worker with every workflow and activity of this project registered.

    With ``telemetry`` tracing, workflows and activities are traced: by the client's tracing
    interceptor when it has one (workers inherit it), else by one added here. With
    ``versioning`` the worker polls as that Worker Deployment Version; without it, unversioned
    (what the in-process test workers use: each test's own task queue needs no deployment).
    ``replace`` swaps activities by name (a test's own ``list_nodes``, say).
    """
    telemetry = telemetry or Telemetry()
    registered = activities(nc, telemetry, budget or ForwardBudget(), staging)
    for name, activity_fn in (replace or {}).items():
        if name not in registered:
            raise ValueError(f"no activity named {name!r} to replace")
        registered[name] = activity_fn
    if telemetry.tracing and not client_traces(client) and "interceptors" not in worker_options:
        worker_options["interceptors"] = temporal_interceptors(telemetry)
    if capacity is not None:  # counts the activities running, for the capacity monitor
        interceptors = list(worker_options.get("interceptors") or [])  # type: ignore[call-overload]
        worker_options["interceptors"] = [*interceptors, capacity.activities]
    compile_workflow_modules(list(WORKFLOW_BEHAVIORS))
    for option, value in (sizing.options() if sizing else {}).items():
        worker_options.setdefault(option, value)
    if "max_concurrent_activities" in worker_options:
        # Every install's first request is the fast path's local activity: as many of those
        # may run at once as install activities (the SDK's own default is 100 of each).
        worker_options.setdefault(
            "max_concurrent_local_activities", worker_options["max_concurrent_activities"]
        )
    # The SDK holds heartbeats back for 0.8x the heartbeat timeout (24 s by default) unless
    # this caps it: a cancel reaches an activity only with a heartbeat's answer, and the UI
    # shows only heartbeats that reached the server. The budget keeps the rate bounded.
    worker_options.setdefault("max_heartbeat_throttle_interval", HEARTBEAT_THROTTLE)
    if versioning is not None:
        worker_options["deployment_config"] = versioning.deployment_config(default_behavior())
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOW_BEHAVIORS),
        activities=list(registered.values()),
        **worker_options,  # type: ignore[arg-type]
    )


DEV_CONFIG_FILE = DEV_STATE / "temporal.toml"
"""Where the dev stack writes its Temporal env-config profile (``[profile.default]``)."""

TEMPORAL_CONNECTION_VARIABLES = ("TEMPORAL_ADDRESS", "TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE")


def dev_config_file() -> str | None:
    """The dev stack's env-config file, when nothing else says where Temporal is."""
    if any(os.environ.get(name) for name in TEMPORAL_CONNECTION_VARIABLES):
        return None
    return str(DEV_CONFIG_FILE) if DEV_CONFIG_FILE.is_file() else None


async def connect_temporal(
    address: str | None = None,
    namespace: str | None = None,
    profile: str | None = None,
    config_file: str | None = None,
    telemetry: Telemetry | None = None,
    runtime: Runtime | None = None,
) -> Client:
    """Connect with Temporal's env config; explicit arguments override it.

    With nothing set at all (no arguments, no ``TEMPORAL_*`` connection variable), a command
    run from a checkout uses the profile the dev stack wrote (:func:`dev_config_file`).
    ``telemetry`` adds the tracing interceptor when it traces; ``runtime`` is the one that
    serves Temporal's metrics (see :func:`telemetry.temporal.temporal_runtime`).
    """
    if not (address or profile or config_file):
        config_file = dev_config_file()
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
