"""The command line: parse, run, and turn every error into one line and an exit code.

Exit codes: 0 done, 1 the install/rollout failed (or an unexpected error), 2 a user error
(what was wrong and what to do, on one line of stderr), 130 Ctrl-C. Tracebacks only with
``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, TextIO

import pydantic
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from durable_installs.backendctl import (
    connect,
    fleet,
    fleet_commands,
    listing,
    tables,
    upgrade_commands,
)
from durable_installs.backendctl.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UserError,
    one_line,
    printable,
)
from durable_installs.backendctl.options import (
    add_option_flag,
    add_task_queue,
    parse_options,
    validation_message,
)
from durable_installs.backendctl.render import PROG
from durable_installs.backendctl.watch import describe, watch
from durable_installs.contracts.install import (
    InstallBackendInput,
    InstallPhase,
    install_workflow_id,
)
from durable_installs.contracts.rollout import FailurePolicy, RolloutInput, RolloutTarget
from durable_installs.contracts.summaries import (
    install_details,
    install_summary,
    rollout_details,
    rollout_summary,
)
from durable_installs.invoked import exit_now
from durable_installs.protocol.connection import NatsOptions
from durable_installs.protocol.gallery import GalleryEntry
from workflows.install_backend import InstallBackendWorkflow
from workflows.rollout import RolloutBackendWorkflow

DESCRIPTION = """\
The operator's tool for durable backend installs: start installs and rollouts, watch them
live, list them, cancel them, and ask nodes what they run.

Temporal settings are the worker's: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
TEMPORAL_TLS_* or a TEMPORAL_PROFILE (flags override). NATS settings (for nodes, backends) are
NATS_URL, NATS_CREDS, NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_TLS_* or the --nats-* flags.
"""

EPILOG = f"""\
examples:
  {PROG} install --node-id node-2 --backend cpu-large --model-id demo
  {PROG} watch install/node-1/cpu-large/demo/0
  {PROG} list --node node-1 --phase still_installing
  {PROG} nodes
  {PROG} backends
  {PROG} rollout --backend cpu-echo --target node-1:demo:0,1 --target node-2:demo
  {PROG} cancel install/node-1/cpu-large/demo/0

