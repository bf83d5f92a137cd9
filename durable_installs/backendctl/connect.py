"""Connecting to Temporal and NATS with errors that say what to do.

Temporal settings are the worker's (env config: ``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``,
``TEMPORAL_API_KEY``, ...; flags override); NATS settings are the standard ``NATS_*``
environment read by :class:`protocol.connection.NatsOptions`, so credentials the stack passes
by environment reach backendctl unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from nats.aio.client import Client as NATS
from temporalio.client import Client
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode

from durable_installs.backendctl.errors import UserError, one_line, printable
from durable_installs.contracts.summaries import shorten
from durable_installs.orchestrator.worker import DEFAULT_TEMPORAL_ADDRESS, connect_temporal
from durable_installs.protocol.connection import ContextError, NatsOptions, NatsStartupError

CONNECT_TIMEOUT = 15.0


def temporal_address(args: argparse.Namespace) -> str:
    """The address backendctl connects to, for messages."""
    return str(args.address or os.environ.get("TEMPORAL_ADDRESS") or DEFAULT_TEMPORAL_ADDRESS)


def quiet_runtime() -> Runtime:
    """A Temporal runtime that does not print the SDK core's own warnings.

    The core logs every retried RPC ("gRPC call ... retried 5 times") to stderr; backendctl
    turns the outcome into one line instead. ``--debug`` keeps the default runtime.
    """
    return Runtime(telemetry=TelemetryConfig(logging=None), worker_heartbeat_interval=None)


async def temporal(args: argparse.Namespace) -> Client:
    """A client, or a :class:`UserError` naming the address and how to fix it."""
    address = temporal_address(args)
    runtime = None if args.debug else quiet_runtime()
    try:
        return await asyncio.wait_for(
            connect_temporal(args.address, args.namespace, runtime=runtime), CONNECT_TIMEOUT
        )
    except (RuntimeError, RPCError, TimeoutError, OSError) as err:
        raise UserError(
            f"cannot reach Temporal at {address} ({_reason(err)}); "
            "start it (make run) or set --address / TEMPORAL_ADDRESS"
        ) from err


def _reason(err: BaseException) -> str:
    """A short cause: the SDK's connect errors are long nested Rust debug strings."""
    text = str(err)
    for needle, reason in (
        ("refused", "connection refused"),
        ("dns error", "unknown host"),
        ("timed out", "timed out"),
        ("certificate", "TLS certificate problem"),
    ):
        if needle in text.lower():
            return reason
    if isinstance(err, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g}s"
    return shorten(printable(text) or type(err).__name__, 100)


def unavailable(err: RPCError, address: str) -> UserError | None:
    """A one-line error for a Temporal that went away or refused us, else None."""
    if err.status is RPCStatusCode.UNAVAILABLE:
        return UserError(
            f"lost Temporal at {address} ({one_line(err.message, 120)}); installs resume "
            "when it is back — run the command again then"
        )
    if err.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
        return UserError(
            f"Temporal at {address} refused the request ({one_line(err.message, 120)}); "
            "check TEMPORAL_API_KEY / TLS settings and the namespace"
        )
    return None


async def nats(args: argparse.Namespace) -> NATS:
    """A NATS connection from ``--nats-*`` flags and ``NATS_*`` env, or a :class:`UserError`."""
    try:
        options = NatsOptions.from_args(args)
    except ContextError as err:
        raise UserError(str(err)) from err
    try:
        return await asyncio.wait_for(options.connect("backendctl"), CONNECT_TIMEOUT)
    except NatsStartupError as err:  # already one line that says what to set
        raise UserError(str(err)) from err
    except Exception as err:  # nats-py raises several unrelated types for one cause
        raise UserError(
            f"cannot reach NATS at {options.url} ({one_line(str(err) or type(err).__name__, 120)})"
            "; start it (make run) or set --nats-url / NATS_URL and NATS_* credentials"
        ) from err
