"""NATS contexts: the ``nats`` CLI's own format for where a server is and how to log in.

A context is one JSON file (``url``, ``user``, ``password``, ``creds``, ``token``, ``ca``,
``cert``, ``key``, ``description`` and more the CLI knows), kept by name under
``$XDG_CONFIG_HOME/nats/context/<name>.json`` and chosen with ``NATS_CONTEXT``. Using the
ecosystem's format instead of one of our own means an operator's existing contexts work with
every command here, and the dev stack's can be copied into the ``nats`` CLI's directory.

The dev stack writes its context to :data:`DEV_CONTEXT`; a command run from the checkout with
no NATS settings of its own finds it there, so ``make run``'s commands need no ``env $(...)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

DEV_STATE = Path(".state")
"""The dev stack's state directory, relative to the checkout it runs in."""

DEV_CONTEXT = DEV_STATE / "nats" / "context.json"
"""Where the dev stack writes the worker's (orchestrator's) NATS context."""

MAX_CONTEXT_BYTES = 64 * 1024
"""A context is a few hundred bytes; anything much larger is not one."""


class ContextError(ValueError):
    """A context that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class NatsContext:
    """The fields of a ``nats`` CLI context this project uses."""

    url: str = ""
    user: str = ""
    password: str = ""
    creds: str = ""
    token: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    description: str = ""


def context_path(name_or_path: str) -> Path:
    """A context named like the CLI's (``prod``) or a path to its file (``a/b.json``)."""
    if name_or_path.endswith(".json") or os.sep in name_or_path:
        return Path(name_or_path).expanduser()
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return home / "nats" / "context" / f"{name_or_path}.json"


def read_context(path: Path) -> NatsContext:
    """The context in ``path``; unknown fields are the CLI's business and are skipped."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ContextError(f"NATS context {path}: {err.strerror or err}") from err
    if len(raw) > MAX_CONTEXT_BYTES:
        raise ContextError(f"NATS context {path}: {len(raw)} bytes, not a context")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ContextError(f"NATS context {path} is not JSON ({err.msg})") from err
    if not isinstance(data, dict):
        raise ContextError(f"NATS context {path} is not a JSON object")
    fields = {}
    for name in NatsContext.__dataclass_fields__:
        value = data.get(name, "")
        if not isinstance(value, str):
            raise ContextError(f"NATS context {path}: {name} must be a string")
        fields[name] = value
    return NatsContext(**fields)


def write_context(path: Path, context: NatsContext) -> None:
    """Write ``context`` readable by its owner only (it may hold a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {name: value for name, value in asdict(context).items() if value}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(body, out, indent=2)
        out.write("\n")
