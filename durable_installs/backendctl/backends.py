"""``backends``: gallery entries, and which nodes have each (by name or a meta's target).

The gallery is ``--gallery`` (read before connecting anywhere) or the galleries the nodes
announce; which nodes have an entry comes from the same reports as ``nodes``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from rich.table import Table

from durable_installs.backendctl import tables
from durable_installs.backendctl.command import Context, Subcommands, set_command
from durable_installs.backendctl.errors import EXIT_OK, UserError, printable
from durable_installs.backendctl.nodes import MAX_ITEMS, NodeReport, fleet
from durable_installs.protocol.gallery import (
    GalleryEntry,
    GalleryIndexError,
    parse_index,
    read_index_source,
)

MAX_INDEX_BYTES = 8 * 1024 * 1024
GALLERY_TIMEOUT = 20.0


def add_backends(commands: Subcommands) -> None:
    backends = commands.add_parser("backends", help="gallery entries and which nodes have them")
    backends.add_argument(
        "--gallery",
        help="gallery index: a path, file:// or http(s):// URL (default: the galleries the "
        "nodes announce)",
    )
    backends.add_argument("--node", action="append", default=[], help="node id to ask; repeatable")
    backends.add_argument("--timeout", type=float, default=2.0, help="seconds per node")
    backends.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    set_command(backends, run_backends, check_backends)


def check_backends(args: argparse.Namespace, out: TextIO) -> list[GalleryEntry] | None:
    """The ``--gallery`` entries, read before connecting; None: the nodes' galleries, later."""
    return read_gallery(args.gallery) if args.gallery else None


async def run_backends(ctx: Context[list[GalleryEntry] | None]) -> int:
    reports, note = await fleet(ctx)
    entries = ctx.checked
    if entries is None:
        sources = announced_galleries(reports)
        if not sources:
            raise UserError(
                "no gallery to list: no node announces one"
                + (f" ({note})" if note else "")
                + "; name one with --gallery"
            )
        entries = [entry for source in sources for entry in read_gallery(source)]
    rows = backend_rows(entries, reports)
    if ctx.args.json:
        tables.print_json(ctx.out, [row.as_json() for row in rows])
    else:
        tables.console(ctx.out).print(backends_table(rows))
    return EXIT_OK


def announced_galleries(reports: list[NodeReport]) -> list[str]:
    """The gallery index URLs the nodes announce, each once, in order."""
    return list(dict.fromkeys(g["url"] for report in reports for g in report.galleries))


def read_gallery(source: str) -> list[GalleryEntry]:
    """Entries of a gallery index file or URL, or a :class:`UserError` saying why not."""
    try:
        data = read_index_source(source, timeout=GALLERY_TIMEOUT)
        if len(data) > MAX_INDEX_BYTES:
            raise UserError(f"--gallery {printable(source)}: the index is over 8 MiB")
        return parse_index(data, printable(source))
    except GalleryIndexError as err:
        # The parser's message may quote the index; show only where and what kind of problem.
        kind = (
            "cannot be read"
            if "reading" in str(err) or "fetching" in str(err)
            else ("is not a gallery index (a YAML or JSON list of entries with names)")
        )
        raise UserError(f"--gallery {printable(source)}: {kind}") from err


@dataclass(frozen=True)
class BackendRow:
    """One gallery entry and the nodes that list it (by its name or, for meta, a target)."""

    name: str
    alias: str
    version: str
    kind: str
    description: str
    nodes: list[str]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def backend_rows(entries: list[GalleryEntry], reports: list[NodeReport]) -> list[BackendRow]:
    rows = []
    for entry in entries[: MAX_ITEMS * 4]:
        names = {entry.name.lower()} | {t.lower() for t in entry.capabilities.values()}
        nodes = [
            report.node_id
            for report in reports
            if any(b["name"].lower() in names for b in report.backends)
        ]
        rows.append(
            BackendRow(
                name=printable(entry.name[:256]),
                alias=printable(entry.alias[:256]),
                version=printable(entry.version[:64]),
                kind="meta" if entry.is_meta else "concrete",
                description=printable(entry.description[:120]),
                nodes=nodes,
            )
        )
    return rows


def backends_table(rows: list[BackendRow]) -> Table:
    return tables.table(
        f"{len(rows)} gallery entr{'y' if len(rows) == 1 else 'ies'}",
        ["name", "alias", "version", "kind", "on nodes", "description"],
        [
            [r.name, r.alias, r.version, r.kind, ", ".join(r.nodes) or "-", r.description]
            for r in rows
        ],
    )
