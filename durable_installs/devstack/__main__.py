"""``backend-devstack``: run the embedded stack (``make run``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from durable_installs.devstack.stack import StackConfig, run
from durable_installs.invoked import exit_now, invoked_as
from durable_installs.protocol import nats_auth
from durable_installs.servers import MissingBinary, PortInUse


def build_parser() -> argparse.ArgumentParser:
    """The stack's command line (also the source of its documentation page)."""
    defaults = StackConfig()
    parser = argparse.ArgumentParser(
        prog=invoked_as("durable_installs.devstack"),
        description=(
            "Run a Temporal dev server with its web UI, a nats-server, node agents with a demo "
            "gallery, and the worker, then start a sample install. Ctrl-C stops everything."
        ),
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=defaults.state_dir,
        help="Temporal history (SQLite), node backends and logs; reused by the next run "
        "(default %(default)s)",
    )
    parser.add_argument("--temporal-port", type=int, default=defaults.temporal_port)
    parser.add_argument("--ui-port", type=int, default=defaults.ui_port)
    parser.add_argument("--nats-port", type=int, default=defaults.nats_port)
    parser.add_argument(
        "--artifact-port",
        type=int,
        default=defaults.artifact_port,
        help="HTTP port serving the demo gallery's slow artifact (default %(default)s)",
    )
    parser.add_argument(
        "--registry-port",
        type=int,
        default=defaults.registry_port,
        help="loopback port of the demo OCI registry, if installed (default %(default)s)",
    )
    parser.add_argument(
        "--backend-port-base",
        type=int,
        default=defaults.backend_port_base,
        help="first backend process port; each node gets 20 (default %(default)s)",
    )
    parser.add_argument(
        "--artifact-rate",
        type=int,
        default=defaults.artifact_rate,
        help="bytes per second for the slow demo backend (default %(default)s)",
    )
    parser.add_argument("--nodes", type=int, default=defaults.nodes, help="node agents to run")
    parser.add_argument("--task-queue", default=defaults.task_queue)
    parser.add_argument("--no-sample", action="store_true", help="do not start the sample install")
    parser.add_argument(
        "--no-nats-auth",
        action="store_true",
        help="run NATS open to anyone on loopback; by default every node and the worker get "
        "their own user with per-subject permissions (credentials in STATE_DIR/nats/)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> StackConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2 (the printed commands use node-2)")
    return StackConfig(
        state_dir=args.state_dir,
        temporal_port=args.temporal_port,
        ui_port=args.ui_port,
        nats_port=args.nats_port,
        artifact_port=args.artifact_port,
        registry_port=args.registry_port,
        backend_port_base=args.backend_port_base,
        nodes=args.nodes,
        task_queue=args.task_queue,
        sample=not args.no_sample,
        artifact_rate=args.artifact_rate,
        nats_auth=not args.no_nats_auth,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        return run(config)
    except (PortInUse, MissingBinary, nats_auth.MissingExtra) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def console() -> None:
    """The ``backend-devstack`` command: :func:`main`, then leave at once."""
    exit_now(main())


if __name__ == "__main__":
    console()
