"""Who may use which NATS subject: one user per node, one for the orchestrator, nobody else.

An open NATS bus gives root on every node: whoever can publish ``nodes.<id>.backend.install``
can make the node download and run any archive. This module turns the subjects of the install
protocol (:mod:`protocol.subjects`) into a ``nats-server`` configuration where

- each node's user may only receive its own ``nodes.<id>.>`` subjects, publish its own
  progress, answer the requests it received (``allow_responses``) and talk to itself on
  ``nodes.<id>.agent.>`` (its own request inbox lives there, see :data:`node_inbox_prefix`);
- the orchestrator's user (the Temporal worker) may send the requests of the protocol and read
  the replies and progress, but never ``nodes.<id>.stop`` and never forge progress;
- there is no anonymous user.

Passwords are random and generated here, stored in the server configuration only as bcrypt
hashes, and handed to each process as a ``NATS_USER``/``NATS_PASSWORD`` env file (mode 0600).

Operators write a configuration for their fleet with::

    backend-nats-auth --out /etc/nats/install --node gpu-1 --node gpu-2 \\
        --tls-cert server.pem --tls-key server.key

and start ``nats-server -c /etc/nats/install/nats-server.conf``; each node agent gets
``node-<id>.env`` and the worker ``orchestrator.env``. Hashing needs the ``bcrypt`` package
(extra ``nats-auth``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_installs.protocol.announce import NODE_REGISTRY_BUCKET
from durable_installs.protocol.subjects import check_token

ORCHESTRATOR_USER = "orchestrator"
CONFIG_FILE = "nats-server.conf"
ORCHESTRATOR_ENV_FILE = "orchestrator.env"
BCRYPT_COST = 11
"""The cost ``nats server passwd`` uses: each connect costs the server a few milliseconds."""
MAX_NODES = 10_000
"""Bound on one configuration; a larger fleet wants decentralised auth (JWT accounts)."""


def node_inbox_prefix(node_id: str) -> str:
    """Where a node agent's own request replies arrive, inside the subjects it may use.

    The default ``_INBOX`` prefix would need ``subscribe _INBOX.>``, which lets a node read
    every reply meant for the orchestrator, other nodes' included.
    """
    return f"nodes.{check_token('node_id', node_id)}.agent.inbox"


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish and subscribe to; deny wins over allow."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    allow_responses: bool = False

    def to_config(self) -> dict[str, Any]:
        publish: dict[str, Any] = {"allow": list(self.publish)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        config: dict[str, Any] = {"publish": publish, "subscribe": {"allow": list(self.subscribe)}}
        if self.allow_responses:
            config["allow_responses"] = True
        return config


REGISTRY_STREAM = f"KV_{NODE_REGISTRY_BUCKET}"
"""The JetStream stream behind the node registry bucket."""


def node_permissions(node_id: str) -> Permissions:
    """A node agent: its own subjects only; replies go out through ``allow_responses``.

    In the node registry it may look the bucket up and write (put, delete) only keys under
    its own node id: it cannot announce as, or remove, another node, nor create the bucket.
    """
    node = check_token("node_id", node_id)
    prefix = f"nodes.{node}"
    return Permissions(
        publish=(
            f"{prefix}.backend.install.*.progress",
            f"{prefix}.models.running",  # start-up self-check: a request to itself
            f"{prefix}.agent.>",
            f"$KV.{NODE_REGISTRY_BUCKET}.{node}.>",
            f"$JS.API.STREAM.INFO.{REGISTRY_STREAM}",
        ),
        subscribe=(f"{prefix}.>",),
        allow_responses=True,
    )


REGISTRY_READ = (
    f"$JS.API.STREAM.INFO.{REGISTRY_STREAM}",
    f"$JS.API.STREAM.CREATE.{REGISTRY_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{REGISTRY_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{REGISTRY_STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{REGISTRY_STREAM}.>",
    f"$JS.API.CONSUMER.INFO.{REGISTRY_STREAM}.>",
    f"$JS.API.DIRECT.GET.{REGISTRY_STREAM}.>",
    f"$JS.API.STREAM.MSG.GET.{REGISTRY_STREAM}",
    f"$JS.FC.{REGISTRY_STREAM}.>",
)
"""What reading the registry (an ordered consumer over the bucket) and creating it takes."""

ORCHESTRATOR_PERMISSIONS = Permissions(
    publish=(
        "nodes.*.backend.>",
        "nodes.*.models.running",
        "nodes.*.model.>",
        "nodes.*.files.space",
        *REGISTRY_READ,
    ),
    publish_deny=("nodes.*.backend.install.*.progress", f"$KV.{NODE_REGISTRY_BUCKET}.>"),
    subscribe=("_INBOX.>", "nodes.*.backend.install.*.progress"),
)
"""The worker (install, probe, cancel, status, list, free-space requests, reading the registry):
never ``nodes.*.stop``, never an entry of the registry (only nodes announce)."""


@dataclass(frozen=True)
class User:
    """One NATS user: its name, its clear password (never written to the server config)."""

    name: str
    password: str
    permissions: Permissions

    def env(self) -> str:
        """``NATS_USER``/``NATS_PASSWORD`` lines for ``export $(cat file)`` or ``env``."""
        return f"NATS_USER={self.name}\nNATS_PASSWORD={self.password}\n"


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key; ``ca`` as well turns on mutual TLS (client certificates)."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class Fleet:
    """The users of one deployment: the orchestrator and one per node."""

    orchestrator: User
    nodes: dict[str, User] = field(default_factory=dict)

    def users(self) -> list[User]:
        return [self.orchestrator, *self.nodes.values()]


def new_password() -> str:
    """32 random bytes, URL-safe: no character a shell or an env file would mangle."""
    return secrets.token_urlsafe(32)


def make_fleet(node_ids: Iterable[str]) -> Fleet:
    """Fresh random credentials for the orchestrator and each node (ids checked, unique)."""
    ids = list(node_ids)
    if len(ids) > MAX_NODES:
        raise ValueError(f"node ids: {len(ids)} given; the limit is {MAX_NODES}")
    nodes: dict[str, User] = {}
    for node_id in ids:
        check_token("node_id", node_id)
        if node_id == ORCHESTRATOR_USER:
            raise ValueError(f"node_id {node_id!r} is the orchestrator's user name; rename it")
        if node_id in nodes:
            raise ValueError(f"node_id {node_id!r} is given twice")
        nodes[node_id] = User(node_id, new_password(), node_permissions(node_id))
    orchestrator = User(ORCHESTRATOR_USER, new_password(), ORCHESTRATOR_PERMISSIONS)
    return Fleet(orchestrator, nodes)


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def bcrypt_hash(password: str, cost: int = BCRYPT_COST) -> str:
    """The ``$2a$`` bcrypt hash nats-server recognises in place of a clear password."""
    try:
        import bcrypt  # optional dependency: only who writes configurations needs it
    except ModuleNotFoundError:
        raise MissingExtra(
            "writing NATS users needs bcrypt: it comes with the nats-auth extra "
            "(pip install 'durable-backend-installs[nats-auth]'; the devstack extra has it too)"
        ) from None

    salt = bcrypt.gensalt(rounds=cost, prefix=b"2a")
    return bcrypt.hashpw(password.encode(), salt).decode()


def server_config(
    fleet: Fleet,
    tls: TlsFiles | None = None,
    listen: str | None = None,
    cost: int = BCRYPT_COST,
) -> str:
    """The ``nats-server`` configuration (JSON, which its parser reads) for ``fleet``.

    JSON keeps quoting exact whatever a hash or path contains; there is no ``no_auth_user``,
    so a client without credentials is refused.
    """
    config: dict[str, Any] = {}
    if listen:
        config["listen"] = listen
    config["authorization"] = {
        "users": [
            {
                "user": user.name,
                "password": bcrypt_hash(user.password, cost),
                "permissions": user.permissions.to_config(),
            }
            for user in fleet.users()
        ]
    }
    if tls is not None:
        block: dict[str, Any] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
        if tls.ca is not None:
            block |= {"ca_file": str(tls.ca), "verify": True}
        config["tls"] = block
    return json.dumps(config, indent=2) + "\n"


def node_env_file(node_id: str) -> str:
    """File name of a node's credentials: ``node-<id>.env``."""
    return f"node-{check_token('node_id', node_id)}.env"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, also when the file existed before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def write_auth_dir(
    directory: Path,
    node_ids: Iterable[str],
    tls: TlsFiles | None = None,
    listen: str | None = None,
    cost: int = BCRYPT_COST,
) -> Fleet:
    """Write ``nats-server.conf``, ``orchestrator.env`` and ``node-<id>.env`` (all 0600).

    Every call makes new passwords; processes started with the old files must restart.
    """
    fleet = make_fleet(node_ids)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    write_private(directory / CONFIG_FILE, server_config(fleet, tls, listen, cost))
    write_private(directory / ORCHESTRATOR_ENV_FILE, fleet.orchestrator.env())
    for node_id, user in fleet.nodes.items():
        write_private(directory / node_env_file(node_id), user.env())
    return fleet


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file written by :func:`write_auth_dir`."""
    pairs = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = value.strip()
    return pairs


def build_parser() -> argparse.ArgumentParser:
    """``backend-nats-auth``'s command line (also the source of its documentation page)."""
    parser = argparse.ArgumentParser(
        description="Write a nats-server configuration with one user per node and one for the "
        "orchestrator (per-subject permissions, bcrypt-hashed random passwords), and an env "
        "file with NATS_USER/NATS_PASSWORD for each. Every run makes new passwords.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument(
        "--node", action="append", default=[], required=True, help="a node id (repeat)"
    )
    parser.add_argument("--listen", help="HOST:PORT for the server's listen line")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, help="CA of client certificates: mutual TLS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    tls = None
    if args.tls_cert is not None:
        tls = TlsFiles(args.tls_cert.resolve(), args.tls_key.resolve(), args.tls_ca)
    try:
        write_auth_dir(args.out, args.node, tls, args.listen)
    except (ValueError, OSError, MissingExtra) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / CONFIG_FILE}, {ORCHESTRATOR_ENV_FILE} and one node-<id>.env per node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
