"""Follow an install or a load (``progress`` query) or a rollout (``status``) until it ends.

In a terminal the view redraws in place with ``rich.live``; otherwise every change is a new
line, which is what logs, pipes and tests want.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO

from rich.console import RenderableType
from rich.live import Live
from rich.text import Text
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from durable_installs.backendctl.command import Context
from durable_installs.backendctl.errors import EXIT_FAILED, EXIT_OK, UserError, one_line, printable
from durable_installs.backendctl.progress import staging_progress, with_heartbeat
from durable_installs.backendctl.render import (
    PROG,
    load_line,
    loaded_line,
    status_line,
    success_line,
)
from durable_installs.backendctl.tables import console, rollout_table
from durable_installs.contracts.install import InstallStatus
from durable_installs.contracts.load import LoadStatus
from durable_installs.contracts.names import INSTALL_WORKFLOW, LOAD_WORKFLOW, ROLLOUT_WORKFLOW
from durable_installs.contracts.rollout import RolloutStatus, SlotState
from workflows.install_backend import InstallBackendWorkflow
from workflows.load_model import LoadModelWorkflow
from workflows.rollout import RolloutBackendWorkflow

POLL_SECONDS = 0.5


async def describe(
    handle: WorkflowHandle[Any, Any], namespace: str
) -> WorkflowExecutionDescription:
    """The workflow's description, or a :class:`UserError` when there is no such workflow."""
    try:
        return await handle.describe()
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise UserError(
                f"no workflow {printable(handle.id)!r} in namespace {namespace}; "
                f"list installs with: {PROG} list"
            ) from err
        raise


