"""Input, status and result of ``UpgradeBackendWorkflow`` and its activities.

One backend on one node: re-pull it (``backend.upgrade``), verify that ``backend.list`` shows
the new version, and bring every slot that ran the old version back through
``InstallBackendWorkflow``. The same workflow, with ``rollback`` set, puts the previous version
back (the node agent's ``backend.rollback``; a stock worker is upgraded to the previous uri).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from durable_installs.contracts.activities import InstallProgress, liveness_interval_problem
from durable_installs.contracts.failures import BACKEND_NOT_INSTALLED as BACKEND_NOT_INSTALLED
from durable_installs.contracts.failures import ROLLBACK_UNAVAILABLE as ROLLBACK_UNAVAILABLE
from durable_installs.contracts.failures import ROLLOUT_NODES_FAILED as ROLLOUT_NODES_FAILED
from durable_installs.contracts.failures import SLOTS_NOT_RESTORED as SLOTS_NOT_RESTORED
from durable_installs.contracts.failures import UPGRADE_NOT_APPLIED as UPGRADE_NOT_APPLIED
from durable_installs.contracts.install import describe_problems, gallery_problems, slot_problems
from durable_installs.contracts.limits import (
    MAX_DEADLINE_SECONDS,
    MAX_INTERVAL_SECONDS,
    MAX_NAME_LENGTH,
    MAX_URI_LENGTH,
    MAX_WORKFLOW_ID_LENGTH,
    MIN_DURATION_SECONDS,
    number_problem,
    text_problem,
)
from durable_installs.protocol.messages import (
    BackendUpgradeRequest,
    GalleryConfig,
    NodeBackendInfo,
    parse_process_key,
)
from durable_installs.protocol.subjects import token_problem

MINIMAL_UPGRADE_INPUT = {"node_id": "node-1", "backend": "llama-cpp"}
"""The smallest useful upgrade input, shown to whoever starts one without an input."""

MAX_UPGRADE_SLOTS = 1_000
"""Most slots of one backend on one node that an upgrade brings back; a node's ports bound
it far lower in practice."""


class BackendVersion(BaseModel):
    """What ``backend.list`` says about one installed backend: its identity on disk."""

    model_config = ConfigDict(frozen=True)

    listed: bool = False
    version: str = ""
    uri: str = ""
    digest: str = ""
    installed_at: str = ""

    @classmethod
    def of(cls, row: NodeBackendInfo | None) -> BackendVersion:
        """The version a ``backend.list`` row shows; not listed for None."""
        if row is None:
            return cls()
        return cls(
            listed=True,
            version=row.version,
            uri=row.uri,
            digest=row.digest,
            installed_at=row.installed_at,
        )

    def describe(self) -> str:
        """``version 1.0 (uri …, digest …, installed at …)`` for errors and tables."""
        if not self.listed:
            return "not installed"
        extras = [
            f"{label} {value}"
            for label, value in (
                ("uri", self.uri),
                ("digest", self.digest),
                ("installed at", self.installed_at),
            )
            if value
        ]
        text = f"version {self.version or '(none recorded)'}"
        return f"{text} ({', '.join(extras)})" if extras else text

    def same_install(self, other: BackendVersion) -> bool:
        """Whether both describe the very same install (nothing was re-pulled)."""
        return self == other


class SlotRef(BaseModel):
    """One slot of the backend on the node: the process key's model id and replica."""

    model_config = ConfigDict(frozen=True)

    model_id: str = ""
    replica_index: int = 0

    @classmethod
    def from_process_key(cls, key: str, backend: str) -> SlotRef | None:
        """The slot of a process key ``model#N``; an admin key ``<backend>#N`` has no model."""
        parsed = parse_process_key(key)
        if parsed is None:
            return None
        model_id, replica = parsed
        return cls(model_id="" if model_id == backend else model_id, replica_index=replica)


