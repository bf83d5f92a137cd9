"""``python -m backendctl``: start installs and watch them in a terminal.

``watch <workflow-id>`` follows any install; ``install`` starts one (or joins the running
install of the same slot) and watches it. Connection settings are the worker's: Temporal env
config (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ...) or flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from temporalio.common import WorkflowIDConflictPolicy

from backendctl import fleet_commands
from backendctl.watch import watch
from contracts.install import InstallBackendInput, install_workflow_id
from contracts.names import DEFAULT_TASK_QUEUE
from worker_main import connect_temporal
from workflows.install_backend import InstallBackendWorkflow


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backendctl", description=__doc__)
    parser.add_argument("--address", help="Temporal frontend host:port (env TEMPORAL_ADDRESS)")
    parser.add_argument("--namespace", help="Temporal namespace (env TEMPORAL_NAMESPACE)")
    parser.add_argument(
        "--no-live", action="store_true", help="print a line per change instead of redrawing"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    watch_cmd = commands.add_parser("watch", help="follow an install until it ends")
    watch_cmd.add_argument("workflow_id")
    install = commands.add_parser("install", help="start an install (or join it) and watch it")
    install.add_argument("--node-id", required=True)
    install.add_argument("--backend", required=True)
    install.add_argument("--model-id", default="")
    install.add_argument("--replica-index", type=int, default=0)
    install.add_argument("--task-queue", default=DEFAULT_TASK_QUEUE)
    install.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="any other InstallBackendWorkflow input field, e.g. install_timeout_seconds=60",
    )
    fleet_commands.register(commands)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    client = await connect_temporal(args.address, args.namespace)
    live = sys.stdout.isatty() and not args.no_live
    if getattr(args, "run_command", None):  # delete, drift, drift-schedule
        return await fleet_commands.run(args.run_command, client, args)
    if args.command == "watch":
        return await watch(client, args.workflow_id, sys.stdout, live)
    options = {}
    for option in args.option:
        field, _, value = option.partition("=")
        options[field] = json.loads(value) if value else ""
    input = InstallBackendInput.model_validate(
        {
            **options,
            "node_id": args.node_id,
            "backend": args.backend,
            "model_id": args.model_id,
            "replica_index": args.replica_index,
        }
    )
    problems = input.problems()
    if problems:
        for field, reason in problems:
            print(f"error: {field}: {reason}", file=sys.stderr)
        return 2
    workflow_id = install_workflow_id(
        input.node_id, input.backend, input.model_id, input.replica_index
    )
    await client.start_workflow(
        InstallBackendWorkflow.run,
        input,
        id=workflow_id,
        task_queue=args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    print(f"install {workflow_id}", flush=True)
    return await watch(client, workflow_id, sys.stdout, live)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: the Temporal client's native threads can abort it
    # ("PyGILState_Release ... must be current") about once in ten exits, long after our work
    # is done. Nothing is left to clean up at this point.
    os._exit(code)
