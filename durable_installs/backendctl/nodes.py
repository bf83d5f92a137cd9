"""``nodes``: the fleet from the node registry, and stock workers asked.

Node agents announce themselves in the ``backend-nodes`` JetStream bucket (capability, agent
version, galleries, backends, running slots, when); that is the fleet. Stock LocalAI workers
do not announce: the ones named with ``--node``, and the ``NodeId`` of recent installs that
no agent announces, are asked ``models.running`` and ``backend.list`` instead. In-flight
installs come from Temporal (running installs per ``NodeId``).

Node replies are untrusted: they are parsed through the wire models, bounded in count, and
printed only through :func:`backendctl.errors.printable`. ``backends`` reads the same reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pydantic
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from rich.table import Table
from temporalio.client import Client

from durable_installs.backendctl import connect, tables
from durable_installs.backendctl.command import Context, Subcommands, set_command
from durable_installs.backendctl.errors import EXIT_OK, UserError, one_line, printable
from durable_installs.contracts.names import INSTALL_WORKFLOW
from durable_installs.contracts.search_attributes import NODE_ID
from durable_installs.protocol import subjects
from durable_installs.protocol.announce import (
    NODE_REGISTRY_BUCKET,
    NodeAnnouncement,
    open_registry,
    read_announcements,
)
from durable_installs.protocol.messages import BackendListReply, ModelsRunningReply

MAX_NODES = 200
"""Stock workers asked over NATS in one run; more is a mistake (agents announce themselves)."""
MAX_ITEMS = 500
"""Backends or slots kept from one node's reply."""
RECENT_INSTALLS = 500
"""Recent installs whose ``NodeId`` values name nodes to ask."""


def add_nodes(commands: Subcommands) -> None:
    nodes = commands.add_parser(
        "nodes",
        help="the fleet: every node announced in the node registry (capability, agent, "
        "backends, running slots, last seen), plus stock workers named with --node or found "
        "in recent installs, asked over NATS",
    )
    nodes.add_argument("--node", action="append", default=[], help="node id to ask; repeatable")
    nodes.add_argument("--timeout", type=float, default=2.0, help="seconds per node (default 2)")
    nodes.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    set_command(nodes, run_nodes)


async def run_nodes(ctx: Context[None]) -> int:
    reports, note = await fleet(ctx)
    if not reports:
        raise UserError(
            "no nodes: none announced in the node registry"
            + (f" ({note})" if note else "")
            + ", none named with --node, none in recent installs"
        )
    in_flight = await installs_in_flight(ctx.client)
    for report in reports:
        report.in_flight = in_flight.get(report.node_id, [])
    if ctx.args.json:
        tables.print_json(ctx.out, [report.as_json() for report in reports])
    else:
        tables.console(ctx.out).print(nodes_table(reports))
    return EXIT_OK


async def fleet(ctx: Context[Any]) -> tuple[list[NodeReport], str]:
    """The reports of ``--node`` and every known node over NATS (``nodes`` and ``backends``),
    and a note when the registry could not be read."""
    nc = await connect.nats(ctx.args)
    try:
        return await fleet_reports(ctx.client, nc, ctx.args.node, wait_seconds(ctx.args.timeout))
    finally:
        await nc.close()


def wait_seconds(value: float) -> float:
    """``--timeout``, refused outside (0, 60]: a node that needs longer is not answering."""
    if not 0 < value <= 60:
        raise UserError("--timeout must be between 0 and 60 seconds")
    return value


