"""``--option FIELD=VALUE``: any other input field, checked before anything is started.

Strings need no JSON quoting (``name=foo`` and ``name='"foo"'`` mean the same); numbers,
booleans and lists are JSON. Every mistake becomes one :class:`UserError` that names the
field and shows a working example, never a decoder's traceback.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from durable_installs.backendctl.errors import UserError, printable
from durable_installs.contracts.names import DEFAULT_TASK_QUEUE

MAX_OPTION_LENGTH = 64 * 1024
"""An option value longer than this is a mistake (a whole file pasted), not an input."""


def add_task_queue(parser: argparse.ArgumentParser) -> None:
    """``--task-queue``: where every command that starts a workflow sends it."""
    parser.add_argument(
        "--task-queue", default=DEFAULT_TASK_QUEUE, help="worker task queue (default %(default)s)"
    )


def add_option_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """``--option FIELD=VALUE``, repeatable; read with :func:`parse_options`."""
    parser.add_argument("--option", action="append", default=[], metavar="FIELD=VALUE", help=help)


def _kind(annotation: Any) -> str:
    """``str``, ``number``, ``integer``, ``boolean`` or ``json`` for an input field's type."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _kind(args[0]) if len(args) == 1 else "json"
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, str)):
        return "string"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is float:
        return "number"
    return "json"


_EXAMPLES = {"string": "foo", "number": "60", "integer": "3", "boolean": "true", "json": "[]"}


def parse_options(
    raw: Iterable[str], model: type[BaseModel], reserved: Mapping[str, str]
) -> dict[str, Any]:
    """Field values from ``FIELD=VALUE`` strings, for ``model``'s fields.

    ``reserved`` maps fields that have their own flag to that flag (``node_id`` →
    ``--node-id``) so the message points there instead.
    """
    fields = {
        name: _kind(info.annotation)
        for name, info in model.model_fields.items()
        if not name.startswith("_")
        and name not in ("resume", "carried_slots")
        and not name.startswith("carried_")
    }
    values: dict[str, Any] = {}
    for option in raw:
        field, sep, text = option.partition("=")
        field = field.strip()
        shown = printable(option[:80])
        if not sep or not field:
            raise UserError(f"--option {shown}: expected FIELD=VALUE, e.g. --option name=foo")
        if field in reserved:
            raise UserError(f"--option {shown}: set {field} with {reserved[field]} instead")
        if field not in fields:
            known = ", ".join(sorted(set(fields) - set(reserved)))
            raise UserError(f"--option {shown}: unknown field {printable(field)!r}; known: {known}")
        if len(text) > MAX_OPTION_LENGTH:
            raise UserError(f"--option {field}: the value is over {MAX_OPTION_LENGTH} characters")
        values[field] = _value(field, fields[field], text)
    return values


def _value(field: str, kind: str, text: str) -> Any:
    if kind == "string":
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        return decoded if isinstance(decoded, str) else text
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = _NOT_JSON
    wrong = (
        decoded is _NOT_JSON
        or (
            kind == "number" and (isinstance(decoded, bool) or not isinstance(decoded, int | float))
        )
        or (kind == "integer" and (isinstance(decoded, bool) or not isinstance(decoded, int)))
        or (kind == "boolean" and not isinstance(decoded, bool))
    )
    if wrong:
        what = {"number": "a number", "integer": "a whole number", "boolean": "true or false"}
        expected = what.get(kind, "JSON")
        raise UserError(
            f"--option {field}={printable(text[:40])}: {field} takes {expected}, "
            f"e.g. --option {field}={_EXAMPLES[kind]}"
        )
    return decoded


_NOT_JSON = object()


def validation_message(err: ValidationError) -> str:
    """One line naming every invalid field, from pydantic's error list."""
    parts = []
    for error in err.errors()[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "input"
        parts.append(f"{where}: {error['msg']}")
    more = len(err.errors()) - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return printable("; ".join(parts))
