"""``backendctl delete``, ``drift`` and ``drift-schedule``: the fleet side of a backend's life.

``delete`` starts (or joins) ``DeleteBackendWorkflow`` for one backend on one node and prints
its outcome; ``drift`` runs one ``DriftCheckWorkflow`` and prints its table; ``drift-schedule``
creates the Temporal Schedule that runs the drift check periodically (LocalAI's six-hourly
upgrade checker, durable and visible in the UI). User errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from durable_installs.backendctl.errors import printable
from durable_installs.backendctl.options import add_task_queue
from durable_installs.contracts.drift import DriftCheckInput, DriftReport
from durable_installs.contracts.lifecycle import (
    DeleteBackendInput,
    DeleteBackendResult,
    delete_workflow_id,
)
from durable_installs.contracts.names import (
    DELETE_PROGRESS_QUERY,
    DELETE_WORKFLOW,
    DRIFT_WORKFLOW,
)
from durable_installs.protocol.messages import GalleryConfig

DEFAULT_SCHEDULE_ID = "drift-check"
PHASE_POLL_SECONDS = 0.5
DEFAULT_EVERY = "6h"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


class UsageError(ValueError):
    """A user error: printed as one ``error:`` line, exit code 2."""


def parse_every(text: str) -> timedelta:
    """``90s``, ``30m``, ``6h``, ``1d`` → a duration of at least a minute."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise UsageError(f"--every: {text!r} is not a duration like 30m, 6h or 1d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 60 <= seconds <= 366 * 86400:
        raise UsageError("--every: must be between 1m and 366d")
    return timedelta(seconds=seconds)


def register(subparsers: Any) -> None:
    """Add ``delete``, ``drift`` and ``drift-schedule`` to backendctl's sub-commands."""
    delete = subparsers.add_parser("delete", help="delete a backend from one node")
    delete.add_argument("--node-id", required=True, help="node to delete the backend from")
    delete.add_argument("--backend", required=True, help="the installed backend to delete")
    delete.add_argument(
        "--force", action="store_true", help="stop the slots running it first (else refused)"
    )
    add_task_queue(delete)
    delete.set_defaults(run_command=run_delete)

    for name, help_text in (
        ("drift", "compare the fleet's backends with the gallery, once"),
        ("drift-schedule", "create the Temporal Schedule running the drift check periodically"),
    ):
        cmd = subparsers.add_parser(name, help=help_text)
        cmd.add_argument(
            "--gallery", action="append", required=True, metavar="URL", help="gallery index"
        )
        cmd.add_argument(
            "--node", action="append", default=[], help="explicit node id (stock workers)"
        )
        cmd.add_argument(
            "--backend", action="append", default=[], help="only this backend (repeat)"
        )
        cmd.add_argument("--no-registry", action="store_true", help="only the --node ids")
        cmd.add_argument(
            "--start-upgrades",
            action="store_true",
            help="start an upgrade rollout for what is outdated (default: report only)",
        )
        add_task_queue(cmd)
        if name == "drift-schedule":
            cmd.add_argument("--every", default=DEFAULT_EVERY, help="interval (default 6h)")
            cmd.add_argument(
                "--schedule-id", default=DEFAULT_SCHEDULE_ID, help="default %(default)s"
            )
            cmd.set_defaults(run_command=run_drift_schedule)
        else:
            cmd.set_defaults(run_command=run_drift)


def gallery_url(value: str) -> str:
    """A gallery as the worker must read it: a URL as given, a path made absolute here.

    The worker reads the gallery, not this command, and a schedule reads it for months: a
    relative path would only work from a worker that happens to share this directory.
    """
    if urllib.parse.urlsplit(value).scheme:
        return value
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"--gallery {printable(value)!r}: no such file")
    return path.as_uri()


def drift_input(args: argparse.Namespace) -> DriftCheckInput:
    """The workflow input the flags describe; invalid fields raise :class:`UsageError`."""
    galleries = [
        GalleryConfig(name=f"gallery-{position}", url=gallery_url(url))
        for position, url in enumerate(args.gallery)
    ]
    input = DriftCheckInput(
        backend_galleries=galleries,
        nodes=args.node,
        use_registry=not args.no_registry,
        backends=args.backend,
        start_upgrades=args.start_upgrades,
    )
    invalid = input.describe_problems()
    if invalid:
        raise UsageError(invalid)
    return input