class UpgradeBackendInput(BaseModel):
    """Upgrade (or roll back) ``backend`` on node ``node_id``; durations are seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str
    backend: str
    backend_galleries: list[GalleryConfig] | None = None
    uri: str = ""
    name: str = ""
    alias: str = ""
    op_id: str = ""
    """Progress op id, the same on every re-send; empty derives one from the workflow id."""
    expected_version: str = ""
    """When set, ``backend.list`` must show this version afterwards."""
    expected_uri: str = ""
    expected_digest: str = ""
    rollback: bool = False
    """Put the previous version back instead of upgrading (rollouts set this)."""
    previous_uri: str = ""
    """With ``rollback``: where the previous version came from, for workers that keep none."""
    keep_previous: bool = False
    """Leave the replaced version on the node (a rollout drops it when it ends)."""
    upgrade_timeout_seconds: float = 900.0
    """How long one upgrade request waits for the reply (LocalAI: 15 minutes)."""
    probe_interval_seconds: float = 15.0
    deadline_seconds: float = 6 * 3600.0
    """Overall bound of the re-pull: the upgrade fails after this."""
    health_gate_seconds: float = 600.0
    """How long the slots that ran before have to be back and healthy after the re-pull."""
    retry_backoff_seconds: float = 30.0
    retry_backoff_max_seconds: float = 900.0
    heartbeat_timeout_seconds: float = 30.0
    liveness_check_interval_seconds: float = 15.0
    """During a request: without progress for this long, ask whether the node still has the
    op, so an agent that restarted is noticed long before the timeout; 0 turns it off."""
    restore_slots: list[SlotRef] = Field(default_factory=list)
    """Slots to bring back besides those found running (a rollback passes the slots that ran
    before the upgrade, which may have died on the broken version)."""
    install_options: dict[str, Any] = Field(default_factory=dict)
    """Extra ``InstallBackendWorkflow`` input fields for the slots brought back."""
    rollout_id: str = ""
    """Set by rollouts: the rollout's workflow id (for the slots' installs)."""

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field with the reason; empty when valid."""
        found = slot_problems(self.node_id, "", 0)
        if self.op_id and (problem := token_problem(self.op_id)):
            found.append(("op_id", problem))
        for field, limit, required in (
            ("backend", MAX_NAME_LENGTH, True),
            ("name", MAX_NAME_LENGTH, False),
            ("alias", MAX_NAME_LENGTH, False),
            ("uri", MAX_URI_LENGTH, False),
            ("expected_version", MAX_NAME_LENGTH, False),
            ("expected_uri", MAX_URI_LENGTH, False),
            ("expected_digest", MAX_NAME_LENGTH, False),
            ("previous_uri", MAX_URI_LENGTH, False),
            ("rollout_id", MAX_WORKFLOW_ID_LENGTH, False),
        ):
            if problem := text_problem(getattr(self, field), limit, required=required):
                found.append((field, problem))
        found += gallery_problems(self.backend_galleries)
        for field, (low, high) in UPGRADE_DURATION_BOUNDS.items():
            if problem := number_problem(getattr(self, field), low, high, "seconds"):
                found.append((field, problem))
        if liveness := liveness_interval_problem(self.liveness_check_interval_seconds):
            found.append(("liveness_check_interval_seconds", liveness))
        if len(self.restore_slots) > MAX_UPGRADE_SLOTS:
            found.append(("restore_slots", f"has more than {MAX_UPGRADE_SLOTS} slots"))
        for position, slot in enumerate(self.restore_slots[:MAX_UPGRADE_SLOTS]):
            found += [
                (f"restore_slots[{position}].{field}", reason)
                for field, reason in slot_problems(
                    self.node_id or "n", slot.model_id, slot.replica_index
                )
                if field != "node_id"
            ]
        for key in sorted(self.install_options):
            if key in UPGRADE_SET_INSTALL_FIELDS:
                found.append((f"install_options.{key}", "is set by the upgrade for each slot"))
        return found

    def describe_problems(self) -> str:
        """The problems as one line."""
        return describe_problems(self.problems())

    def expected(self) -> dict[str, str]:
        """The expected fields that are set, by ``backend.list`` field name."""
        return {
            field: value
            for field, value in (
                ("version", self.expected_version),
                ("uri", self.expected_uri),
                ("digest", self.expected_digest),
            )
            if value
        }

    def upgrade_request(self, op_id: str, galleries_json: str) -> BackendUpgradeRequest:
        """The ``backend.upgrade`` body (also the rollback's fallback with ``previous_uri``)."""
        uri = self.previous_uri if self.rollback else self.uri
        name = (self.name or self.backend) if self.rollback and uri else self.name
        return BackendUpgradeRequest(
            backend=self.backend,
            backend_galleries=galleries_json,
            uri=uri,
            name=name,
            alias=self.alias,
            op_id=op_id,
        )


