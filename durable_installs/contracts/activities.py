"""Inputs, results and heartbeat details of the install and probe activities."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from durable_installs.protocol.messages import (
    BackendInstallProgressEvent,
    BackendInstallRequest,
    RunningModelInfo,
)

LIVENESS_INTERVAL_RANGE = (1.0, 3600.0)
"""Seconds between liveness checks of a node during an install request; 0 turns them off.
Under a second would flood the node with status requests; over an hour defeats the point."""


def liveness_interval_problem(seconds: float) -> str | None:
    """Why ``seconds`` is not a valid liveness check interval, or None."""
    low, high = LIVENESS_INTERVAL_RANGE
    if seconds == 0 or low <= seconds <= high:
        return None
    return f"must be 0 (off) or between {low:g} and {high:g}"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InstallActivityInput(_Model):
    """One ``backend.install`` request to one node, and how long to wait for its reply."""

    node_id: str
    request: BackendInstallRequest
    install_timeout_seconds: float = 900.0
    heartbeat_interval_seconds: float = 5.0
    """Heartbeat at least this often even when the node sends no progress event."""
    progress_report_interval_seconds: float = 5.0
    """Report progress to the workflow (a signal) at most this often; 0 disables reports."""
    liveness_check_interval_seconds: float = 15.0
    """Without a progress event for this long, ask whether the node still has the op (see
    ``activities/liveness.py``); 0 turns the checks off."""
    request_sent: bool = False
    """The fast path already sent this op's request and the node has not answered yet: wait
    for its reply on the op's reply subject instead of sending it again."""


class InstallProgress(_Model):
    """What the activity knows about an op's progress: its heartbeat details.

    Also sent to the workflow as a progress report and carried by a ``WorkerStillInstalling``
    failure, so every place a person looks shows the same thing.
    """

    op_id: str
    node_id: str = ""
    attempt: int = 1
    event_count: int = 0
    malformed_events: int = 0
    """Events that were not valid JSON progress events and were dropped."""
    last_event: BackendInstallProgressEvent | None = None
    last_event_at: datetime | None = None


class InstallActivityResult(_Model):
    """A ``success:true`` reply: the slot runs at ``address``."""

    node_id: str
    op_id: str
    address: str
    attempt: int
    progress: InstallProgress
    elapsed_seconds: float


class FastInstallResult(_Model):
    """What the fast path learned: the node's immediate answer, or why there was none.

    ``answered`` is False when the node did not reply within the bound (it may be working on
    the op: the regular install activity joins it with the same op id), when nothing answers
    on its subject, or when the request could not be made. A ``success:false`` reply is not
    a result: it fails the local activity with the same typed failure the install activity
    raises, so the workflow handles it exactly as a failed first request.
    """

    node_id: str
    op_id: str
    answered: bool
    address: str = ""
    reason: str = ""
    """Why the node gave no immediate answer (``timeout``, ``no responders``, ...)."""
    request_sent: bool = False
    """No answer in time, but the node got the request: the install activity waits for its
    reply instead of sending the op again."""
    elapsed_seconds: float = 0.0


class CancelOpInput(_Model):
    """Which op a node should stop."""

    node_id: str
    op_id: str


class ProbeState(StrEnum):
    """What the probe concluded about a slot on a node."""

    RUNNING = "RUNNING"
    IN_FLIGHT = "IN_FLIGHT"
    INSTALLED = "INSTALLED"
    ABSENT = "ABSENT"
    UNKNOWN = "UNKNOWN"


class ProbeInput(_Model):
    """Which slot (and op) to ask a node about."""

    node_id: str
    backend: str
    model_id: str = ""
    replica_index: int = 0
    op_id: str = ""
    galleries_json: str = ""
    """The request's ``backend_galleries`` string, used to map meta and alias names."""
    listen_seconds: float = 2.0
    """How long to listen on the op's progress subject for signs of an install in flight."""
    status_timeout_seconds: float = 2.0
    running_timeout_seconds: float = 10.0
    list_timeout_seconds: float = 30.0


class ProbeResult(_Model):
    """The probe's conclusion and the evidence it rests on."""

    state: ProbeState
    source: str
    """``status`` (the node agent's status extension) or ``stock`` (running + list + listen)."""
    address: str = ""
    """Routable address from the status extension; node-local address from ``models.running``."""
    node_answered: bool = False
    node_offline: bool = False
    """Nothing subscribes to the node's subjects (no responders): back off, do not poll."""
    running_slot: RunningModelInfo | None = None
    installed_backend: str = ""
    """The backend name on the node's disk that matched (may be the concrete of a meta name)."""
    events_seen: int = 0
    last_event: BackendInstallProgressEvent | None = None
    notes: list[str] = Field(default_factory=list)
    probed_at: datetime | None = None

    def summary(self) -> str:
        """One line for logs, timers and the UI."""
        text = f"{self.state.value} (via {self.source})"
        if self.address:
            text += f" at {self.address}"
        if self.installed_backend:
            text += f", on disk as {self.installed_backend}"
        if self.events_seen:
            text += f", {self.events_seen} progress events"
        return text


def progress_from_details(details: Sequence[Any]) -> InstallProgress | None:
    """Re-validate heartbeat or failure details (plain dicts after conversion) into a model."""
    if not details:
        return None
    try:
        return InstallProgress.model_validate(details[0])
    except ValidationError:
        return None