exit codes: 0 done, 1 the install or rollout failed, 2 usage or connection error, 130 Ctrl-C
"""

INSTALL_FLAGS = {
    "node_id": "--node-id",
    "backend": "--backend",
    "model_id": "--model-id",
    "replica_index": "--replica-index",
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, with where to read more."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", help="Temporal frontend host:port (env TEMPORAL_ADDRESS)")
    parser.add_argument("--namespace", help="Temporal namespace (env TEMPORAL_NAMESPACE)")
    parser.add_argument(
        "--no-live", action="store_true", help="print a line per change instead of redrawing"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    NatsOptions.add_arguments(parser)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    watch_cmd = commands.add_parser(
        "watch", help="follow an install or rollout until it ends (Ctrl-C stops watching only)"
    )
    watch_cmd.add_argument("workflow_id", help="e.g. install/node-1/cpu-large/demo/0")

    install = commands.add_parser(
        "install", help="start an install (or join the running one of that slot) and watch it"
    )
    install.add_argument("--node-id", required=True, help="node to install on, e.g. node-1")
    install.add_argument("--backend", required=True, help="gallery name, alias or meta name")
    install.add_argument("--model-id", default="", help="model the slot serves; empty: admin")
    install.add_argument(
        "--replica-index", type=int, default=0, help="slot index on the node (default 0)"
    )
    add_task_queue(install)
    add_option_flag(
        install,
        "any other input field; strings plain (name=foo), numbers and lists as JSON "
        "(install_timeout_seconds=60); repeatable",
    )
    install.add_argument("--no-watch", action="store_true", help="start it and exit")

    list_cmd = commands.add_parser("list", help="installs and rollouts, newest first")
    list_cmd.add_argument(
        "--kind",
        choices=["install", "rollout", "all"],
        default="all",
        help="installs, rollouts or both (default %(default)s)",
    )
    list_cmd.add_argument("--node", default="", help="only installs on this node (NodeId)")
    list_cmd.add_argument("--backend", default="", help="only this backend (BackendName)")
    list_cmd.add_argument("--model", default="", help="only this model (ModelId)")
    list_cmd.add_argument(
        "--phase",
        default="",
        choices=[phase.value for phase in InstallPhase],
        metavar="PHASE",
        help="only installs in this phase (InstallPhase): "
        + ", ".join(phase.value for phase in InstallPhase),
    )
    list_cmd.add_argument("--rollout", default="", help="only installs of this rollout (RolloutId)")
    list_cmd.add_argument("--running", action="store_true", help="only running workflows")
    list_cmd.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    list_cmd.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    list_cmd.add_argument(
        "--print-query", action="store_true", help="print the visibility query (for the web UI)"
    )

    nodes = commands.add_parser(
        "nodes",
        help="the fleet: every node announced in the node registry (capability, agent, "
        "backends, running slots, last seen), plus stock workers named with --node or found "
        "in recent installs, asked over NATS",
    )
    nodes.add_argument("--node", action="append", default=[], help="node id to ask; repeatable")
    nodes.add_argument("--timeout", type=float, default=2.0, help="seconds per node (default 2)")
    nodes.add_argument("--json", action="store_true", help="a JSON list, for scripts")

    backends = commands.add_parser("backends", help="gallery entries and which nodes have them")
    backends.add_argument(
        "--gallery",
        help="gallery index: a path, file:// or http(s):// URL (default: the galleries the "
        "nodes announce)",
    )
    backends.add_argument("--node", action="append", default=[], help="node id to ask; repeatable")
    backends.add_argument("--timeout", type=float, default=2.0, help="seconds per node")
    backends.add_argument("--json", action="store_true", help="a JSON list, for scripts")

    cancel = commands.add_parser("cancel", help="cancel an install or a rollout")
    cancel.add_argument("workflow_id")

    rollout = commands.add_parser(
        "rollout", help="install one backend on many slots and show a live per-slot table"
    )
    rollout.add_argument("--backend", required=True, help="gallery name, alias or meta name")
    rollout.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="NODE[:MODEL[:REPLICAS]]",
        help="slots on a node: node-1, node-1:qwen3, node-1:qwen3:0,1; repeatable",
    )
    rollout.add_argument("--max-in-flight", type=int, default=10, help="installs at once")
    rollout.add_argument(
        "--failure-policy",
        choices=[p.value for p in FailurePolicy],
        default="continue",
        help="continue: install every slot; stop: start nothing new after --max-failures "
        "failed slots (default %(default)s)",
    )
    rollout.add_argument("--max-failures", type=int, default=1, help="threshold of 'stop'")
    rollout.add_argument("--workflow-id", default="", help="default rollout/<backend>/<random>")
    add_task_queue(rollout)
    add_option_flag(rollout, "an install input field for every slot, as for install; repeatable")
    rollout.add_argument("--no-watch", action="store_true", help="start it and exit")
    # Lifecycle commands live in modules of their own; each sets a ``handler`` default.
    upgrade_commands.register(commands)
    fleet_commands.register(commands)
    return parser


@dataclass
class Session:
    """What Ctrl-C needs to say: the workflow being watched, if any."""

    watching: str = ""
    starting: str = ""


def interrupted_message(session: Session) -> str:
    if session.watching:
        return f"stopped watching; {session.watching} goes on — {PROG} watch {session.watching}"
    if session.starting:
        return (
            f"interrupted while starting {session.starting}; it may have started — "
            f"{PROG} watch {session.starting}"
        )
    return "interrupted"


async def run(args: argparse.Namespace, session: Session, out: TextIO) -> int:
    live = out.isatty() and not args.no_live
    # Everything that can be checked locally is checked before connecting anywhere.
    entries: list[GalleryEntry] | None = None
    if args.command == "backends" and args.gallery:
        entries = fleet.read_gallery(args.gallery)
    if args.command == "install":
        install_input = build_install_input(args)
    if args.command == "rollout":
        rollout_input = build_rollout_input(args)
    if args.command == "list" and args.print_query:
        out.write(listing.visibility_query(list_filters(args)) + "\n")
        return EXIT_OK
    client = await connect.temporal(args)
    address = connect.temporal_address(args)
    try:
        if getattr(args, "run_command", None) is not None:  # delete, drift, drift-schedule
            return await fleet_commands.run(args.run_command, client, args)
        if getattr(args, "handler", None) is not None:
            session.watching = getattr(args, "workflow_id", "")
            return int(await args.handler(client, args))
        if args.command == "watch":
            session.watching = args.workflow_id
            return await watch(client, args.workflow_id, out, live)
        if args.command == "install":
            return await install(client, args, install_input, session, out, live)
        if args.command == "rollout":
            return await start_rollout(client, args, rollout_input, session, out, live)
        if args.command == "list":
            return await list_command(client, args, out)
        if args.command == "cancel":
            return await cancel(client, args.workflow_id, out)
        if args.command == "nodes":
            return await nodes_command(client, args, out)
        if args.command == "backends":
            return await backends_command(client, args, entries, out)
    except RPCError as err:
        mapped = connect.unavailable(err, address)
        if mapped is None:
            raise
        raise mapped from err
    raise UserError(f"unknown command {args.command}")


def build_install_input(args: argparse.Namespace) -> InstallBackendInput:
    """The install's input from flags and ``--option``s, or a one-line :class:`UserError`."""
    fields = parse_options(args.option, InstallBackendInput, INSTALL_FLAGS)
    try:
        input = InstallBackendInput.model_validate(
            {
                **fields,
                "node_id": args.node_id,
                "backend": args.backend,
                "model_id": args.model_id,
                "replica_index": args.replica_index,
            }
        )
    except pydantic.ValidationError as err:
        raise UserError(f"invalid install input: {validation_message(err)}") from err
    problems = input.problems()
    if problems:
        raise UserError(
            "invalid install input: "
            + printable("; ".join(f"{field}: {reason}" for field, reason in problems))
        )
    return input


