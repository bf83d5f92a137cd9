"""``upgrade``, ``delete``, ``drift`` and ``drift-schedule``: the rest of a backend's life.

``upgrade`` upgrades a backend on one node (``UpgradeBackendWorkflow``, id
``upgrade/<node>/<backend>``, joined when already running) or rolls it across several
``--node-id`` or ``--all-nodes`` (``RolloutBackendWorkflow`` with ``action: upgrade``), printing
a line whenever the upgrade (or a node of the rollout) changes. ``delete`` starts (or joins)
``DeleteBackendWorkflow`` for one backend on one node and prints its steps and outcome;
``drift`` runs one ``DriftCheckWorkflow`` and prints its table; ``drift-schedule`` creates the
Temporal Schedule that runs the drift check periodically (LocalAI's six-hourly upgrade checker,
durable and visible in the UI). A failed workflow is one ``error:`` line on stderr and exit
code 1; an invalid input exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from temporalio.client import (
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

from durable_installs.backendctl.command import Context, Subcommands, set_command
from durable_installs.backendctl.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UserError,
    printable,
)
from durable_installs.backendctl.options import add_option_flag, add_task_queue, parse_options
from durable_installs.contracts.drift import DriftCheckInput, DriftReport
from durable_installs.contracts.install import describe_problems
from durable_installs.contracts.lifecycle import (
    DeleteBackendInput,
    DeleteBackendResult,
    delete_workflow_id,
)
from durable_installs.contracts.names import (
    DELETE_PROGRESS_QUERY,
    DELETE_WORKFLOW,
    DRIFT_WORKFLOW,
    ROLLOUT_STATUS_QUERY,
    ROLLOUT_WORKFLOW,
    UPGRADE_STATUS_QUERY,
    UPGRADE_WORKFLOW,
)
from durable_installs.contracts.rollout import RolloutInput, RolloutStatus
from durable_installs.contracts.upgrade import UpgradeBackendInput, UpgradeStatus
from durable_installs.protocol.messages import GalleryConfig

POLL_SECONDS = 1.0
"""How often ``upgrade`` asks for the status."""
DEFAULT_SCHEDULE_ID = "drift-check"
PHASE_POLL_SECONDS = 0.5
DEFAULT_EVERY = "6h"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

UPGRADE_FLAGS = {"node_id": "--node-id", "backend": "--backend"}
"""Input fields that have a flag of their own, so ``--option`` may not set them."""


def add_upgrade(commands: Subcommands) -> None:
    upgrade = commands.add_parser(
        "upgrade", help="upgrade a backend on one node or roll it across nodes, and watch it"
    )
    upgrade.add_argument("--backend", required=True, help="the installed backend to upgrade")
    targets = upgrade.add_mutually_exclusive_group(required=True)
    targets.add_argument(
        "--node-id", action="append", default=[], help="node to upgrade; repeat for a rollout"
    )
    targets.add_argument(
        "--all-nodes", action="store_true", help="every known node that reports the backend"
    )
    upgrade.add_argument(
        "--max-unavailable", type=int, default=1, help="nodes upgraded at once in a rollout"
    )
    upgrade.add_argument("--rollback", action="store_true", help="roll back when the gate fails")
    upgrade.add_argument(
        "--policy",
        choices=["stop", "continue"],
        default=None,
        help="after a failed node: stop (default for upgrades) or continue",
    )
    add_task_queue(upgrade)
    add_option_flag(
        upgrade,
        "another UpgradeBackendWorkflow input field, as for install, e.g. "
        "upgrade_timeout_seconds=60; repeatable",
    )
    set_command(upgrade, run_upgrade)


async def run_upgrade(ctx: Context[None]) -> int:
    """Start (or join) the upgrade and follow it to the end."""
    args = ctx.args
    options = parse_options(args.option, UpgradeBackendInput, UPGRADE_FLAGS)
    try:
        if len(args.node_id) == 1:
            single = UpgradeBackendInput.model_validate(
                {**options, "node_id": args.node_id[0], "backend": args.backend}
            )
            problems = single.problems()
            workflow_id = "/".join(
                urllib.parse.quote(p, safe="") for p in ("upgrade", single.node_id, single.backend)
            )
            input: UpgradeBackendInput | RolloutInput = single
            workflow_type = UPGRADE_WORKFLOW
        else:
            rollout = RolloutInput.model_validate(
                {
                    "backend": args.backend,
                    "action": "upgrade",
                    "targets": [{"node_id": node} for node in args.node_id],
                    "max_unavailable": args.max_unavailable,
                    "rollback": args.rollback,
                    "failure_policy": args.policy,
                    "upgrade_options": options,
                }
            )
            problems = rollout.problems()
            workflow_id = f"upgrade-rollout/{args.backend}/{uuid.uuid4().hex[:8]}"
            input, workflow_type = rollout, ROLLOUT_WORKFLOW
    except ValueError as invalid:  # pydantic's ValidationError: a field of the wrong type
        print(f"error: {str(invalid).splitlines()[0]}", file=ctx.err)
        return EXIT_USAGE
    if problems:
        print(f"error: invalid input: {describe_problems(problems)}", file=ctx.err)
        return EXIT_USAGE
    handle: WorkflowHandle[Any, Any] = await ctx.client.start_workflow(
        workflow_type,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    print(f"{workflow_type} {workflow_id}", file=ctx.out, flush=True)
    if workflow_type == UPGRADE_WORKFLOW:
        return await _follow(ctx, handle, UPGRADE_STATUS_QUERY, UpgradeStatus, _upgrade_lines)
    return await _follow(ctx, handle, ROLLOUT_STATUS_QUERY, RolloutStatus, _rollout_lines)


async def _follow(
    ctx: Context[None],
    handle: WorkflowHandle[Any, Any],
    query: str,
    model: Any,
    lines: Any,
) -> int:
    """Print new lines as the status changes; the outcome at the end."""
    result_task = asyncio.ensure_future(handle.result())
    shown: set[str] = set()

    async def show() -> None:
        try:
            status = await handle.query(query, result_type=model)
        except Exception:  # the workflow may not have run its first task yet
            return
        for line in lines(status):
            if line not in shown:
                shown.add(line)
                print(line, file=ctx.out, flush=True)

    while True:
        await show()
        done, _ = await asyncio.wait({result_task}, timeout=POLL_SECONDS)
        if done:
            break
    await show()  # a closed workflow still answers: its final state
    try:
        result_task.result()
    except WorkflowFailureError as failure:
        cause = failure.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or failure)
        print(f"error: {message}", file=ctx.err)
        return EXIT_FAILED
    print("upgrade finished", file=ctx.out, flush=True)
    return EXIT_OK


def _upgrade_lines(status: UpgradeStatus) -> list[str]:
    after = status.after.describe() if status.after.listed else "-"
    line = (
        f"{status.backend} on {status.node_id} · {status.phase.value.replace('_', ' ')} · "
        f"requests {status.requests} · probes {status.probes} · before {status.before.describe()}"
        f" · after {after}"
    )
    return [line] + [
        f"  slot {s.model_id or '-'}#{s.replica_index}: {s.address or '-'} "
        f"{'healthy' if s.healthy else s.error}"
        for s in status.slots
    ]


def _rollout_lines(status: RolloutStatus) -> list[str]:
    lines = [
        f"  {row.node_id}: {row.state.value.replace('_', ' ')} · "
        f"{row.before_version or '-'} → {row.after_version or '-'}"
        + (
            f" · rollback {row.rollback.value.replace('_', ' ')}"
            if row.rollback.value != "none"
            else ""
        )
        + (f" · {row.error[:160]}" if row.error else "")
        for row in status.nodes
    ]
    if status.stopped:
        lines.append(status.stopped)
    return lines


def add_delete(commands: Subcommands) -> None:
    delete = commands.add_parser("delete", help="delete a backend from one node")
    delete.add_argument("--node-id", required=True, help="node to delete the backend from")
    delete.add_argument("--backend", required=True, help="the installed backend to delete")
    delete.add_argument(
        "--force", action="store_true", help="stop the slots running it first (else refused)"
    )
    add_task_queue(delete)
    set_command(delete, run_delete)


async def run_delete(ctx: Context[None]) -> int:
    args = ctx.args
    input = DeleteBackendInput(node_id=args.node_id, backend=args.backend, force=args.force)
    invalid = input.describe_problems()
    if invalid:
        raise UserError(invalid)
    workflow_id = delete_workflow_id(input.node_id, input.backend)
    handle = await ctx.client.start_workflow(
        DELETE_WORKFLOW,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=DeleteBackendResult,
    )
    print(f"delete {workflow_id}", file=ctx.out, flush=True)
    try:
        result = await _follow_phases(handle, ctx.out)
    except WorkflowFailureError as err:
        print(f"error: {_failure_text(err)}", file=ctx.err)
        return EXIT_FAILED
    print(result.message, file=ctx.out)
    return EXIT_OK


async def _follow_phases(
    handle: WorkflowHandle[Any, DeleteBackendResult], out: TextIO
) -> DeleteBackendResult:
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
                print(f"  {phase}", file=out, flush=True)
                shown = phase


def add_drift(commands: Subcommands) -> None:
    drift = commands.add_parser("drift", help="compare the fleet's backends with the gallery, once")
    _add_drift_flags(drift)
    set_command(drift, run_drift)


def add_drift_schedule(commands: Subcommands) -> None:
    schedule = commands.add_parser(
        "drift-schedule", help="create the Temporal Schedule running the drift check periodically"
    )
    _add_drift_flags(schedule)
    schedule.add_argument("--every", default=DEFAULT_EVERY, help="interval (default 6h)")
    schedule.add_argument("--schedule-id", default=DEFAULT_SCHEDULE_ID, help="default %(default)s")
    set_command(schedule, run_drift_schedule)


def _add_drift_flags(cmd: argparse.ArgumentParser) -> None:
    """What a drift check looks at: the flags of ``drift`` and ``drift-schedule`` alike."""
    cmd.add_argument(
        "--gallery", action="append", required=True, metavar="URL", help="gallery index"
    )
    cmd.add_argument("--node", action="append", default=[], help="explicit node id (stock workers)")
    cmd.add_argument("--backend", action="append", default=[], help="only this backend (repeat)")
    cmd.add_argument("--no-registry", action="store_true", help="only the --node ids")
    cmd.add_argument(
        "--start-upgrades",
        action="store_true",
        help="start an upgrade rollout for what is outdated (default: report only)",
    )
    add_task_queue(cmd)


def parse_every(text: str) -> timedelta:
    """``90s``, ``30m``, ``6h``, ``1d`` → a duration of at least a minute."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise UserError(f"--every: {text!r} is not a duration like 30m, 6h or 1d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 60 <= seconds <= 366 * 86400:
        raise UserError("--every: must be between 1m and 366d")
    return timedelta(seconds=seconds)


