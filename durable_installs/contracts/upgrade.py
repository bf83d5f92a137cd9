"""Input, status and result of ``UpgradeBackendWorkflow`` and its activities.

One backend on one node: re-pull it (``backend.upgrade``), verify that ``backend.list`` shows
the new version, and bring every slot that ran the old version back through
``InstallBackendWorkflow``. The same workflow, with ``rollback`` set, puts the previous version
back (the node agent's ``backend.rollback``; a stock worker is upgraded to the previous uri).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field

from durable_installs.contracts.activities import (
    LIVENESS_INTERVAL_RANGE,
    InstallProgress,
    liveness_interval_problem,
)
from durable_installs.contracts.failures import BACKEND_NOT_INSTALLED as BACKEND_NOT_INSTALLED
from durable_installs.contracts.failures import ROLLBACK_UNAVAILABLE as ROLLBACK_UNAVAILABLE
from durable_installs.contracts.failures import ROLLOUT_NODES_FAILED as ROLLOUT_NODES_FAILED
from durable_installs.contracts.failures import SLOTS_NOT_RESTORED as SLOTS_NOT_RESTORED
from durable_installs.contracts.failures import UPGRADE_NOT_APPLIED as UPGRADE_NOT_APPLIED
from durable_installs.contracts.install import describe_problems, gallery_problems, slot_problems
from durable_installs.contracts.limits import (
    MAX_DEADLINE_SECONDS,
    MAX_GALLERIES,
    MAX_INTERVAL_SECONDS,
    MAX_NAME_LENGTH,
    MAX_URI_LENGTH,
    MAX_WORKFLOW_ID_LENGTH,
    MIN_DURATION_SECONDS,
    Keywords,
    between,
    items_bounds,
    number_problem,
    off_or_between,
    text_bounds,
    text_problem,
    with_bounds,
)
from durable_installs.contracts.model import ContractModel
from durable_installs.protocol.messages import (
    BackendUpgradeRequest,
    GalleryConfig,
    NodeBackendInfo,
    parse_process_key,
)
from durable_installs.protocol.subjects import MAX_TOKEN_LENGTH, token_problem

MINIMAL_UPGRADE_INPUT = {"node_id": "node-1", "backend": "llama-cpp"}
"""The smallest useful upgrade input, shown to whoever starts one without an input."""

MAX_UPGRADE_SLOTS = 1_000
"""Most slots of one backend on one node that an upgrade brings back; a node's ports bound
it far lower in practice."""


class BackendVersion(ContractModel):
    """What ``backend.list`` says about one installed backend: its identity on disk."""

    model_config = ConfigDict(frozen=True)

    listed: bool = False
    """The node lists the backend at all."""
    version: str = ""
    """The version ``backend.list`` shows; empty when it shows none."""
    uri: str = ""
    """The source it was installed from."""
    digest: str = ""
    """The recorded digest (OCI manifest or archive sha256)."""
    installed_at: str = ""
    """When it was installed, as the node says."""

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


class SlotRef(ContractModel):
    """One slot of the backend on the node: the process key's model id and replica."""

    model_config = ConfigDict(frozen=True)

    model_id: str = ""
    """The slot's model id; empty for an admin slot."""
    replica_index: int = 0
    """The slot's replica index."""

    @classmethod
    def from_process_key(cls, key: str, backend: str) -> SlotRef | None:
        """The slot of a process key ``model#N``; an admin key ``<backend>#N`` has no model."""
        parsed = parse_process_key(key)
        if parsed is None:
            return None
        model_id, replica = parsed
        return cls(model_id="" if model_id == backend else model_id, replica_index=replica)