async def install(
    client: Client,
    args: argparse.Namespace,
    input: InstallBackendInput,
    session: Session,
    out: TextIO,
    live: bool,
) -> int:
    workflow_id = install_workflow_id(
        input.node_id, input.backend, input.model_id, input.replica_index
    )
    session.starting = workflow_id
    await client.start_workflow(
        InstallBackendWorkflow.run,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=install_summary(
            input.backend, input.node_id, input.model_id, input.replica_index
        ),
        static_details=install_details(
            input.backend, input.node_id, input.model_id, input.replica_index, "backendctl"
        ),
    )
    return await _started(client, args, "install", workflow_id, session, out, live)


async def _started(
    client: Client,
    args: argparse.Namespace,
    kind: str,
    workflow_id: str,
    session: Session,
    out: TextIO,
    live: bool,
) -> int:
    """Say what was started; then watch it, or with ``--no-watch`` say how to."""
    out.write(f"{kind} {workflow_id}\n")
    out.flush()
    session.starting = ""
    if args.no_watch:
        out.write(f"watch it: {PROG} watch {workflow_id}\n")
        return EXIT_OK
    session.watching = workflow_id
    return await watch(client, workflow_id, out, live)


def parse_target(text: str) -> RolloutTarget:
    """``node``, ``node:model`` or ``node:model:0,1`` as a rollout target."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise UserError(f"--target {printable(text)!r}: expected NODE[:MODEL[:REPLICAS]]")
    replicas = [0]
    if len(parts) == 3:
        try:
            replicas = [int(r) for r in parts[2].split(",") if r.strip()]
        except ValueError as err:
            raise UserError(
                f"--target {printable(text)!r}: replicas are whole numbers, e.g. node-1:qwen3:0,1"
            ) from err
    return RolloutTarget(
        node_id=parts[0], model_id=parts[1] if len(parts) > 1 else "", replica_indexes=replicas
    )


def build_rollout_input(args: argparse.Namespace) -> RolloutInput:
    """The rollout's input from flags and ``--option``s, or a one-line :class:`UserError`."""
    options = parse_options(
        args.option, InstallBackendInput, {**INSTALL_FLAGS, "rollout_id": "the rollout"}
    )
    try:
        input = RolloutInput(
            backend=args.backend,
            targets=[parse_target(t) for t in args.target],
            max_in_flight=args.max_in_flight,
            failure_policy=FailurePolicy(args.failure_policy),
            max_failures=args.max_failures,
            install_options=options,
        )
    except pydantic.ValidationError as err:
        raise UserError(f"invalid rollout input: {validation_message(err)}") from err
    problems = input.problems()
    if problems:
        raise UserError(
            "invalid rollout input: "
            + printable("; ".join(f"{field}: {reason}" for field, reason in problems[:5]))
        )
    return input


