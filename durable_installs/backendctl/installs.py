"""``install``, ``watch``, ``list`` and ``cancel``: one install, and any install or rollout.

``install`` starts (or joins) the install of one slot and watches it; ``watch``, ``list`` and
``cancel`` take an install or a rollout alike, by workflow id or by search attributes.
"""

from __future__ import annotations

import argparse
from typing import TextIO

import pydantic
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy

from durable_installs.backendctl import listing, tables
from durable_installs.backendctl.command import Context, Finished, Subcommands, set_command
from durable_installs.backendctl.errors import EXIT_OK, UserError, printable
from durable_installs.backendctl.options import (
    add_option_flag,
    add_task_queue,
    parse_options,
    validation_message,
)
from durable_installs.backendctl.render import PROG
from durable_installs.backendctl.watch import describe, started, watch
from durable_installs.contracts.install import (
    InstallBackendInput,
    InstallPhase,
    install_workflow_id,
)
from durable_installs.contracts.summaries import install_details, install_summary
from workflows.install_backend import InstallBackendWorkflow

INSTALL_FLAGS = {
    "node_id": "--node-id",
    "backend": "--backend",
    "model_id": "--model-id",
    "replica_index": "--replica-index",
}
"""Install input fields that have a flag of their own, so ``--option`` may not set them."""


def add_watch(commands: Subcommands) -> None:
    """``watch``: an install or a rollout, whichever the id names."""
    watch_cmd = commands.add_parser(
        "watch", help="follow an install or rollout until it ends (Ctrl-C stops watching only)"
    )
    watch_cmd.add_argument("workflow_id", help="e.g. install/node-1/cpu-large/demo/0")
    set_command(watch_cmd, run_watch)


async def run_watch(ctx: Context[None]) -> int:
    ctx.session.watching = ctx.args.workflow_id
    return await watch(ctx.client, ctx.args.workflow_id, ctx.out, ctx.live)


def add_install(commands: Subcommands) -> None:
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
    set_command(install, run_install, check_install)


def check_install(args: argparse.Namespace, out: TextIO) -> InstallBackendInput:
    """The input, built before connecting: a bad flag or option costs no connection."""
    return build_install_input(args)


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


async def run_install(ctx: Context[InstallBackendInput]) -> int:
    input = ctx.checked
    workflow_id = install_workflow_id(
        input.node_id, input.backend, input.model_id, input.replica_index
    )
    ctx.session.starting = workflow_id
    await ctx.client.start_workflow(
        InstallBackendWorkflow.run,
        input,
        id=workflow_id,
        task_queue=ctx.args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=install_summary(
            input.backend, input.node_id, input.model_id, input.replica_index
        ),
        static_details=install_details(
            input.backend, input.node_id, input.model_id, input.replica_index, "backendctl"
        ),
    )
    return await started(ctx, "install", workflow_id)


def add_list(commands: Subcommands) -> None:
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
    set_command(list_cmd, run_list, check_list)


def check_list(args: argparse.Namespace, out: TextIO) -> listing.ListFilters | Finished:
    """The filters; with ``--print-query`` the query printed and nothing to connect to."""
    filters = list_filters(args)
    if args.print_query:
        out.write(listing.visibility_query(filters) + "\n")
        return Finished(EXIT_OK)
    return filters


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


async def run_list(ctx: Context[listing.ListFilters]) -> int:
    rows = await listing.list_workflows(ctx.client, ctx.checked, ctx.args.limit)
    if ctx.args.json:
        tables.print_json(ctx.out, [row.as_json() for row in rows])
    else:
        tables.console(ctx.out).print(tables.workflows_table(rows))
    return EXIT_OK


def add_cancel(commands: Subcommands) -> None:
    cancel = commands.add_parser("cancel", help="cancel an install or a rollout")
    cancel.add_argument("workflow_id")
    set_command(cancel, run_cancel)


async def run_cancel(ctx: Context[None]) -> int:
    workflow_id = ctx.args.workflow_id
    handle = ctx.client.get_workflow_handle(workflow_id)
    description = await describe(handle, ctx.client.namespace)
    if description.status is not WorkflowExecutionStatus.RUNNING:
        state = description.status.name.lower() if description.status else "closed"
        raise UserError(f"{printable(workflow_id)} is not running ({state}); nothing to cancel")
    # A Temporal cancel for every type: a rollout cancels what it started, waits for it to
    # stop and ends CANCELED; its status query keeps the table.
    await handle.cancel()
    ctx.out.write(
        f"cancel requested for {workflow_id}; it stops within seconds — "
        f"{PROG} watch {workflow_id}\n"
    )
    return EXIT_OK
