"""Input, result and status of ``InstallBackendWorkflow``.

The input's field names are a public contract: other teams and ``temporal workflow start
--input`` use them. Fields are typed loosely enough that a wrong value reaches
:meth:`InstallBackendInput.problems`, which names the field, instead of failing decoding.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from contracts.activities import InstallProgress, ProbeResult
from protocol.messages import BackendInstallProgressEvent, GalleryConfig, process_key
from protocol.subjects import token_problem

MAX_REPLICA_INDEX = 2**31 - 1


def install_workflow_id(node_id: str, backend: str, model_id: str, replica_index: int) -> str:
    """The one workflow id for a slot's install: ``install/<node>/<backend>/<model>/<replica>``.

    Every requester (rollouts, other teams' workflows, the CLI) derives the same id, so Temporal
    itself guarantees one running install per slot. Parts are percent-encoded so that
    ``a-b`` + ``c`` and ``a`` + ``b-c`` can never collide; an admin install uses ``-``.
    """
    parts = (node_id, backend, model_id or "-", str(replica_index))
    return "install/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)


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


class InstallCarryOver(BaseModel):
    """State a continued-as-new run takes over from its predecessor. Not for callers."""

    model_config = ConfigDict(frozen=True)

    op_id: str
    started_at: datetime
    deadline_at: datetime
    attempts: int
    probes: int
    failed_attempts: int
    backoff_streak: int
    found_running: bool = False
    progress: InstallProgress | None = None
    last_probe: ProbeResult | None = None
    last_error: str = ""


class InstallBackendInput(BaseModel):
    """Install ``backend`` on node ``node_id`` and get a running process for one slot.

    The slot is ``(model_id, replica_index)``; an admin install leaves ``model_id`` empty.
    Durations are seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str
    backend: str
    model_id: str = ""
    replica_index: int = 0
    backend_galleries: list[GalleryConfig] | None = None
    """Galleries that replace the node's own for this install; None uses the node's."""
    uri: str = ""
    name: str = ""
    alias: str = ""
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
        """Every invalid field with the reason, in field order; empty when valid."""
        found: list[tuple[str, str]] = []
        node_problem = token_problem(self.node_id)
        if node_problem:
            found.append(("node_id", node_problem))
        if self.op_id:
            op_problem = token_problem(self.op_id)
            if op_problem:
                found.append(("op_id", op_problem))
        for field in ("backend", "model_id", "name", "alias"):
            value: str = getattr(self, field)
            if field == "backend" and not value.strip():
                found.append((field, "it is empty"))
            elif any(not ch.isprintable() for ch in value):
                found.append((field, "it contains control characters"))
        if not 0 <= self.replica_index <= MAX_REPLICA_INDEX:
            found.append(("replica_index", f"must be between 0 and {MAX_REPLICA_INDEX}"))
        for field in (
            "install_timeout_seconds",
            "probe_interval_seconds",
            "deadline_seconds",
            "heartbeat_timeout_seconds",
            "retry_backoff_seconds",
            "retry_backoff_max_seconds",
            "probe_listen_seconds",
        ):
            if not getattr(self, field) > 0:
                found.append((field, "must be greater than 0"))
        if self.progress_report_interval_seconds < 0:
            found.append(("progress_report_interval_seconds", "must not be negative"))
        if self.max_failed_attempts < 1:
            found.append(("max_failed_attempts", "must be at least 1"))
        for position, gallery in enumerate(self.backend_galleries or []):
            if not gallery.url or not gallery.name:
                found.append((f"backend_galleries[{position}]", "needs both url and name"))
        return found


class InstallStatus(BaseModel):
    """What the ``progress`` query returns: the install as a person would want to see it."""

    node_id: str
    backend: str
    model_id: str
    replica_index: int
    slot: str
    op_id: str
    phase: InstallPhase
    attempts: int = 0
    probes: int = 0
    failed_attempts: int = 0
    progress_events: int = 0
    last_progress: BackendInstallProgressEvent | None = None
    last_progress_at: datetime | None = None
    last_probe: ProbeResult | None = None
    last_error: str = ""
    address: str = ""
    started_at: datetime
    updated_at: datetime
    deadline_at: datetime
    next_attempt_at: datetime | None = None
    """While waiting or backing off: when the install probes or tries again."""


class InstallBackendResult(BaseModel):
    """A running process for the slot, and how the install got there."""

    node_id: str
    backend: str
    model_id: str
    replica_index: int
    slot: str
    op_id: str
    address: str
    attempts: int
    """Install requests sent."""
    probes: int
    found_running: bool = False
    """A probe found the slot already running before the final request."""
    progress_events: int = 0
    started_at: datetime
    completed_at: datetime
    duration_seconds: float
