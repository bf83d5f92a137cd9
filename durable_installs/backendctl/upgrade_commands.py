"""``backendctl upgrade``: upgrade a backend on one node, or roll it across nodes, and watch it.

One ``--node-id`` starts ``UpgradeBackendWorkflow`` (id ``upgrade/<node>/<backend>``, joined
when already running); several ``--node-id``, or ``--all-nodes`` (every node that reports the
backend), start ``RolloutBackendWorkflow`` with ``action: upgrade``. The command prints a line
whenever the upgrade (or a node of the rollout) changes, then the outcome; a failed upgrade is
one ``error:`` line on stderr and exit code 1, an invalid input exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.parse
import uuid
from typing import Any, TextIO

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from durable_installs.backendctl.options import add_option_flag, add_task_queue, parse_options
from durable_installs.contracts.install import describe_problems
from durable_installs.contracts.names import (
    ROLLOUT_STATUS_QUERY,
    ROLLOUT_WORKFLOW,
    UPGRADE_STATUS_QUERY,
    UPGRADE_WORKFLOW,
)
from durable_installs.contracts.rollout import RolloutInput, RolloutStatus
from durable_installs.contracts.upgrade import UpgradeBackendInput, UpgradeStatus

POLL_SECONDS = 1.0


def register(subparsers: Any) -> None:
    """Add the ``upgrade`` command to ``backendctl``'s subparsers."""
    upgrade = subparsers.add_parser(
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
    upgrade.set_defaults(handler=run_upgrade)


UPGRADE_FLAGS = {"node_id": "--node-id", "backend": "--backend"}
"""Input fields that have a flag of their own, so ``--option`` may not set them."""


async def run_upgrade(
    client: Client,
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Start (or join) the upgrade and follow it to the end (``out``/``err``: stdout/stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
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
        print(f"error: {str(invalid).splitlines()[0]}", file=err)
        return 2
    if problems:
        print(f"error: invalid input: {describe_problems(problems)}", file=err)
        return 2
    handle: WorkflowHandle[Any, Any] = await client.start_workflow(
        workflow_type,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    print(f"{workflow_type} {workflow_id}", file=out, flush=True)
    if workflow_type == UPGRADE_WORKFLOW:
        return await _follow(handle, UPGRADE_STATUS_QUERY, UpgradeStatus, _upgrade_lines, out, err)
    return await _follow(handle, ROLLOUT_STATUS_QUERY, RolloutStatus, _rollout_lines, out, err)


async def _follow(
    handle: WorkflowHandle[Any, Any],
    query: str,
    model: Any,
    lines: Any,
    out: TextIO,
    err: TextIO,
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
                print(line, file=out, flush=True)

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
        print(f"error: {message}", file=err)
        return 1
    print("upgrade finished", file=out, flush=True)
    return 0


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
