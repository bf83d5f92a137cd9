"""The identifiers of an install — workflow id, op id, node, slot, backend — bound once.

Logs and spans need the same few identifiers on every line and span. Binding them in a
context variable where a request starts (the install or probe activity, the node agent's
handler) lets code further down — the pipeline, the supervisor, a flight's task created
later, which inherits the context — carry them without threading arguments through.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

FIELDS = ("workflow_id", "op_id", "node", "slot", "backend")
"""Field names, in the order logs show them."""

ATTRIBUTE_PREFIX = "install."
"""Span attributes are the fields under this prefix: ``install.node``, ``install.slot``, …"""

_EMPTY: Mapping[str, str] = MappingProxyType({})
_current: ContextVar[Mapping[str, str]] = ContextVar("install_fields", default=_EMPTY)


@contextmanager
def bind_fields(**fields: str) -> Iterator[None]:
    """Add the non-empty ``fields`` to the current context for the block."""
    merged = {**_current.get(), **{k: v for k, v in fields.items() if v}}
    token = _current.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _current.reset(token)


def current_fields() -> Mapping[str, str]:
    """The fields bound in the current context."""
    return _current.get()


def span_attributes(fields: Mapping[str, str]) -> dict[str, str]:
    """``fields`` as span attributes."""
    return {ATTRIBUTE_PREFIX + key: value for key, value in fields.items()}