class _View:
    """One redrawn renderable in a terminal, or a line per change elsewhere."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live: Live | None = None
        if live:
            self.live = Live(Text(""), console=console(out), auto_refresh=False)
        self.last: str = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[_View]:
        if self.live is None:
            yield self
            return
        with self.live:
            yield self

    def show(self, key: str, renderable: RenderableType, line: str) -> None:
        """Redraw when ``key`` changed; ``line`` is what a pipe gets.

        ``key`` is the state behind the view, not its rendering: a countdown ("next try in
        29s") redraws a terminal every second but is no news for a log or a pipe.
        """
        if self.live is not None:
            if line != self.last:
                self.live.update(renderable, refresh=True)
            self.last = line
            return
        if key == self.last:
            return
        self.last = key
        self.out.write(line + "\n")
        self.out.flush()


async def started(ctx: Context[Any], kind: str, workflow_id: str) -> int:
    """Say what was started; then watch it, or with ``--no-watch`` say how to."""
    ctx.out.write(f"{kind} {workflow_id}\n")
    ctx.out.flush()
    ctx.session.starting = ""
    if ctx.args.no_watch:
        ctx.out.write(f"watch it: {PROG} watch {workflow_id}\n")
        return EXIT_OK
    ctx.session.watching = workflow_id
    return await watch(ctx.client, workflow_id, ctx.out, ctx.live)


async def watch(
    client: Client, workflow_id: str, out: TextIO, live: bool, poll: float = POLL_SECONDS
) -> int:
    """Follow an install, a load or a rollout; 0 when it succeeded, 1 when it failed or
    stopped."""
    description = await describe(client.get_workflow_handle(workflow_id), client.namespace)
    if description.workflow_type == ROLLOUT_WORKFLOW:
        return await watch_rollout(client, workflow_id, out, live, poll)
    if description.workflow_type == LOAD_WORKFLOW:
        return await watch_load(client, workflow_id, out, live, poll)
    if description.workflow_type != INSTALL_WORKFLOW:
        raise UserError(
            f"{printable(workflow_id)!r} is a {printable(description.workflow_type)}, "
            "not an install, a load or a rollout"
        )
    return await watch_install(client, workflow_id, out, live, poll)


Snapshot = Callable[[WorkflowExecutionDescription], Awaitable[tuple[str, str]]]
"""One look at a running workflow: (the state behind the view, the line that shows it)."""


async def _follow(
    handle: WorkflowHandle[Any, Any],
    client: Client,
    out: TextIO,
    live: bool,
    poll: float,
    snapshot: Snapshot,
) -> None:
    """Show ``snapshot``'s line on every change until the workflow closes."""
    view = _View(out, live)
    with view.running():
        while True:
            description = await describe(handle, client.namespace)
            try:
                key, line = await snapshot(description)
            except RPCError as err:  # e.g. no worker is polling right now
                if err.status is RPCStatusCode.UNAVAILABLE:
                    raise  # Temporal itself is gone: one line from the caller, exit 2
                line = key = f"{handle.id}: waiting for a worker ({one_line(err.message, 100)})"
            line = printable(line)
            view.show(key, Text(line), line)
            if description.status is not WorkflowExecutionStatus.RUNNING:
                return
            await asyncio.sleep(poll)


async def _ended(
    handle: WorkflowHandle[Any, Any], out: TextIO, success: Callable[[Any], str]
) -> int:
    """The closing line: ``success(result)``, or the failure; the exit code."""
    try:
        result = await handle.result()
    except WorkflowFailureError as err:
        out.write(failure_line(handle.id, err) + "\n")
        return EXIT_FAILED
    out.write(success(result) + "\n")
    return EXIT_OK


async def watch_install(
    client: Client, workflow_id: str, out: TextIO, live: bool, poll: float = POLL_SECONDS
) -> int:
    """Print an install's progress until it ends; 0 on success, 1 otherwise."""
    handle = client.get_workflow_handle_for(InstallBackendWorkflow.run, workflow_id)

    async def snapshot(description: WorkflowExecutionDescription) -> tuple[str, str]:
        status: InstallStatus = await handle.query(InstallBackendWorkflow.progress)
        shown = with_heartbeat(status, description, client)
        return shown.model_dump_json(exclude={"updated_at"}), status_line(shown, workflow_id)

    await _follow(handle, client, out, live, poll, snapshot)
    return await _ended(handle, out, success_line)


async def watch_load(
    client: Client, workflow_id: str, out: TextIO, live: bool, poll: float = POLL_SECONDS
) -> int:
    """Print a load's progress until it ends; 0 when the model is loaded, 1 otherwise.

    The bytes of the file being sent come from the staging activity's heartbeat (every
    second), the phase and the files from the workflow's ``progress`` query.
    """
    handle = client.get_workflow_handle_for(LoadModelWorkflow.run, workflow_id)

    async def snapshot(description: WorkflowExecutionDescription) -> tuple[str, str]:
        status: LoadStatus = await handle.query(LoadModelWorkflow.progress)
        sending = staging_progress(description, client.data_converter)
        key = status.model_dump_json(exclude={"updated_at"}) + str(sending.committed)
        return key, load_line(status, sending, workflow_id)

    await _follow(handle, client, out, live, poll, snapshot)
    return await _ended(handle, out, loaded_line)


def failure_line(workflow_id: str, err: WorkflowFailureError) -> str:
    """``failed: InstallRejected: <message>``, one printable line."""
    cause = err.cause
    kind = getattr(cause, "type", None) or type(cause).__name__
    if kind == "CancelledError":
        return f"cancelled: {workflow_id} was cancelled"
    if kind == "TerminatedError":
        return f"terminated: {workflow_id} was terminated"
    message = getattr(cause, "message", None) or str(cause)
    return f"failed: {printable(kind)}: {one_line(message, 300)}"


async def watch_rollout(
    client: Client, workflow_id: str, out: TextIO, live: bool, poll: float = POLL_SECONDS
) -> int:
    """A live per-slot table of a rollout until it ends; 0 when every slot succeeded."""
    handle = client.get_workflow_handle_for(RolloutBackendWorkflow.run, workflow_id)
    view = _View(out, live)
    status: RolloutStatus | None = None
    with view.running():
        while True:
            description = await describe(handle, client.namespace)
            try:
                status = await handle.query(RolloutBackendWorkflow.status)
                counts = " · ".join(f"{s} {n}" for s, n in status.counts.items() if n)
                line = f"rollout {workflow_id}: {counts or 'no slots yet'}"
                table = rollout_table(workflow_id, status)
                view.show(status.model_dump_json(), table, printable(line))
            except RPCError as err:
                if err.status is RPCStatusCode.UNAVAILABLE:
                    raise
                line = f"{workflow_id}: waiting for a worker ({one_line(err.message, 100)})"
                view.show(line, Text(line), line)
            if description.status is not WorkflowExecutionStatus.RUNNING:
                break
            await asyncio.sleep(poll)
    try:
        final = await handle.result()
    except WorkflowFailureError as err:
        if status is not None and not live:  # a cancelled rollout still has its table
            with contextlib.suppress(RPCError):
                status = await handle.query(RolloutBackendWorkflow.status)
            console(out).print(rollout_table(workflow_id, status))
        out.write(failure_line(workflow_id, err) + "\n")
        return EXIT_FAILED
    if not live:
        console(out).print(rollout_table(workflow_id, final))
    bad = sum(1 for slot in final.slots if slot.state in (SlotState.FAILED, SlotState.CANCELLED))
    if bad or final.cancelled or final.stopped:
        out.write(f"rollout {workflow_id} finished with {bad} slot(s) failed or cancelled\n")
        return EXIT_FAILED
    out.write(f"rollout {workflow_id} installed {len(final.slots)} slot(s)\n")
    return EXIT_OK