async def start_rollout(
    client: Client,
    args: argparse.Namespace,
    input: RolloutInput,
    session: Session,
    out: TextIO,
    live: bool,
) -> int:
    workflow_id = args.workflow_id or f"rollout/{args.backend}/{uuid.uuid4().hex[:8]}"
    slots = sum(len(t.replica_indexes or [0]) for t in input.targets)
    session.starting = workflow_id
    await client.start_workflow(
        RolloutBackendWorkflow.run,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        static_summary=rollout_summary(input.backend, slots),
        static_details=rollout_details(
            input.backend, [t.node_id for t in input.targets], "backendctl"
        ),
    )
    return await _started(client, args, "rollout", workflow_id, session, out, live)


def list_filters(args: argparse.Namespace) -> listing.ListFilters:
    return listing.ListFilters(
        kind=args.kind,
        node=args.node,
        backend=args.backend,
        model=args.model,
        phase=args.phase,
        rollout=args.rollout,
        running=args.running,
    )


async def list_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    rows = await listing.list_workflows(client, list_filters(args), args.limit)
    if args.json:
        tables.print_json(out, [row.as_json() for row in rows])
    else:
        tables.console(out).print(tables.workflows_table(rows))
    return EXIT_OK


async def cancel(client: Client, workflow_id: str, out: TextIO) -> int:
    handle = client.get_workflow_handle(workflow_id)
    description = await describe(handle, client.namespace)
    if description.status is not WorkflowExecutionStatus.RUNNING:
        state = description.status.name.lower() if description.status else "closed"
        raise UserError(f"{printable(workflow_id)} is not running ({state}); nothing to cancel")
    # A Temporal cancel for every type: a rollout cancels what it started, waits for it to
    # stop and ends CANCELED; its status query keeps the table.
    await handle.cancel()
    out.write(
        f"cancel requested for {workflow_id}; it stops within seconds — "
        f"{PROG} watch {workflow_id}\n"
    )
    return EXIT_OK


async def nodes_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    nc = await connect.nats(args)
    try:
        reports, note = await fleet.fleet_reports(client, nc, args.node, _timeout(args.timeout))
    finally:
        await nc.close()
    if not reports:
        raise UserError(
            "no nodes: none announced in the node registry"
            + (f" ({note})" if note else "")
            + ", none named with --node, none in recent installs"
        )
    in_flight = await fleet.installs_in_flight(client)
    for report in reports:
        report.in_flight = in_flight.get(report.node_id, [])
    if args.json:
        tables.print_json(out, [report.as_json() for report in reports])
    else:
        tables.console(out).print(tables.nodes_table(reports))
    return EXIT_OK


async def backends_command(
    client: Client, args: argparse.Namespace, entries: list[GalleryEntry] | None, out: TextIO
) -> int:
    nc = await connect.nats(args)
    try:
        reports, note = await fleet.fleet_reports(client, nc, args.node, _timeout(args.timeout))
    finally:
        await nc.close()
    if entries is None:
        sources = fleet.announced_galleries(reports)
        if not sources:
            raise UserError(
                "no gallery to list: no node announces one"
                + (f" ({note})" if note else "")
                + "; name one with --gallery"
            )
        entries = [entry for source in sources for entry in fleet.read_gallery(source)]
    rows = fleet.backend_rows(entries, reports)
    if args.json:
        tables.print_json(out, [row.as_json() for row in rows])
    else:
        tables.console(out).print(tables.backends_table(rows))
    return EXIT_OK


def _timeout(value: float) -> float:
    if not 0 < value <= 60:
        raise UserError("--timeout must be between 0 and 60 seconds")
    return value


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; every outcome is an exit code and at most one line on stderr."""
    args = build_parser().parse_args(argv)
    # Library warnings (a NATS reconnect, an SDK retry) would break the one-line promise;
    # --debug shows them, otherwise the error line says what matters.
    if args.debug:
        logging.basicConfig(level=logging.INFO)
    else:
        logging.getLogger().addHandler(logging.NullHandler())
    session = Session()
    try:
        return asyncio.run(run(args, session, out or sys.stdout))
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.write("\n" + interrupted_message(session) + "\n")
        return EXIT_INTERRUPTED
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {err}\n")
        return EXIT_USAGE
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(
            f"error: unexpected {type(err).__name__}: {one_line(str(err), 200)} "
            "(run with --debug for the traceback)\n"
        )
        return EXIT_FAILED


def console() -> None:
    """The ``backendctl`` command: :func:`main`, then leave at once (:func:`exit_now`)."""
    exit_now(main())