def gallery_url(value: str) -> str:
    """A gallery as the worker must read it: a URL as given, a path made absolute here.

    The worker reads the gallery, not this command, and a schedule reads it for months: a
    relative path would only work from a worker that happens to share this directory.
    """
    if urllib.parse.urlsplit(value).scheme:
        return value
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"--gallery {printable(value)!r}: no such file")
    return path.as_uri()


def drift_input(args: argparse.Namespace) -> DriftCheckInput:
    """The workflow input the flags describe; invalid fields raise :class:`UserError`."""
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
        raise UserError(invalid)
    return input


async def run_drift(ctx: Context[None]) -> int:
    input = drift_input(ctx.args)
    workflow_id = f"drift/{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    handle = await ctx.client.start_workflow(
        DRIFT_WORKFLOW,
        input,
        id=workflow_id,
        task_queue=ctx.args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=DriftReport,
    )
    print(f"drift {workflow_id}", file=ctx.out, flush=True)
    try:
        report: DriftReport = await handle.result()
    except WorkflowFailureError as err:
        print(f"error: {_failure_text(err)}", file=ctx.err)
        return EXIT_FAILED
    print_report(report, ctx.out)
    return EXIT_OK


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


async def run_drift_schedule(ctx: Context[None]) -> int:
    args = ctx.args
    input = drift_input(args)
    every = parse_every(args.every)
    try:
        await ctx.client.create_schedule(
            args.schedule_id, drift_schedule(input, every, args.task_queue)
        )
    except ScheduleAlreadyRunningError:
        raise UserError(
            f"schedule {args.schedule_id} exists; delete it first (temporal schedule delete "
            f"--schedule-id {args.schedule_id}) or pass another --schedule-id"
        ) from None
    upgrades = "starts upgrades" if input.start_upgrades else "reports only"
    print(
        f"schedule {args.schedule_id}: drift check every {args.every} ({upgrades}); "
        f"temporal schedule describe --schedule-id {args.schedule_id}",
        file=ctx.out,
    )
    return EXIT_OK


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
