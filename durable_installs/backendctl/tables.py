"""Tables with ``rich``, and ``--json`` for scripts; every listing goes through here.

Cells are :class:`rich.text.Text`, never markup strings, so a name like ``[bold]`` from a node
or a gallery prints as written instead of restyling the table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from durable_installs.backendctl.errors import printable
from durable_installs.backendctl.listing import WorkflowRow
from durable_installs.contracts.rollout import RolloutStatus

if TYPE_CHECKING:  # the command modules print through here: import their rows for types only
    from durable_installs.backendctl.backends import BackendRow
    from durable_installs.backendctl.nodes import NodeReport

PIPE_WIDTH = 200
"""Width of tables written to a pipe or file (a terminal uses its own width)."""


def console(out: TextIO) -> Console:
    """A console on ``out``; wide and colourless when ``out`` is not a terminal."""
    tty = out.isatty()
    return Console(
        file=out,
        width=None if tty else PIPE_WIDTH,
        no_color=not tty,
        highlight=False,
        emoji=False,
        markup=False,
    )


def print_json(out: TextIO, data: Any) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(printable(cell)) for cell in row))
    return table


def workflows_table(rows: list[WorkflowRow]) -> Table:
    return _table(
        f"{len(rows)} workflow(s), newest first",
        [
            "workflow id",
            "kind",
            "status",
            "phase",
            "node",
            "backend",
            "model",
            "rollout",
            "started",
        ],
        [
            [
                r.workflow_id,
                r.kind,
                r.status,
                r.phase,
                r.node_id,
                r.backend,
                r.model_id,
                r.rollout_id,
                r.started_at.replace("T", " "),
            ]
            for r in rows
        ],
    )


def nodes_table(reports: list[NodeReport]) -> Table:
    rows = []
    for r in reports:
        backends = ", ".join(f"{b['name']} {b['version']}".strip() for b in r.backends) or "-"
        running = (
            ", ".join(
                f"{m['model_id']}#{m['replica_index']} {m['address']}".strip() for m in r.running
            )
            or "-"
        )
        if r.source == "registry":
            seen = f"announced {r.last_seen}"
        else:
            seen = "answered (stock worker)" if r.answered else "no answer"
        if r.problem:
            seen += f" ({r.problem})"
        rows.append(
            [
                r.node_id,
                seen,
                r.capability or "-",
                r.agent_version or "-",
                backends,
                running,
                str(len(r.in_flight)),
            ]
        )
    return _table(
        f"{len(reports)} node(s)",
        [
            "node",
            "seen",
            "capability",
            "agent",
            "backends (version)",
            "running slots",
            "installs in flight",
        ],
        rows,
    )


def backends_table(rows: list[BackendRow]) -> Table:
    return _table(
        f"{len(rows)} gallery entr{'y' if len(rows) == 1 else 'ies'}",
        ["name", "alias", "version", "kind", "on nodes", "description"],
        [
            [r.name, r.alias, r.version, r.kind, ", ".join(r.nodes) or "-", r.description]
            for r in rows
        ],
    )


def rollout_table(workflow_id: str, status: RolloutStatus) -> Table:
    counts = " · ".join(f"{state} {n}" for state, n in status.counts.items() if n)
    title = f"rollout {workflow_id}: {status.backend} · {counts or 'no slots'}"
    if status.cancelled:
        title += " · cancelled"
    if status.stopped:
        title += f" · stopped: {status.stopped}"
    return _table(
        title,
        ["node", "slot", "state", "address / detail"],
        [
            [
                s.node_id,
                f"{s.model_id or status.backend}#{s.replica_index}",
                s.state.value.replace("_", " ") + (" (shared)" if s.shared else ""),
                s.address or s.error or s.detail,
            ]
            for s in status.slots
        ],
    )