UPGRADE_DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "upgrade_timeout_seconds": (MIN_DURATION_SECONDS, MAX_DEADLINE_SECONDS),
    "probe_interval_seconds": (MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "deadline_seconds": (1.0, MAX_DEADLINE_SECONDS),
    "health_gate_seconds": (1.0, MAX_DEADLINE_SECONDS),
    "retry_backoff_seconds": (MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "retry_backoff_max_seconds": (MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "heartbeat_timeout_seconds": (1.0, MAX_INTERVAL_SECONDS),
}

UPGRADE_SET_INSTALL_FIELDS = frozenset(
    {
        "node_id",
        "backend",
        "model_id",
        "replica_index",
        "op_id",
        "rollout_id",
        "resume",
        "backend_galleries",
        "uri",
        "name",
        "alias",
        "deadline_seconds",
    }
)
"""Install fields the upgrade sets for each slot it brings back."""


class UpgradePhase(StrEnum):
    """Where an upgrade stands."""

    INSPECTING = "inspecting"
    UPGRADING = "upgrading"
    STILL_UPGRADING = "still_upgrading"
    PROBING = "probing"
    BACKING_OFF = "backing_off"
    VERIFYING = "verifying"
    RESTORING_SLOTS = "restoring_slots"
    CHECKING_HEALTH = "checking_health"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class SlotOutcome(BaseModel):
    """A slot brought back after the upgrade: where it runs, or why it did not come back."""

    model_id: str
    replica_index: int
    workflow_id: str
    address: str = ""
    healthy: bool = False
    error: str = ""


class UpgradeStatus(BaseModel):
    """The ``progress`` query of an upgrade: as a person sees it."""

    node_id: str
    backend: str
    rollback: bool = False
    phase: UpgradePhase = UpgradePhase.INSPECTING
    requests: int = 0
    probes: int = 0
    before: BackendVersion = Field(default_factory=BackendVersion)
    after: BackendVersion = Field(default_factory=BackendVersion)
    progress: InstallProgress | None = None
    slots: list[SlotOutcome] = Field(default_factory=list)
    used_install_fallback: bool = False
    error: str = ""


class UpgradeBackendResult(BaseModel):
    """A verified upgrade: the version before and after, and every slot running again."""

    node_id: str
    backend: str
    op_id: str
    rollback: bool
    before: BackendVersion
    after: BackendVersion
    stopped_process_keys: list[str]
    slots: list[SlotOutcome]
    requests: int
    probes: int
    used_install_fallback: bool


# --- activities -----------------------------------------------------------------------------


class InspectBackendInput(BaseModel):
    """Ask a node what it has of ``backend``: its ``backend.list`` row and running slots."""

    node_id: str
    backend: str
    op_id: str = ""
    timeout_seconds: float = 10.0


class InspectBackendResult(BaseModel):
    """The node's answer; ``slots`` are the running slots that run this backend."""

    reachable: bool
    version: BackendVersion
    slots: list[SlotRef] = Field(default_factory=list)
    upgrade_in_flight: bool = False
    """The node agent still works on the op (its status extension says so)."""
    running: list[SlotRef] = Field(default_factory=list)
    """Every running slot of the node, whatever its backend (``models.running``)."""
    slots_known: bool = False
    """The node agent told which backend each running slot runs (stock workers cannot)."""


class UpgradeActivityInput(BaseModel):
    """One ``backend.upgrade`` (or ``backend.rollback``) request to one node."""

    node_id: str
    request: BackendUpgradeRequest
    rollback: bool = False
    timeout_seconds: float = 900.0
    heartbeat_interval_seconds: float = 5.0
    progress_report_interval_seconds: float = 5.0
    liveness_check_interval_seconds: float = 15.0
    """Without progress for this long, ask whether the node still has the op; 0 turns it off."""


class UpgradeActivityResult(BaseModel):
    """A ``success:true`` reply: the processes the node stopped and how it was reached."""

    stopped_process_keys: list[str] = Field(default_factory=list)
    reports_stopped_processes: bool = False
    used_install_fallback: bool = False
    progress: InstallProgress | None = None


class HealthCheckInput(BaseModel):
    """gRPC ``Health`` of the slots' backend processes, each at its routable address."""

    addresses: list[str]
    call_timeout_seconds: float = 5.0


class HealthCheckResult(BaseModel):
    """Per address, whether it answered ``Health`` with ``OK``."""

    healthy: dict[str, bool]


class DropPreviousInput(BaseModel):
    """Tell a node agent to forget the version it kept for a rollback."""

    node_id: str
    backend: str
