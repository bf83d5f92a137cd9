"""``load``: a model into one slot (the whole cold path), followed phase by phase.

``load`` starts (or joins) the slot's ``LoadModelWorkflow``: the backend installed, each file
staged to the node, ``LoadModel`` on the backend. ``watch`` follows it like an install: the
phase, each file's state and, while a file is being sent, the bytes the node has (from the
staging activity's heartbeat, which reaches the server every second).
"""

from __future__ import annotations

import argparse
from typing import TextIO

import pydantic
from temporalio.common import WorkflowIDConflictPolicy

from durable_installs.backendctl.command import Context, Subcommands, set_command
from durable_installs.backendctl.errors import UserError, printable
from durable_installs.backendctl.installs import INSTALL_FLAGS
from durable_installs.backendctl.options import (
    add_option_flag,
    add_task_queue,
    parse_options,
    validation_message,
)
from durable_installs.backendctl.watch import started
from durable_installs.contracts.load import LoadModelInput, load_workflow_id
from workflows.load_model import LoadModelWorkflow

LOAD_FLAGS = {**INSTALL_FLAGS, "files": "--file"}
"""Load input fields with an argument of their own, so ``--option`` may not set them."""


def add_load(commands: Subcommands) -> None:
    load = commands.add_parser(
        "load",
        help="install the backend, stage the model's files to the node and load it; watch it",
    )
    load.add_argument("--node-id", required=True, help="node to load on, e.g. node-1")
    load.add_argument("--backend", required=True, help="gallery name, alias or meta name")
    load.add_argument("--model-id", required=True, help="the slot's model id, e.g. qwen3")
    load.add_argument(
        "--file",
        nargs=3,
        action="append",
        default=[],
        metavar=("PATH", "URI", "SHA256"),
        required=True,
        help="a model file: its path under the node's models directory, where the worker "
        "reads it (http(s):// or file://, under a prefix the worker trusts) and its sha256; "
        "repeat for every file, the model first",
    )
    load.add_argument(
        "--replica-index", type=int, default=0, help="slot index on the node (default 0)"
    )
    add_task_queue(load)
    add_option_flag(
        load,
        "any other input field; strings plain (files_url=http://gpu-1:50050), numbers and "
        'objects as JSON (load_options={"context_size":8192}); repeatable',
    )
    load.add_argument("--no-watch", action="store_true", help="start it and exit")
    set_command(load, run_load, check_load)


def check_load(args: argparse.Namespace, out: TextIO) -> LoadModelInput:
    """The input, built before connecting: a bad flag, file or option costs no connection."""
    fields = parse_options(args.option, LoadModelInput, LOAD_FLAGS)
    files = [{"path": path, "uri": uri, "sha256": sha} for path, uri, sha in args.file]
    try:
        input = LoadModelInput.model_validate(
            {
                **fields,
                "node_id": args.node_id,
                "backend": args.backend,
                "model_id": args.model_id,
                "replica_index": args.replica_index,
                "files": files,
            }
        )
    except pydantic.ValidationError as err:
        raise UserError(f"invalid load input: {validation_message(err)}") from err
    problems = input.problems()
    if problems:
        shown = "; ".join(f"{field}: {reason}" for field, reason in problems)
        raise UserError("invalid load input: " + printable(shown.replace("files[", "--file [")))
    return input


async def run_load(ctx: Context[LoadModelInput]) -> int:
    input = ctx.checked
    workflow_id = load_workflow_id(
        input.node_id, input.backend, input.model_id, input.replica_index
    )
    ctx.session.starting = workflow_id
    summary = f"load {input.model_id} into {input.slot} on {input.node_id}"
    await ctx.client.start_workflow(
        LoadModelWorkflow.run,
        input,
        id=workflow_id,
        task_queue=ctx.args.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=summary,
        static_details=f"{summary}, started by backendctl",
    )
    return await started(ctx, "load", workflow_id)