@dataclass
class NodeReport:
    """What one node said; ``answered`` is false when it did not reply in time."""

    node_id: str
    answered: bool = False
    problem: str = ""
    capability: str | None = None
    """What the node announced (None for a stock worker, which does not say)."""
    source: str = "asked"
    """``registry`` (announced by its agent) or ``asked`` (a stock worker, over NATS)."""
    agent_version: str = ""
    last_seen: str = ""
    """When the newest announcement was made (ISO 8601, UTC)."""
    agents: int = 0
    """Agent processes announcing this node id: more than one means two agents answer it."""
    galleries: list[dict[str, str]] = field(default_factory=list)
    backends: list[dict[str, str]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    """Workflow ids of installs running on this node, from Temporal."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def known_node_ids(client: Client, named: Iterable[str]) -> list[str]:
    """``--node`` values first, then the nodes of recent installs, without duplicates."""
    ids: list[str] = []
    for node in named:
        problem = subjects.token_problem(node)
        if problem:
            raise UserError(f"--node {printable(node)!r}: {problem}")
        if node not in ids:
            ids.append(node)
    async for execution in client.list_workflows(
        f"WorkflowType = '{INSTALL_WORKFLOW}'", limit=RECENT_INSTALLS, page_size=100
    ):
        seen = execution.typed_search_attributes.get(NODE_ID)
        if seen and seen not in ids and subjects.token_problem(seen) is None:
            ids.append(seen)
    if len(ids) > MAX_NODES:
        raise UserError(f"{len(ids)} nodes to ask; name at most {MAX_NODES} with --node")
    return ids


async def installs_in_flight(client: Client) -> dict[str, list[str]]:
    """Running install workflow ids per node."""
    found: dict[str, list[str]] = {}
    async for execution in client.list_workflows(
        f"WorkflowType = '{INSTALL_WORKFLOW}' AND ExecutionStatus = 'Running'",
        limit=MAX_ITEMS * 4,
        page_size=100,
    ):
        node = execution.typed_search_attributes.get(NODE_ID)
        if node:
            found.setdefault(node, []).append(execution.id)
    return found


async def _ask(nc: NATS, subject: str, wait_seconds: float) -> bytes:
    reply = await nc.request(subject, b"{}", timeout=wait_seconds)
    return bytes(reply.data)


async def ask_node(nc: NATS, node_id: str, wait_seconds: float) -> NodeReport:
    """``models.running`` and ``backend.list`` of one node, concurrently."""
    report = NodeReport(node_id=node_id)
    running, listed = await asyncio.gather(
        _ask(nc, subjects.models_running(node_id), wait_seconds),
        _ask(nc, subjects.backend_list(node_id), wait_seconds),
        return_exceptions=True,
    )
    problems = []
    for name, reply in (("models.running", running), ("backend.list", listed)):
        if isinstance(reply, NoRespondersError):
            problems.append(f"{name}: no responders (node down or unknown)")
        elif isinstance(reply, NatsTimeout | asyncio.TimeoutError):
            problems.append(f"{name}: no reply within {wait_seconds:g}s")
        elif isinstance(reply, BaseException):
            problems.append(f"{name}: {one_line(str(reply) or type(reply).__name__, 80)}")
    if isinstance(running, bytes):
        try:
            models = ModelsRunningReply.model_validate_json(running)
            report.answered = True
            report.running = [
                {
                    "model_id": printable(m.model_id[:256]),
                    "replica_index": m.replica_index,
                    "address": printable(m.address[:256]),
                }
                for m in (models.models or [])[:MAX_ITEMS]
            ]
        except pydantic.ValidationError:
            problems.append("models.running: malformed reply")
    if isinstance(listed, bytes):
        try:
            backends = BackendListReply.model_validate_json(listed)
            report.answered = True
            report.backends = [
                {"name": printable(b.name[:256]), "version": printable(b.version[:64])}
                for b in (backends.backends or [])[:MAX_ITEMS]
            ]
        except pydantic.ValidationError:
            problems.append("backend.list: malformed reply")
    report.problem = "; ".join(problems)
    return report


async def ask_nodes(nc: NATS, node_ids: list[str], wait_seconds: float) -> list[NodeReport]:
    return list(await asyncio.gather(*(ask_node(nc, node, wait_seconds) for node in node_ids)))


async def announced_nodes(nc: NATS) -> tuple[dict[str, list[NodeAnnouncement]], str]:
    """Every node id in the registry with its agents' announcements, and why there are none
    when the registry cannot be read (a server without JetStream, say)."""
    try:
        kv = await open_registry(nc, create=False)
        announcements, _skipped = await read_announcements(kv)
    except Exception as err:  # no bucket yet, no JetStream, permissions
        return {}, f"node registry {NODE_REGISTRY_BUCKET} not readable ({type(err).__name__})"
    by_node: dict[str, list[NodeAnnouncement]] = {}
    for announcement in announcements[: MAX_NODES * 4]:
        by_node.setdefault(announcement.node_id, []).append(announcement)
    return by_node, ""


def announced_report(node_id: str, announcements: list[NodeAnnouncement]) -> NodeReport:
    """What a node's agent said of itself; the newest announcement speaks for the node."""
    newest = max(announcements, key=lambda a: a.announced_at)
    return NodeReport(
        node_id=printable(node_id),
        answered=True,
        capability=printable(newest.capability),
        source="registry",
        agent_version=printable(newest.agent_version),
        last_seen=newest.announced_at.isoformat(timespec="seconds"),
        agents=len(announcements),
        problem=(
            f"{len(announcements)} agents announce this node id: installs may land on either"
            if len(announcements) > 1
            else ""
        ),
        galleries=[{"name": printable(g.name), "url": printable(g.url)} for g in newest.galleries],
        backends=[
            {"name": printable(b.name[:256]), "version": printable(b.version[:64])}
            for b in newest.backends[:MAX_ITEMS]
        ],
        running=[
            {
                "model_id": printable(m.model_id[:256]),
                "replica_index": m.replica_index,
                "address": printable(m.address[:256]),
            }
            for m in newest.running[:MAX_ITEMS]
        ],
    )


async def fleet_reports(
    client: Client, nc: NATS, named: Iterable[str], wait_seconds: float
) -> tuple[list[NodeReport], str]:
    """Every announced node, then the named and recently installed ones no agent announces
    (asked over NATS), and a note when the registry could not be read."""
    announced, note = await announced_nodes(nc)
    reports = [announced_report(node, entries) for node, entries in sorted(announced.items())]
    stock = [node for node in await known_node_ids(client, named) if node not in announced]
    reports += await ask_nodes(nc, stock, wait_seconds)
    return reports, note


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
    return tables.table(
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
