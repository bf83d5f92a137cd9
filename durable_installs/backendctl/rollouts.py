"""``rollout``: install one backend on many slots and watch a live per-slot table.

The targets and options are checked before connecting; ``watch`` and ``cancel`` (in
:mod:`installs`) then take the rollout by its workflow id like an install.
"""

from __future__ import annotations

import argparse
import uuid
from typing import TextIO

import pydantic

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
from durable_installs.contracts.install import InstallBackendInput
from durable_installs.contracts.rollout import FailurePolicy, RolloutInput, RolloutTarget
from durable_installs.contracts.summaries import rollout_details, rollout_summary
from workflows.rollout import RolloutBackendWorkflow


def add_rollout(commands: Subcommands) -> None:
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
    set_command(rollout, run_rollout, check_rollout)


def check_rollout(args: argparse.Namespace, out: TextIO) -> RolloutInput:
    """The input, built before connecting: a bad target or option costs no connection."""
    return build_rollout_input(args)


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


async def run_rollout(ctx: Context[RolloutInput]) -> int:
    input = ctx.checked
    workflow_id = ctx.args.workflow_id or f"rollout/{ctx.args.backend}/{uuid.uuid4().hex[:8]}"
    slots = sum(len(t.replica_indexes or [0]) for t in input.targets)
    ctx.session.starting = workflow_id
    await ctx.client.start_workflow(
        RolloutBackendWorkflow.run,
        input,
        id=workflow_id,
        task_queue=ctx.args.task_queue,
        static_summary=rollout_summary(input.backend, slots),
        static_details=rollout_details(
            input.backend, [t.node_id for t in input.targets], "backendctl"
        ),
    )
    return await started(ctx, "rollout", workflow_id)
