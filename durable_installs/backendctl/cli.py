"""The command line: parse, run, and turn every error into one line and an exit code.

The commands live in modules named by what they act on (``installs``, ``rollouts``, ``nodes``,
``backends``, ``lifecycle``), each setting one :class:`~backendctl.command.Command`; this module
assembles the parser and runs whichever was chosen, one way.

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
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from temporalio.service import RPCError

from durable_installs.backendctl import (
    backends,
    connect,
    installs,
    lifecycle,
    loads,
    nodes,
    rollouts,
)
from durable_installs.backendctl.command import Command, Context, Finished, Session
from durable_installs.backendctl.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UserError,
    one_line,
)
from durable_installs.backendctl.render import PROG
from durable_installs.invoked import exit_now
from durable_installs.protocol.connection import NatsOptions

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

COMMANDS = (
    installs.add_watch,
    installs.add_install,
    loads.add_load,
    installs.add_list,
    nodes.add_nodes,
    backends.add_backends,
    installs.add_cancel,
    rollouts.add_rollout,
    lifecycle.add_upgrade,
    lifecycle.add_delete,
    lifecycle.add_drift,
    lifecycle.add_drift_schedule,
)
"""Every subcommand, in the order ``--help`` lists them; each sets its one :class:`Command`."""


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
    for add in COMMANDS:
        add(commands)
    return parser


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
    """The command's check (before connecting anywhere), then its handler, connected."""
    command: Command[Any] = args.subcommand
    checked = command.check(args, out)
    if isinstance(checked, Finished):
        return checked.code
    client = await connect.temporal(args)
    live = out.isatty() and not args.no_live
    ctx = Context(
        args=args,
        client=client,
        checked=checked,
        out=out,
        err=sys.stderr,
        live=live,
        session=session,
    )
    try:
        return await command.handler(ctx)
    except RPCError as err:
        mapped = connect.unavailable(err, connect.temporal_address(args))
        if mapped is None:
            raise
        raise mapped from err


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