async def run_delete(client: Client, args: argparse.Namespace) -> int:
    input = DeleteBackendInput(node_id=args.node_id, backend=args.backend, force=args.force)
    invalid = input.describe_problems()
    if invalid:
        raise UsageError(invalid)
    workflow_id = delete_workflow_id(input.node_id, input.backend)
    handle = await client.start_workflow(
        DELETE_WORKFLOW,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=DeleteBackendResult,
    )
    print(f"delete {workflow_id}", flush=True)
    try:
        result = await _follow_phases(handle)
    except WorkflowFailureError as err:
        print(f"error: {_failure_text(err)}", file=sys.stderr)
        return 1
    print(result.message)
    return 0


async def run_drift(client: Client, args: argparse.Namespace) -> int:
    input = drift_input(args)
    workflow_id = f"drift/{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    handle = await client.start_workflow(
        DRIFT_WORKFLOW,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=DriftReport,
    )
    print(f"drift {workflow_id}", flush=True)
    try:
        report: DriftReport = await handle.result()
    except WorkflowFailureError as err:
        print(f"error: {_failure_text(err)}", file=sys.stderr)
        return 1
    print_report(report, sys.stdout)
    return 0


async def _follow_phases(handle: WorkflowHandle[Any, DeleteBackendResult]) -> DeleteBackendResult:
    """Print each step of the delete as it happens (``progress`` query), then the result."""
    outcome = asyncio.ensure_future(handle.result())
    shown = ""
    while True:
        done, _ = await asyncio.wait({outcome}, timeout=PHASE_POLL_SECONDS)
        if done:
            return outcome.result()
        with contextlib.suppress(RPCError, WorkflowQueryFailedError):
            phase = await handle.query(DELETE_PROGRESS_QUERY, result_type=str)
            if phase != shown:
                print(f"  {phase}", flush=True)
                shown = phase


def drift_schedule(input: DriftCheckInput, every: timedelta, task_queue: str) -> Schedule:
    """The schedule: a drift check every ``every``, never two at once, missed runs skipped."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            DRIFT_WORKFLOW,
            input,
            id="drift",  # the server appends the scheduled time: drift-2026-01-01T06:00:00Z
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def run_drift_schedule(client: Client, args: argparse.Namespace) -> int:
    input = drift_input(args)
    every = parse_every(args.every)
    try:
        await client.create_schedule(
            args.schedule_id, drift_schedule(input, every, args.task_queue)
        )
    except ScheduleAlreadyRunningError:
        raise UsageError(
            f"schedule {args.schedule_id} exists; delete it first (temporal schedule delete "
            f"--schedule-id {args.schedule_id}) or pass another --schedule-id"
        ) from None
    upgrades = "starts upgrades" if input.start_upgrades else "reports only"
    print(
        f"schedule {args.schedule_id}: drift check every {args.every} ({upgrades}); "
        f"temporal schedule describe --schedule-id {args.schedule_id}"
    )
    return 0


def print_report(report: DriftReport, out: TextIO) -> None:
    """One row per node and backend, then the counts and the upgrades started."""
    rows = [("NODE", "BACKEND", "STATE", "INSTALLED", "GALLERY", "WHY")]
    for node in report.nodes:
        if not node.answered:
            rows.append((node.node_id, "-", "unreachable", "", "", node.error))
        elif not node.backends:
            rows.append((node.node_id, "-", "-", "", "", "nothing installed"))
        for backend in node.backends:
            rows.append(
                (
                    node.node_id,
                    backend.name,
                    backend.state.value,
                    backend.installed_version or "-",
                    backend.gallery_version or "-",
                    backend.reason,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
        print("  ".join([*cells, row[5]]).rstrip(), file=out)
    counts = ", ".join(f"{state} {count}" for state, count in report.counts().items())
    print(f"{len(report.nodes)} node(s): {counts or 'nothing installed'}", file=out)
    for duplicate in report.duplicates:
        print(f"warning: node id {duplicate} is announced by more than one agent", file=out)
    for note in report.gallery_notes:
        print(f"warning: {note}", file=out)
    for upgrade in report.upgrades:
        state = "already running" if upgrade.already_running else "started"
        print(f"upgrade {upgrade.workflow_id} {state}: {', '.join(upgrade.targets)}", file=out)


def _failure_text(err: WorkflowFailureError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type:
        return f"{cause.type}: {cause.message}"
    return str(cause or err)


async def run(command: Command, client: Client, args: argparse.Namespace) -> int:
    """Run one of these commands; a :class:`UsageError` is one line on stderr, exit 2."""
    try:
        return await command(client, args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
