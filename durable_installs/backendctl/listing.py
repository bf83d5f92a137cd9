"""``list``: installs and rollouts from Temporal's visibility, filtered by search attributes.

The query is the same one a person types into the web UI's list view, so what ``list`` shows
and what the UI shows agree; ``--print-query`` prints it for copying there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from temporalio.client import Client, WorkflowExecution

from durable_installs.backendctl.errors import UserError, printable
from durable_installs.contracts.names import INSTALL_WORKFLOW, ROLLOUT_WORKFLOW
from durable_installs.contracts.search_attributes import (
    BACKEND_NAME,
    INSTALL_PHASE,
    MODEL_ID,
    NODE_ID,
    ROLLOUT_ID,
)

MAX_LIMIT = 1000
MAX_FILTER_LENGTH = 256


@dataclass(frozen=True)
class ListFilters:
    """What ``list`` narrows to; empty strings match everything."""

    kind: str = "all"
    node: str = ""
    backend: str = ""
    model: str = ""
    phase: str = ""
    rollout: str = ""
    running: bool = False


def _quoted(flag: str, value: str) -> str:
    if len(value) > MAX_FILTER_LENGTH:
        raise UserError(f"{flag}: the value is over {MAX_FILTER_LENGTH} characters")
    if any(ch in value for ch in "'\"\\") or not value.isprintable():
        raise UserError(
            f"{flag} {printable(value)!r}: quotes, backslashes and control "
            "characters cannot appear in ids"
        )
    return f"'{value}'"


def visibility_query(filters: ListFilters) -> str:
    """The list query for ``filters``, e.g. ``WorkflowType = '...' AND NodeId = 'node-1'``."""
    types = {
        "install": [INSTALL_WORKFLOW],
        "rollout": [ROLLOUT_WORKFLOW],
        "all": [INSTALL_WORKFLOW, ROLLOUT_WORKFLOW],
    }[filters.kind]
    install_only = any(
        (filters.node, filters.backend, filters.model, filters.phase, filters.rollout)
    )
    if install_only:
        types = [INSTALL_WORKFLOW]
    clauses = [
        f"WorkflowType = '{types[0]}'"
        if len(types) == 1
        else "WorkflowType IN (" + ", ".join(f"'{t}'" for t in types) + ")"
    ]
    for flag, key, value in (
        ("--node", NODE_ID, filters.node),
        ("--backend", BACKEND_NAME, filters.backend),
        ("--model", MODEL_ID, filters.model),
        ("--phase", INSTALL_PHASE, filters.phase),
        ("--rollout", ROLLOUT_ID, filters.rollout),
    ):
        if value:
            clauses.append(f"{key.name} = {_quoted(flag, value)}")
    if filters.running:
        clauses.append("ExecutionStatus = 'Running'")
    return " AND ".join(clauses)


@dataclass(frozen=True)
class WorkflowRow:
    """One line of ``list``; also its ``--json`` object."""

    workflow_id: str
    kind: str
    status: str
    phase: str
    node_id: str
    backend: str
    model_id: str
    rollout_id: str
    started_at: str
    closed_at: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def _row(execution: WorkflowExecution) -> WorkflowRow:
    attributes = execution.typed_search_attributes
    status = execution.status.name.lower().replace("_", " ") if execution.status else "unknown"
    kind = {INSTALL_WORKFLOW: "install", ROLLOUT_WORKFLOW: "rollout"}.get(
        execution.workflow_type, execution.workflow_type
    )

    def text(moment: datetime | None) -> str:
        return moment.isoformat(timespec="seconds") if moment else ""

    return WorkflowRow(
        workflow_id=execution.id,
        kind=kind,
        status=status,
        phase=attributes.get(INSTALL_PHASE) or "",
        node_id=attributes.get(NODE_ID) or "",
        backend=attributes.get(BACKEND_NAME) or "",
        model_id=attributes.get(MODEL_ID) or "",
        rollout_id=attributes.get(ROLLOUT_ID) or "",
        started_at=text(execution.start_time),
        closed_at=text(execution.close_time),
    )


async def list_workflows(client: Client, filters: ListFilters, limit: int) -> list[WorkflowRow]:
    """Matching installs and rollouts, newest first, at most ``limit``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise UserError(f"--limit must be between 1 and {MAX_LIMIT}")
    rows = [
        _row(execution)
        async for execution in client.list_workflows(
            visibility_query(filters), limit=limit, page_size=min(limit, 100)
        )
    ]
    rows.sort(key=lambda row: row.started_at, reverse=True)
    return rows