class UpgradeBackendInput(ContractModel):
    """Upgrade (or roll back) ``backend`` on node ``node_id``; durations are seconds."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra=with_bounds(lambda: UPGRADE_INPUT_BOUNDS)
    )

    node_id: str
    """Node to upgrade: a NATS subject token."""
    backend: str
    """The backend to upgrade, as requested for its install."""
    backend_galleries: list[GalleryConfig] | None = None
    """Galleries to re-pull from; None uses the node's own."""
    uri: str = ""
    """External install source to re-pull from; empty uses the gallery."""
    name: str = ""
    """Name of an external install."""
    alias: str = ""
    """Alias of an external install."""
    op_id: str = ""
    """Progress op id, the same on every re-send; empty derives one from the workflow id."""
    expected_version: str = ""
    """When set, ``backend.list`` must show this version afterwards."""
    expected_uri: str = ""
    """When set, ``backend.list`` must show this source afterwards."""
    expected_digest: str = ""
    """When set, ``backend.list`` must show this digest afterwards."""
    rollback: bool = False
    """Put the previous version back instead of upgrading (rollouts set this)."""
    previous_uri: str = ""
    """With ``rollback``: where the previous version came from, for workers that keep none."""
    keep_previous: bool = False
    """Leave the replaced version on the node (a rollout drops it when it ends)."""
    upgrade_timeout_seconds: float = 900.0
    """How long one upgrade request waits for the reply (LocalAI: 15 minutes)."""
    probe_interval_seconds: float = 15.0
    """Wait between inspections while the node is still busy."""
    deadline_seconds: float = 6 * 3600.0
    """Overall bound of the re-pull: the upgrade fails after this."""
    health_gate_seconds: float = 600.0
    """How long the slots that ran before have to be back and healthy after the re-pull."""
    retry_backoff_seconds: float = 30.0
    """First wait after the node did not answer; doubles up to the cap."""
    retry_backoff_max_seconds: float = 900.0
    """Cap of the doubling back-off."""
    heartbeat_timeout_seconds: float = 30.0
    """A worker that stops heartbeating for this long is presumed dead; the upgrade resumes."""
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

UPGRADE_INPUT_BOUNDS: dict[str, Keywords] = {
    "node_id": text_bounds(MAX_TOKEN_LENGTH, required=True),
    "backend": text_bounds(MAX_NAME_LENGTH, required=True),
    "backend_galleries": items_bounds(MAX_GALLERIES),
    "uri": text_bounds(MAX_URI_LENGTH),
    "name": text_bounds(MAX_NAME_LENGTH),
    "alias": text_bounds(MAX_NAME_LENGTH),
    "op_id": text_bounds(MAX_TOKEN_LENGTH),
    "expected_version": text_bounds(MAX_NAME_LENGTH),
    "expected_uri": text_bounds(MAX_URI_LENGTH),
    "expected_digest": text_bounds(MAX_NAME_LENGTH),
    "previous_uri": text_bounds(MAX_URI_LENGTH),
    **{field: between(low, high) for field, (low, high) in UPGRADE_DURATION_BOUNDS.items()},
    "liveness_check_interval_seconds": off_or_between(*LIVENESS_INTERVAL_RANGE),
    "restore_slots": items_bounds(MAX_UPGRADE_SLOTS),
    "rollout_id": text_bounds(MAX_WORKFLOW_ID_LENGTH),
}
"""The bounds ``problems()`` checks, as JSON Schema keywords (the generated reference)."""

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


class SlotOutcome(ContractModel):
    """A slot brought back after the upgrade: where it runs, or why it did not come back."""

    model_id: str
    """The slot's model id; empty for an admin slot."""
    replica_index: int
    """The slot's replica index."""
    workflow_id: str
    """The slot's install workflow id."""
    address: str = ""
    """Where the slot's process listens again."""
    healthy: bool = False
    """The process answered gRPC ``Health`` with ``OK``."""
    error: str = ""
    """Why the slot did not come back, in the node's words."""


class UpgradeStatus(ContractModel):
    """The ``progress`` query of an upgrade: as a person sees it."""

    node_id: str
    """The node upgraded."""
    backend: str
    """The backend upgraded."""
    rollback: bool = False
    """This is a rollback to the previous version."""
    phase: UpgradePhase = UpgradePhase.INSPECTING
    """Where the upgrade stands."""
    requests: int = 0
    """Upgrade requests sent."""
    probes: int = 0
    """Inspections run after a timeout."""
    before: BackendVersion = Field(default_factory=BackendVersion)
    """What the node listed before."""
    after: BackendVersion = Field(default_factory=BackendVersion)
    """What the node listed after, once verified."""
    progress: InstallProgress | None = None
    """The newest progress of the re-pull."""
    slots: list[SlotOutcome] = Field(default_factory=list)
    """The slots brought back so far."""
    used_install_fallback: bool = False
    """The node had no upgrade subject; ``backend.install`` with ``force`` was sent."""
    error: str = ""
    """The last failure's message, if any."""


