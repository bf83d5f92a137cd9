"""The bounds of every workflow input field, and the checks that name what is wrong.

Why every field has finite bounds: input values end up in places that fail late and badly when
a value is absurd. Durations become timers and timeouts (``timedelta`` overflows, NaN cannot
become one at all: the workflow task fails and is retried forever); strings become search
attributes (the server's default limit is 2 KiB per value; above it the server terminates the
workflow), NATS subjects and messages (1 MiB default payload) and copies in every activity's
input in the history. So each field is checked before the workflow writes or sends anything,
and an out-of-bounds value fails the workflow at once with ``InvalidInput`` naming the field.

Reasons never repeat the value itself: it may be huge, and it is the caller's anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

DAY = 86_400.0

MAX_DEADLINE_SECONDS = 30 * DAY
"""Longest overall bound of one install. Longer waits belong to a new install."""

MAX_INTERVAL_SECONDS = DAY
"""Longest single wait: a probe interval, a back-off, a heartbeat timeout."""

MIN_DURATION_SECONDS = 0.1
"""Shortest wait: anything shorter only spins the workflow and the node."""

MAX_FAST_PATH_SECONDS = 5.0
"""Longest bound of the fast path's request: it holds the install's first workflow task
open, and the SDK's default workflow task timeout is 10 s."""

MAX_PROBE_LISTEN_SECONDS = 300.0
"""A probe listens this long at most for progress events before it answers."""

MAX_FAILED_ATTEMPTS = 1_000
"""Most transient failures an install may retry."""

MAX_NAME_LENGTH = 256
"""Characters of a backend, model id, name, alias or gallery name. At 4 UTF-8 bytes per
character that is 1 KiB, half the server's per-value search attribute limit."""

MAX_URI_LENGTH = 4_096
"""Characters of an external install URI or a gallery URL."""

MAX_SEARCH_ATTRIBUTE_BYTES = 1_024
"""UTF-8 bytes of any value the workflow writes as a search attribute: half the server's
default ``limit.searchAttributeValueSize`` of 2 KiB."""

MAX_GALLERIES = 16
MAX_GALLERY_MIRRORS = 16
MAX_VERIFICATION_LENGTH = 1_024
MAX_GALLERIES_JSON_BYTES = 64 * 1_024
"""The encoded gallery list travels in every install request and probe; keep it small."""

MAX_WORKFLOW_ID_LENGTH = 1_000
"""The server's default ``limit.maxIDLength``: a derived install workflow id must fit."""

MAX_ROLLOUT_SLOTS = 10_000
"""Most slots one rollout tracks, across its targets and ``add_targets`` updates."""

MAX_ROLLOUT_RUNS = 1_000_000
"""Most continue-as-new runs a rollout carries over (a sanity bound on a counter)."""


def number_problem(value: float, low: float, high: float, unit: str = "") -> str | None:
    """Why ``value`` is not a finite number in ``[low, high]``, or None when it is."""
    bounds = f"between {_readable(low)} and {_readable(high)}{f' {unit}' if unit else ''}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number {bounds}"
    if not low <= value <= high:
        return f"must be {bounds}"
    return None


def _readable(number: float) -> str:
    """``2,592,000`` rather than ``2.592e+06``; fractions as they are (``0.1``)."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:g}"


def text_problem(value: str, limit: int, *, required: bool = False) -> str | None:
    """Why ``value`` is not a printable string of at most ``limit`` characters, or None."""
    if required and not value.strip():
        return "it is empty"
    if len(value) > limit:
        return f"it is {len(value)} characters long; the limit is {limit}"
    if not value.isprintable():
        return "it contains control characters"
    return None


def utf8_problem(value: str, limit: int) -> str | None:
    """Why ``value`` does not fit in ``limit`` UTF-8 bytes, or None."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        return f"it is {size} bytes long in UTF-8; the limit is {limit}"
    return None


# --- the bounds as JSON Schema, for the documentation -------------------------------------
#
# Each workflow input model checks its bounds in ``problems()`` (so a bad value fails as
# ``InvalidInput`` naming the field, never as a decoding error) and describes the same bounds
# in its JSON Schema with the keywords below, from which the reference is generated.
# tests/test_docs.py checks every documented bound against ``problems()``.

Keywords = dict[str, Any]


def between(low: float, high: float) -> Keywords:
    """A number in ``[low, high]``."""
    return {"minimum": low, "maximum": high}


def off_or_between(low: float, high: float) -> Keywords:
    """``0`` (off), or a number in ``[low, high]``."""
    return {"oneOf": [{"const": 0}, between(low, high)]}


def text_bounds(limit: int, *, required: bool = False, max_bytes: int = 0) -> Keywords:
    """A printable string of at most ``limit`` characters (and ``max_bytes`` of UTF-8)."""
    keywords: Keywords = {"maxLength": limit}
    if required:
        keywords["minLength"] = 1
    if max_bytes:
        keywords["x-max-bytes"] = max_bytes
    return keywords


def items_bounds(limit: int) -> Keywords:
    """A list of at most ``limit`` items."""
    return {"maxItems": limit}


def with_bounds(bounds: Callable[[], Mapping[str, Keywords]]) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` that adds each field's bound keywords to its property.

    ``bounds`` is called when the schema is built, so the table may be defined after the model
    (next to the checks that use the same limits)."""

    def add(schema: dict[str, Any]) -> None:
        properties = schema.get("properties", {})
        for name, keywords in bounds().items():
            properties[name].update(keywords)

    return add
