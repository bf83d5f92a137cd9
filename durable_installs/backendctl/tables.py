"""Tables with ``rich``, and ``--json`` for scripts; every listing goes through here.

Cells are :class:`rich.text.Text`, never markup strings, so a name like ``[bold]`` from a node
or a gallery prints as written instead of restyling the table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from durable_installs.backendctl.errors import printable
from durable_installs.backendctl.listing import WorkflowRow
from durable_installs.contracts.rollout import RolloutStatus

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


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(printable(cell)) for cell in row))
    return table


def workflows_table(rows: list[WorkflowRow]) -> Table:
    return table(
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


def rollout_table(workflow_id: str, status: RolloutStatus) -> Table:
    counts = " · ".join(f"{state} {n}" for state, n in status.counts.items() if n)
    title = f"rollout {workflow_id}: {status.backend} · {counts or 'no slots'}"
    if status.cancelled:
        title += " · cancelled"
    if status.stopped:
        title += f" · stopped: {status.stopped}"
    return table(
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