class UpgradeBackendResult(ContractModel):
    """A verified upgrade: the version before and after, and every slot running again."""

    node_id: str
    """The node upgraded."""
    backend: str
    """The backend upgraded."""
    op_id: str
    """The op id every request carried."""
    rollback: bool
    """This was a rollback to the previous version."""
    before: BackendVersion
    """What the node listed before."""
    after: BackendVersion
    """What the node lists now."""
    stopped_process_keys: list[str]
    """Processes the node stopped for the re-pull."""
    slots: list[SlotOutcome]
    """Every slot brought back, healthy."""
    requests: int
    """Upgrade requests sent."""
    probes: int
    """Inspections run after a timeout."""
    used_install_fallback: bool
    """The node had no upgrade subject; ``backend.install`` with ``force`` was sent."""


# --- activities -----------------------------------------------------------------------------


class InspectBackendInput(ContractModel):
    """Ask a node what it has of ``backend``: its ``backend.list`` row and running slots."""

    node_id: str
    """The node to ask."""
    backend: str
    """The backend to look for."""
    op_id: str = ""
    """The upgrade's op id, to ask whether it is still in flight; empty for none."""
    timeout_seconds: float = 10.0
    """How long each request may take."""


class InspectBackendResult(ContractModel):
    """The node's answer; ``slots`` are the running slots that run this backend."""

    reachable: bool
    """The node answered."""
    version: BackendVersion
    """What ``backend.list`` shows of the backend."""
    slots: list[SlotRef] = Field(default_factory=list)
    """Running slots that run this backend."""
    upgrade_in_flight: bool = False
    """The node agent still works on the op (its status extension says so)."""
    running: list[SlotRef] = Field(default_factory=list)
    """Every running slot of the node, whatever its backend (``models.running``)."""
    slots_known: bool = False
    """The node agent told which backend each running slot runs (stock workers cannot)."""


class UpgradeActivityInput(ContractModel):
    """One ``backend.upgrade`` (or ``backend.rollback``) request to one node."""

    node_id: str
    """The node."""
    request: BackendUpgradeRequest
    """The ``backend.upgrade`` body (or the rollback's backend and source)."""
    rollback: bool = False
    """Send ``backend.rollback`` instead of ``backend.upgrade``."""
    timeout_seconds: float = 900.0
    """How long to wait for the reply before the workflow inspects."""
    heartbeat_interval_seconds: float = 5.0
    """Heartbeat at least this often even without progress events."""
    progress_report_interval_seconds: float = 5.0
    """Report progress to the workflow at most this often."""
    liveness_check_interval_seconds: float = 15.0
    """Without progress for this long, ask whether the node still has the op; 0 turns it off."""


class UpgradeActivityResult(ContractModel):
    """A ``success:true`` reply: the processes the node stopped and how it was reached."""

    stopped_process_keys: list[str] = Field(default_factory=list)
    """Processes the node stopped for the re-pull."""
    reports_stopped_processes: bool = False
    """The node says which processes it stopped (node agents do)."""
    used_install_fallback: bool = False
    """No upgrade subject answered; ``backend.install`` with ``force`` was sent."""
    progress: InstallProgress | None = None
    """Progress seen while waiting."""


class HealthCheckInput(ContractModel):
    """gRPC ``Health`` of the slots' backend processes, each at its routable address."""

    addresses: list[str]
    """Routable ``host:port`` of each slot's process."""
    call_timeout_seconds: float = 5.0
    """How long each ``Health`` call may take."""


class HealthCheckResult(ContractModel):
    """Per address, whether it answered ``Health`` with ``OK``."""

    healthy: dict[str, bool]
    """Per address, whether it answered ``OK``."""


class DropPreviousInput(ContractModel):
    """Tell a node agent to forget the version it kept for a rollback."""

    node_id: str
    """The node."""
    backend: str
    """The backend whose kept previous version to drop."""
