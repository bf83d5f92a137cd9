"""Inputs, results and heartbeat details of the install and probe activities."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from durable_installs.contracts.model import ContractModel
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


class _Model(ContractModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InstallActivityInput(_Model):
    """One ``backend.install`` request to one node, and how long to wait for its reply."""

    node_id: str
    """Node to send the request to."""
    request: BackendInstallRequest
    """The ``backend.install`` body, with the op id the node joins on."""
    install_timeout_seconds: float = 900.0
    """How long to wait for the node's reply before ``WorkerStillInstalling``."""
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
    """The op whose progress this is."""
    node_id: str = ""
    """The node working on the op."""
    attempt: int = 1
    """The activity attempt that saw the progress (1 for the first)."""
    event_count: int = 0
    """Valid progress events received so far."""
    malformed_events: int = 0
    """Events that were not valid JSON progress events and were dropped."""
    last_event: BackendInstallProgressEvent | None = None
    """The newest progress event, as the node sent it."""
    last_event_at: datetime | None = None
    """When the newest progress event arrived."""


class InstallActivityResult(_Model):
    """A ``success:true`` reply: the slot runs at ``address``."""

    node_id: str
    """The node that installed the slot."""
    op_id: str
    """The op the node answered."""
    address: str
    """Routable ``host:port`` of the slot's backend process."""
    attempt: int
    """The activity attempt that got the reply."""
    progress: InstallProgress
    """Progress seen while waiting for the reply."""
    elapsed_seconds: float
    """Time from the start of this attempt to the reply."""


class FastInstallResult(_Model):
    """What the fast path learned: the node's immediate answer, or why there was none.

    ``answered`` is False when the node did not reply within the bound (it may be working on
    the op: the regular install activity joins it with the same op id), when nothing answers
    on its subject, or when the request could not be made. A ``success:false`` reply is not
    a result: it fails the local activity with the same typed failure the install activity
    raises, so the workflow handles it exactly as a failed first request.
    """

    node_id: str
    """The node asked."""
    op_id: str
    """The op sent."""
    answered: bool
    """The node answered ``success:true`` within the bound."""
    address: str = ""
    """Routable ``host:port`` of the slot's process when answered."""
    reason: str = ""
    """Why the node gave no immediate answer (``timeout``, ``no responders``, ...)."""
    request_sent: bool = False
    """No answer in time, but the node got the request: the install activity waits for its
    reply instead of sending the op again."""
    elapsed_seconds: float = 0.0
    """Time the fast path waited."""


class CancelOpInput(_Model):
    """Which op a node should stop."""

    node_id: str
    """The node working on the op."""
    op_id: str
    """The op to stop."""


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
    """The node to ask."""
    backend: str
    """The backend as requested (meta and alias names are mapped through the galleries)."""
    model_id: str = ""
    """The slot's model id; empty for an admin install."""
    replica_index: int = 0
    """The slot's replica index."""
    op_id: str = ""
    """The install's op id, to ask about and to listen for its progress; empty for none."""
    galleries_json: str = ""
    """The request's ``backend_galleries`` string, used to map meta and alias names."""
    listen_seconds: float = 2.0
    """How long to listen on the op's progress subject for signs of an install in flight."""
    status_timeout_seconds: float = 2.0
    """How long the status extension may take to answer."""
    running_timeout_seconds: float = 10.0
    """How long ``models.running`` may take to answer."""
    list_timeout_seconds: float = 30.0
    """How long ``backend.list`` may take to answer."""


class ProbeResult(_Model):
    """The probe's conclusion and the evidence it rests on."""

    state: ProbeState
    """What the probe concluded about the slot."""
    source: str
    """``status`` (the node agent's status extension) or ``stock`` (running + list + listen)."""
    address: str = ""
    """Routable address from the status extension; node-local address from ``models.running``."""
    node_answered: bool = False
    """The node answered at least one of the probe's requests."""
    node_offline: bool = False
    """Nothing subscribes to the node's subjects (no responders): back off, do not poll."""
    running_slot: RunningModelInfo | None = None
    """The ``models.running`` entry of the slot, when it runs."""
    installed_backend: str = ""
    """The backend name on the node's disk that matched (may be the concrete of a meta name)."""
    events_seen: int = 0
    """Progress events of the op heard while listening."""
    last_event: BackendInstallProgressEvent | None = None
    """The newest progress event heard, if any."""
    notes: list[str] = Field(default_factory=list)
    """What the probe observed on the way, for logs and the UI."""
    probed_at: datetime | None = None
    """When the probe ran."""

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
