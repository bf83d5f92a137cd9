"""Input, result and status of ``InstallBackendWorkflow``.

The input's field names are a public contract: other teams and ``temporal workflow start
--input`` use them. Fields are typed loosely enough that a wrong value reaches
:meth:`InstallBackendInput.problems`, which names the field, instead of failing decoding.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum

from pydantic import ConfigDict

from durable_installs.contracts.activities import (
    LIVENESS_INTERVAL_RANGE,
    InstallProgress,
    ProbeResult,
    liveness_interval_problem,
)
from durable_installs.contracts.limits import (
    MAX_DEADLINE_SECONDS,
    MAX_FAILED_ATTEMPTS,
    MAX_FAST_PATH_SECONDS,
    MAX_GALLERIES,
    MAX_GALLERIES_JSON_BYTES,
    MAX_GALLERY_MIRRORS,
    MAX_INTERVAL_SECONDS,
    MAX_NAME_LENGTH,
    MAX_PROBE_LISTEN_SECONDS,
    MAX_SEARCH_ATTRIBUTE_BYTES,
    MAX_URI_LENGTH,
    MAX_VERIFICATION_LENGTH,
    MAX_WORKFLOW_ID_LENGTH,
    MIN_DURATION_SECONDS,
    Keywords,
    between,
    items_bounds,
    number_problem,
    off_or_between,
    text_bounds,
    text_problem,
    utf8_problem,
    with_bounds,
)
from durable_installs.contracts.model import ContractModel
from durable_installs.protocol.messages import (
    BackendInstallProgressEvent,
    GalleryConfig,
    encode_galleries,
    process_key,
)
from durable_installs.protocol.subjects import MAX_TOKEN_LENGTH, token_problem

MAX_REPLICA_INDEX = 2**31 - 1

MINIMAL_INSTALL_INPUT = {"node_id": "node-1", "backend": "llama-cpp"}
"""The smallest valid input, shown to whoever starts an install without one."""


MAX_PROBLEMS_SHOWN = 10
"""Problems a failure message lists; the rest are counted (a gallery list alone can have
hundreds, and the message travels in the failure, the UI and logs)."""


def describe_problems(problems: list[tuple[str, str]]) -> str:
    """``field: reason; field: reason`` for the first few problems, then how many more."""
    text = "; ".join(f"{field}: {reason}" for field, reason in problems[:MAX_PROBLEMS_SHOWN])
    hidden = len(problems) - MAX_PROBLEMS_SHOWN
    return f"{text}; and {hidden} more" if hidden > 0 else text


def missing_input_message(minimal: Mapping[str, object]) -> str:
    """What a workflow started with no input (or ``null``) fails with: what to pass instead."""
    return (
        "invalid input: the input is missing; pass a JSON object such as "
        f"{json.dumps(minimal)} (temporal workflow start ... --input '<JSON>')"
    )


def install_workflow_id(node_id: str, backend: str, model_id: str, replica_index: int) -> str:
    """The one workflow id for a slot's install: ``install/<node>/<backend>/<model>/<replica>``.

    Every requester (rollouts, other teams' workflows, the CLI) derives the same id, so Temporal
    itself guarantees one running install per slot. Parts are percent-encoded so that
    ``a-b`` + ``c`` and ``a`` + ``b-c`` can never collide; an admin install uses ``-``.
    """
    return slot_workflow_id("install", node_id, backend, model_id, replica_index)


def slot_workflow_id(
    kind: str, node_id: str, backend: str, model_id: str, replica_index: int
) -> str:
    """``<kind>/<node>/<backend>/<model>/<replica>``, each part percent-encoded (``-`` for an
    admin slot's empty model): the one id of a slot's install or load."""
    parts = (node_id, backend, model_id or "-", str(replica_index))
    return f"{kind}/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)


class InstallPhase(StrEnum):
    """Where an install stands; also the ``InstallPhase`` search attribute value."""

    INSTALLING = "installing"
    STILL_INSTALLING = "still_installing"
    PROBING = "probing"
    WAITING = "waiting"
    BACKING_OFF = "backing_off"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class InstallCarryOver(ContractModel):
    """State a continued-as-new run takes over from its predecessor. Not for callers."""

    model_config = ConfigDict(frozen=True)

    op_id: str
    """The op id every run of the install sends."""
    started_at: datetime
    """When the first run started."""
    deadline_at: datetime
    """When the overall deadline passes."""
    attempts: int
    """Install requests sent so far."""
    probes: int
    """Probes run so far."""
    failed_attempts: int
    """Transient failures so far (the ``max_failed_attempts`` budget)."""
    backoff_streak: int
    """Back-offs in a row so far (the next one doubles)."""
    found_running: bool = False
    """A probe found the slot already running."""
    progress: InstallProgress | None = None
    """The newest progress of the op."""
    last_probe: ProbeResult | None = None
    """The last probe's result."""
    last_error: str = ""
    """The last failure's message."""

    def problems(self) -> list[tuple[str, str]]:
        """What would break a resumed run: the op id's routing, and the deadline's arithmetic.

        Written by continue-as-new, so normally valid; but it is part of the input anyone may
        send. A naive datetime or a deadline centuries away would fail every workflow task.
        """
        found: list[tuple[str, str]] = []
        op_problem = token_problem(self.op_id)
        if op_problem:
            found.append(("op_id", op_problem))
        for field in ("started_at", "deadline_at"):
            if getattr(self, field).utcoffset() is None:
                found.append((field, "must carry a time zone"))
        if not found:
            span = (self.deadline_at - self.started_at).total_seconds()
            if not 0 <= span <= MAX_DEADLINE_SECONDS:
                found.append(
                    (
                        "deadline_at",
                        f"must be between 0 and {MAX_DEADLINE_SECONDS:g} seconds after started_at",
                    )
                )
        return found


class InstallBackendInput(ContractModel):
    """Install ``backend`` on node ``node_id`` and get a running process for one slot.

    The slot is ``(model_id, replica_index)``; an admin install leaves ``model_id`` empty.
    Durations are seconds.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra=with_bounds(lambda: INSTALL_INPUT_BOUNDS)
    )

    node_id: str
    """Node to install on: a NATS subject token (no ``.``, ``*``, ``>``, whitespace or control
    characters)."""
    backend: str
    """Gallery name (concrete, meta or alias) or the name of an external install."""
    model_id: str = ""
    """Model the slot serves; empty for an admin install."""
    replica_index: int = 0
    """Slot index on the node."""
    backend_galleries: list[GalleryConfig] | None = None
    """Galleries that replace the node's own for this install; None uses the node's."""
    uri: str = ""
    """External install source (an http(s) archive or an OCI image); empty installs from a
    gallery."""
    name: str = ""
    """Name of an external install."""
    alias: str = ""
    """Alias of an external install."""
    op_id: str = ""
    """Progress op id; empty derives a stable one from the workflow id."""
    install_timeout_seconds: float = 900.0
    """How long one install request waits for the node's reply (LocalAI: 15 minutes)."""
    probe_interval_seconds: float = 15.0
    """Wait between probes while the node is still busy with the install."""
    deadline_seconds: float = 6 * 3600.0
    """Overall bound: the workflow fails with ``InstallDeadlineExceeded`` after this."""
    heartbeat_timeout_seconds: float = 30.0
    """A worker that stops heartbeating for this long is presumed dead; the install resumes."""
    retry_backoff_seconds: float = 30.0
    """First wait after ``NodeUnreachable`` or a transient failure; doubles up to the cap."""
    retry_backoff_max_seconds: float = 900.0
    """Cap of the doubling back-off."""
    max_failed_attempts: int = 10
    """Budget of transient install failures (timeouts never count against it)."""
    probe_listen_seconds: float = 2.0
    """How long a probe listens for progress events of the op."""
    progress_report_interval_seconds: float = 10.0
    """How often the install activity reports progress to the workflow; 0 turns it off.

    Each report is a signal: four history events and a marker in the UI's timeline. A 60 s
    install with 4 progress events a second measured 134 events at 2 s, 62 at 5 s and 38 at
    10 s; the terminal (``backendctl watch``) and the UI's pending activity show the live
    heartbeat in between, so reports only need to keep the query and current details fresh."""
    liveness_check_interval_seconds: float = 15.0
    """Without progress for this long, the install activity asks whether the node still has
    the op; a node that restarted or went silent ends the wait at once. 0 turns it off."""
    fast_path_seconds: float = 1.0
    """How long the first request waits for an immediate answer inside the first workflow
    task (a local activity) before the install falls through to the heartbeating install
    activity with the same op id; 0 turns the fast path off."""
    rollout_id: str = ""
    """Set by rollouts: the rollout's workflow id. The install signals it when the slot goes
    between installing and still installing, and is findable by the ``RolloutId`` search
    attribute (installs are not children of the rollout; see ``workflows/rollout.py``)."""
    resume: InstallCarryOver | None = None
    """Set by continue-as-new only."""

    @property
    def slot(self) -> str:
        """The node's process key for this slot: ``<model_id or backend>#<replica>``."""
        return process_key(self.backend, self.model_id, self.replica_index)

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field with the reason, in field order; empty when valid.

        Every field has finite bounds (``contracts/limits.py`` says why). NaN and ±Infinity
        decode (pydantic reads ``"NaN"`` and ``"Infinity"`` as floats) and are refused here
        like any other out-of-range number, so they fail as ``InvalidInput``.
        """
        found = slot_problems(self.node_id, self.model_id, self.replica_index)
        if self.op_id:
            op_problem = token_problem(self.op_id)
            if op_problem:
                found.append(("op_id", op_problem))
        for field, limit, required in (
            ("backend", MAX_NAME_LENGTH, True),
            ("name", MAX_NAME_LENGTH, False),
            ("alias", MAX_NAME_LENGTH, False),
            ("uri", MAX_URI_LENGTH, False),
        ):
            problem = text_problem(getattr(self, field), limit, required=required)
            if problem:
                found.append((field, problem))
        found += gallery_problems(self.backend_galleries)
        for field, (low, high) in DURATION_BOUNDS.items():
            problem = number_problem(getattr(self, field), low, high, "seconds")
            if problem:
                found.append((field, problem))
        report = self.progress_report_interval_seconds
        if report != 0 and number_problem(report, MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS):
            found.append(
                (
                    "progress_report_interval_seconds",
                    f"must be 0 (off) or a finite number between {MIN_DURATION_SECONDS:g} "
                    f"and {MAX_INTERVAL_SECONDS:g} seconds",
                )
            )
        fast = self.fast_path_seconds
        if fast != 0 and number_problem(fast, MIN_DURATION_SECONDS, MAX_FAST_PATH_SECONDS):
            found.append(
                (
                    "fast_path_seconds",
                    f"must be 0 (off) or a finite number between {MIN_DURATION_SECONDS:g} "
                    f"and {MAX_FAST_PATH_SECONDS:g} seconds",
                )
            )
        if liveness := liveness_interval_problem(self.liveness_check_interval_seconds):
            found.append(("liveness_check_interval_seconds", liveness))
        attempts_problem = number_problem(self.max_failed_attempts, 1, MAX_FAILED_ATTEMPTS)
        if attempts_problem:
            found.append(("max_failed_attempts", attempts_problem))
        rollout_problem = text_problem(self.rollout_id, MAX_WORKFLOW_ID_LENGTH) or utf8_problem(
            self.rollout_id, MAX_SEARCH_ATTRIBUTE_BYTES
        )
        if rollout_problem:
            found.append(("rollout_id", rollout_problem))
        if self.resume is not None:
            found += [(f"resume.{field}", reason) for field, reason in self.resume.problems()]
        return found


DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "install_timeout_seconds": (MIN_DURATION_SECONDS, MAX_DEADLINE_SECONDS),
    "probe_interval_seconds": (MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "deadline_seconds": (1.0, MAX_DEADLINE_SECONDS),
    "heartbeat_timeout_seconds": (1.0, MAX_INTERVAL_SECONDS),
    "retry_backoff_seconds": (MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "retry_backoff_max_seconds": (MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "probe_listen_seconds": (MIN_DURATION_SECONDS, MAX_PROBE_LISTEN_SECONDS),
}
"""Inclusive bounds of the duration fields. Absolute, not relative to the deadline: the
workflow cuts every wait and request to the time left, so a short deadline with the default
install timeout is valid and means what it says."""

INSTALL_INPUT_BOUNDS: dict[str, Keywords] = {
    "node_id": text_bounds(MAX_TOKEN_LENGTH, required=True),
    "backend": text_bounds(MAX_NAME_LENGTH, required=True),
    "model_id": text_bounds(MAX_NAME_LENGTH),
    "replica_index": between(0, MAX_REPLICA_INDEX),
    "backend_galleries": items_bounds(MAX_GALLERIES) | {"x-max-bytes": MAX_GALLERIES_JSON_BYTES},
    "uri": text_bounds(MAX_URI_LENGTH),
    "name": text_bounds(MAX_NAME_LENGTH),
    "alias": text_bounds(MAX_NAME_LENGTH),
    "op_id": text_bounds(MAX_TOKEN_LENGTH),
    **{field: between(low, high) for field, (low, high) in DURATION_BOUNDS.items()},
    "max_failed_attempts": between(1, MAX_FAILED_ATTEMPTS),
    "progress_report_interval_seconds": off_or_between(MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "liveness_check_interval_seconds": off_or_between(*LIVENESS_INTERVAL_RANGE),
    "fast_path_seconds": off_or_between(MIN_DURATION_SECONDS, MAX_FAST_PATH_SECONDS),
    "rollout_id": text_bounds(MAX_WORKFLOW_ID_LENGTH, max_bytes=MAX_SEARCH_ATTRIBUTE_BYTES),
}
"""The bounds ``problems()`` checks, as JSON Schema keywords (the generated reference)."""


def slot_problems(node_id: str, model_id: str, replica_index: int) -> list[tuple[str, str]]:
    """What is wrong with a slot's identity: the node token, the model id, the replica."""
    found: list[tuple[str, str]] = []
    node_problem = token_problem(node_id)
    if node_problem:
        found.append(("node_id", node_problem))
    model_problem = text_problem(model_id, MAX_NAME_LENGTH)
    if model_problem:
        found.append(("model_id", model_problem))
    replica_problem = number_problem(replica_index, 0, MAX_REPLICA_INDEX)
    if replica_problem:
        found.append(("replica_index", replica_problem))
    return found


def gallery_problems(galleries: list[GalleryConfig] | None) -> list[tuple[str, str]]:
    """What is wrong with a ``backend_galleries`` list: count, each string, encoded size."""
    if not galleries:
        return []
    if len(galleries) > MAX_GALLERIES:
        return [
            ("backend_galleries", f"has {len(galleries)} galleries; the limit is {MAX_GALLERIES}")
        ]
    found: list[tuple[str, str]] = []
    for position, gallery in enumerate(galleries):
        field = f"backend_galleries[{position}]"
        for part, value, limit in (
            ("url", gallery.url, MAX_URI_LENGTH),
            ("name", gallery.name, MAX_NAME_LENGTH),
        ):
            problem = text_problem(value, limit, required=True)
            if problem:
                found.append((f"{field}.{part}", problem))
        if len(gallery.mirrors) > MAX_GALLERY_MIRRORS:
            found.append(
                (
                    f"{field}.mirrors",
                    f"has {len(gallery.mirrors)} mirrors; the limit is {MAX_GALLERY_MIRRORS}",
                )
            )
            continue
        for index, mirror in enumerate(gallery.mirrors):
            problem = text_problem(mirror, MAX_URI_LENGTH, required=True)
            if problem:
                found.append((f"{field}.mirrors[{index}]", problem))
        if gallery.verification is not None:
            for part, value in gallery.verification.model_dump().items():
                problem = text_problem(value, MAX_VERIFICATION_LENGTH)
                if problem:
                    found.append((f"{field}.verification.{part}", problem))
    if not found:
        size = len(encode_galleries(galleries).encode())
        if size > MAX_GALLERIES_JSON_BYTES:
            found.append(
                (
                    "backend_galleries",
                    f"is {size} bytes long as JSON; the limit is {MAX_GALLERIES_JSON_BYTES}",
                )
            )
    return found


class InstallStatus(ContractModel):
    """What the ``progress`` query returns: the install as a person would want to see it."""

    node_id: str
    """The node installing."""
    backend: str
    """The backend as requested."""
    model_id: str
    """The slot's model id; empty for an admin install."""
    replica_index: int
    """The slot's replica index."""
    slot: str
    """The node's process key of the slot, ``<model_id or backend>#<replica>``."""
    op_id: str
    """The op id every request of this install carries."""
    phase: InstallPhase
    """Where the install stands; also the ``InstallPhase`` search attribute."""
    attempts: int = 0
    """Install requests sent so far."""
    probes: int = 0
    """Probes run so far."""
    failed_attempts: int = 0
    """Transient failures so far, out of ``max_failed_attempts``."""
    progress_events: int = 0
    """Progress events received from the node so far."""
    last_progress: BackendInstallProgressEvent | None = None
    """The newest progress event."""
    last_progress_at: datetime | None = None
    """When the newest progress event arrived."""
    last_probe: ProbeResult | None = None
    """The last probe's result."""
    last_error: str = ""
    """The last failure's message, if any."""
    address: str = ""
    """Routable address of the slot's process, once installed."""
    started_at: datetime
    """When the install started (its first run)."""
    updated_at: datetime
    """When this status last changed."""
    deadline_at: datetime
    """When the overall deadline passes."""
    next_attempt_at: datetime | None = None
    """While waiting or backing off: when the install probes or tries again."""


class InstallBackendResult(ContractModel):
    """A running process for the slot, and how the install got there."""

    node_id: str
    """The node the slot runs on."""
    backend: str
    """The backend as requested."""
    model_id: str
    """The slot's model id; empty for an admin install."""
    replica_index: int
    """The slot's replica index."""
    slot: str
    """The node's process key of the slot, ``<model_id or backend>#<replica>``."""
    op_id: str
    """The op id the install's requests carried."""
    address: str
    """Routable ``host:port`` of the slot's running backend process."""
    attempts: int
    """Install requests sent."""
    probes: int
    """Probes run."""
    found_running: bool = False
    """A probe found the slot already running before the final request."""
    fast_path: bool = False
    """The node answered the first request at once, inside the first workflow task (a local
    activity): no heartbeating install activity ran."""
    progress_events: int = 0
    """Progress events received from the node."""
    started_at: datetime
    """When the install started."""
    completed_at: datetime
    """When the node's success reply arrived."""
    duration_seconds: float
    """From start to completion."""
