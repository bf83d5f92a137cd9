"""Input, status and result of ``RolloutBackendWorkflow``: one backend across many slots."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pydantic
from pydantic import ConfigDict, Field

from durable_installs.contracts.install import (
    InstallBackendInput,
    install_workflow_id,
    slot_problems,
)
from durable_installs.contracts.limits import (
    MAX_DEADLINE_SECONDS,
    MAX_GALLERIES,
    MAX_NAME_LENGTH,
    MAX_ROLLOUT_RUNS,
    MAX_ROLLOUT_SLOTS,
    MAX_URI_LENGTH,
    MAX_WORKFLOW_ID_LENGTH,
    Keywords,
    between,
    items_bounds,
    number_problem,
    text_bounds,
    text_problem,
    with_bounds,
)
from durable_installs.contracts.load import LoadModelInput, load_workflow_id
from durable_installs.contracts.model import ContractModel
from durable_installs.contracts.upgrade import SlotRef, UpgradeBackendInput
from durable_installs.protocol.messages import GalleryConfig

MINIMAL_ROLLOUT_INPUT = {"backend": "llama-cpp", "targets": [{"node_id": "node-1"}]}
"""The smallest useful rollout input, shown to whoever starts a rollout without one."""


class RolloutTarget(ContractModel):
    """Slots on one node: a model id and the replica indexes to install it for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str
    """The node: a NATS subject token."""
    model_id: str = ""
    """The model the slots serve; empty for admin installs. Ignored by upgrades and deletes."""
    replica_indexes: list[int] = Field(default_factory=lambda: [0])
    """The slots' replica indexes on the node. Ignored by upgrades and deletes."""


class FailurePolicy(StrEnum):
    """What a rollout does when slots fail."""

    CONTINUE = "continue"
    """Install every slot and report the failures at the end."""
    STOP = "stop"
    """Start no new slot once ``max_failures`` slots have failed; finish those in flight."""


class RolloutAction(StrEnum):
    """What a rollout does on its targets."""

    INSTALL = "install"
    """Install the backend on every target slot (the default)."""
    UPGRADE = "upgrade"
    """Upgrade the backend node by node, health-gated, with optional rollback."""
    DELETE = "delete"
    """Delete the backend node by node."""
    LOAD = "load"
    """Load a model into every target slot: a ``LoadModelWorkflow`` per slot, which installs
    (or joins the install of) the backend first."""

    @property
    def per_slot(self) -> bool:
        """Slots are the unit (install, load), not nodes (upgrade, delete)."""
        return self in (RolloutAction.INSTALL, RolloutAction.LOAD)


class NodeState(StrEnum):
    """One node's state within an upgrade or delete rollout."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_INSTALLED = "not_installed"
    """The node does not list the backend: nothing was sent to it."""
    SKIPPED = "skipped"
    """Never started: the rollout stopped or was cancelled first."""
    CANCELLED = "cancelled"


class RollbackState(StrEnum):
    """Whether a node of an upgrade rollout was returned to its previous version."""

    NONE = "none"
    RUNNING = "running"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class NodeOutcome(ContractModel):
    """One row of an upgrade or delete rollout's table."""

    node_id: str
    """The node."""
    state: NodeState = NodeState.QUEUED
    """Where the node's upgrade or delete stands."""
    workflow_id: str = ""
    """The node's ``UpgradeBackendWorkflow`` or ``DeleteBackendWorkflow``."""
    before_version: str = ""
    """The version ``backend.list`` showed before."""
    after_version: str = ""
    """The version ``backend.list`` showed after."""
    before_uri: str = ""
    """The source ``backend.list`` showed before (a stock worker's rollback re-pulls it)."""
    error: str = ""
    """The node's own words when its upgrade (or delete) failed."""
    slots: list[SlotRef] = Field(default_factory=list)
    """The node's slots of the backend that ran before its upgrade (a rollback brings them
    back)."""
    repulled: bool = False
    """The node re-pulled the backend (so it has a previous version to go back to)."""
    rollback: RollbackState = RollbackState.NONE
    """Whether the node was rolled back."""
    rollback_error: str = ""
    """Why the rollback failed, if it did."""


class SlotState(StrEnum):
    """One slot's state within a rollout, like LocalAI's per-node statuses."""

    QUEUED = "queued"
    INSTALLING = "installing"
    STILL_INSTALLING = "still_installing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """Never started: the rollout stopped or was cancelled first."""


FINISHED_STATES = frozenset(
    {SlotState.SUCCEEDED, SlotState.FAILED, SlotState.CANCELLED, SlotState.SKIPPED}
)


class SlotReport(ContractModel):
    """News of one slot for its rollout: a state change or, when finished, the outcome."""

    workflow_id: str
    """The slot's install workflow id."""
    state: SlotState
    """The slot's new state."""
    detail: str = ""
    """The last progress or probe the install reported."""
    address: str = ""
    """Set when the slot succeeded: where its backend process listens."""
    error: str = ""
    """Set when the slot failed: the node's (or the workflow's) words."""


class SlotsStarted(ContractModel):
    """A batch's slots once their installs are running: started by the rollout or joined.

    The rollout cancels only installs it started itself; a joined install belongs to whoever
    started it (another rollout, another team's workflow) and is only waited for.
    """

    started: list[str] = Field(default_factory=list)
    """Install workflow ids the rollout started itself (it may cancel them)."""
    joined: list[str] = Field(default_factory=list)
    """Install workflow ids someone else had started (only waited for)."""


class SlotStatus(ContractModel):
    """Where one slot of a rollout stands."""

    node_id: str
    """The slot's node."""
    model_id: str
    """The slot's model id; empty for an admin install."""
    replica_index: int
    """The slot's replica index."""
    workflow_id: str
    """The slot's install workflow id."""
    state: SlotState = SlotState.QUEUED
    """Where the slot stands."""
    address: str = ""
    """Where the slot's process listens, once it succeeded."""
    error: str = ""
    """Why the slot failed, in the node's (or the workflow's) words."""
    detail: str = ""
    """The last progress or probe the install reported."""
    shared: bool = False
    """Another requester was already installing this slot; this rollout waited for it."""


class RolloutInput(ContractModel):
    """Install ``backend`` on every slot of ``targets``, at most ``max_in_flight`` at once."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra=with_bounds(lambda: ROLLOUT_INPUT_BOUNDS)
    )

    backend: str
    """Gallery name (concrete, meta or alias) or the name of an external install."""
    targets: list[RolloutTarget] = Field(default_factory=list)
    """Slots per node (install; at most 10,000 slots in all, ``add_targets`` included), or nodes
    (upgrade, delete; empty: every node the registry knows with the backend installed)."""
    backend_galleries: list[GalleryConfig] | None = None
    """Galleries that replace the nodes' own, as for one install."""
    uri: str = ""
    """External install source, as for one install."""
    name: str = ""
    """Name of an external install."""
    alias: str = ""
    """Alias of an external install."""
    max_in_flight: int = 10
    """Install: slots installing at once."""
    failure_policy: FailurePolicy | None = None
    """Unset: ``continue`` for installs, ``stop`` for upgrades and deletes (a failed health
    gate stops a rolling upgrade)."""
    max_failures: int = 1
    """With the ``stop`` policy: how many failed slots (or nodes) stop the rollout."""
    action: RolloutAction = RolloutAction.INSTALL
    """``install`` (slots), ``upgrade`` or ``delete`` (nodes; ``targets`` may be omitted:
    then every known node that reports the backend installed is a target)."""
    max_unavailable: int = 1
    """Upgrade/delete: nodes worked on at once."""
    rollback: bool = False
    """Upgrade: when the rollout stops, return the nodes already upgraded to their previous
    version."""
    health_gate_seconds: float = 600.0
    """Upgrade: how long a node's slots have to be back and healthy after its re-pull."""
    force: bool = False
    """Delete: stop running slots of the backend first instead of refusing."""
    upgrade_options: dict[str, Any] = Field(default_factory=dict)
    """Upgrade: extra ``UpgradeBackendWorkflow`` input fields for every node (timeouts)."""
    install_options: dict[str, Any] = Field(default_factory=dict)
    """Extra ``InstallBackendWorkflow`` input fields for every slot (timeouts, intervals)."""
    load: dict[str, Any] = Field(default_factory=dict)
    """Load: ``LoadModelWorkflow`` input fields for every slot (``files``, ``load_options``,
    deadlines); the rollout sets the slot's own."""
    carried_slots: list[SlotStatus] = Field(default_factory=list)
    """Set by continue-as-new only: every slot known so far, finished or not."""
    carried_runs: int = 0
    """Set by continue-as-new only: runs before this one."""
    carried_stopped: str = ""
    """Set by continue-as-new only: why the rollout stopped starting slots."""

    def install_input(
        self, node_id: str, model_id: str, replica_index: int, rollout_id: str = ""
    ) -> InstallBackendInput:
        """The install's input for one slot, reporting to the rollout ``rollout_id``."""
        return InstallBackendInput.model_validate(
            {
                **self.install_options,
                "rollout_id": rollout_id,
                "node_id": node_id,
                "backend": self.backend,
                "model_id": model_id,
                "replica_index": replica_index,
                "backend_galleries": self.backend_galleries,
                "uri": self.uri,
                "name": self.name,
                "alias": self.alias,
            }
        )

    def load_input(
        self, node_id: str, model_id: str, replica_index: int, rollout_id: str = ""
    ) -> LoadModelInput:
        """The load's input for one slot; its install gets the rollout's install fields."""
        install = self.install_input(node_id, model_id, replica_index, rollout_id)
        install_fields = install.model_dump(
            mode="json", include={*self.install_options, *SHARED_FIELDS} - {"backend"}
        )
        return LoadModelInput.model_validate(
            {
                **self.load,
                "node_id": node_id,
                "backend": self.backend,
                "model_id": model_id,
                "replica_index": replica_index,
                "rollout_id": rollout_id,
                "install_options": install_fields,
            }
        )

    def slot_workflow_id(self, node_id: str, model_id: str, replica_index: int) -> str:
        """The workflow one slot of this rollout runs: its install, or its load."""
        return slot_workflow_id(self.action, node_id, self.backend, model_id, replica_index)

    def slot_count(self) -> int:
        """Slots the targets name, duplicates included (what bounds the work to check)."""
        return sum(len(target.replica_indexes) or 1 for target in self.targets)

    def problems(self) -> list[tuple[str, str]]:
        """Invalid fields with reasons, checked before anything starts.

        The fields every slot shares (what to install, ``install_options``) are checked once
        on a template install input, then each target's slot identity and derived workflow id.
        """
        if not self.action.per_slot:
            return self._node_problems()
        found: list[tuple[str, str]] = []
        slots = self.slot_count()
        if slots > MAX_ROLLOUT_SLOTS:
            return [("targets", f"name {slots} slots; the limit is {MAX_ROLLOUT_SLOTS}")]
        for field, value, high in (
            ("max_in_flight", self.max_in_flight, MAX_ROLLOUT_SLOTS),
            ("max_failures", self.max_failures, MAX_ROLLOUT_SLOTS),
            ("carried_runs", self.carried_runs, MAX_ROLLOUT_RUNS),
        ):
            problem = number_problem(value, 0 if field == "carried_runs" else 1, high)
            if problem:
                found.append((field, problem))
        if len(self.carried_slots) > MAX_ROLLOUT_SLOTS:
            found.append(
                (
                    "carried_slots",
                    f"has {len(self.carried_slots)}; the limit is {MAX_ROLLOUT_SLOTS}",
                )
            )
        stopped_problem = text_problem(self.carried_stopped, MAX_URI_LENGTH)
        if stopped_problem:
            found.append(("carried_stopped", stopped_problem))
        found += self._shared_problems()
        if self.action is RolloutAction.LOAD and not found:
            found += self._load_problems()
        elif self.load:
            found.append(("load", "is for the load action only"))
        if found:
            return found
        for position, target in enumerate(self.targets):
            for replica in target.replica_indexes or [0]:
                slot = slot_problems(target.node_id, target.model_id, replica)
                found += [(f"targets[{position}].{field}", reason) for field, reason in slot]
                if slot:
                    break
                workflow_id = self.slot_workflow_id(target.node_id, target.model_id, replica)
                if len(workflow_id) > MAX_WORKFLOW_ID_LENGTH:
                    found.append(
                        (
                            f"targets[{position}]",
                            f"its slot's workflow id would be {len(workflow_id)} characters "
                            f"long; the server's limit is {MAX_WORKFLOW_ID_LENGTH}",
                        )
                    )
                    break
        return found

    def node_ids(self) -> list[str]:
        """The target nodes of an upgrade or delete, each once, in order."""
        return list(dict.fromkeys(target.node_id for target in self.targets))

    def upgrade_input(self, node_id: str, rollout_id: str) -> UpgradeBackendInput:
        """The upgrade of one node: keeps the previous version until the rollout ends."""
        return UpgradeBackendInput.model_validate(
            {
                **self.upgrade_options,
                "node_id": node_id,
                "backend": self.backend,
                "backend_galleries": self.backend_galleries,
                "uri": self.uri,
                "name": self.name,
                "alias": self.alias,
                "keep_previous": True,
                "health_gate_seconds": self.health_gate_seconds,
                "install_options": self.install_options,
                "rollout_id": rollout_id,
            }
        )

    def effective_policy(self) -> FailurePolicy:
        """The failure policy, defaulted by action."""
        if self.failure_policy is not None:
            return self.failure_policy
        if self.action is RolloutAction.INSTALL:
            return FailurePolicy.CONTINUE
        return FailurePolicy.STOP

    def _node_problems(self) -> list[tuple[str, str]]:
        """An upgrade or delete: node ids, bounds, and the per-node input checked once."""
        found: list[tuple[str, str]] = []
        if len(self.targets) > MAX_ROLLOUT_SLOTS:
            return [
                ("targets", f"name {len(self.targets)} nodes; the limit is {MAX_ROLLOUT_SLOTS}")
            ]
        for field, value in (
            ("max_unavailable", self.max_unavailable),
            ("max_failures", self.max_failures),
        ):
            if problem := number_problem(value, 1, MAX_ROLLOUT_SLOTS):
                found.append((field, problem))
        for position, target in enumerate(self.targets):
            found += [
                (f"targets[{position}].{field}", reason)
                for field, reason in slot_problems(target.node_id, "", 0)
            ]
        for key in sorted(self.upgrade_options):
            if key in NODE_SET_UPGRADE_FIELDS:
                found.append((f"upgrade_options.{key}", "is set by the rollout for each node"))
        if found:
            return found
        try:
            template = self.upgrade_input(TEMPLATE_NODE, "")
        except pydantic.ValidationError as err:
            return [
                (f"upgrade_options.{'.'.join(str(p) for p in e['loc'])}", e["msg"])
                for e in err.errors(include_url=False, include_input=False)
            ]
        return template.problems()

    def _load_problems(self) -> list[tuple[str, str]]:
        """The fields every slot's load shares, checked once on a template slot."""
        for key in sorted(self.load):
            if key in LOAD_SET_FIELDS:
                return [(f"load.{key}", "is set by the rollout for each slot")]
        try:
            template = self.load_input(TEMPLATE_NODE, TEMPLATE_NODE, 0)
        except pydantic.ValidationError as err:
            return [
                (f"load.{'.'.join(str(p) for p in e['loc'])}", e["msg"])
                for e in err.errors(include_url=False, include_input=False)
            ]
        return [
            (f"load.{field}", reason)
            for field, reason in template.problems()
            if not field.startswith(("node_id", "model_id", "install_options"))
        ]

    def _shared_problems(self) -> list[tuple[str, str]]:
        """What is wrong with the fields every slot's install shares."""
        found: list[tuple[str, str]] = []
        for key in sorted(self.install_options):
            if key in PER_SLOT_FIELDS:
                found.append((f"install_options.{key}", "is set by the rollout for each slot"))
            elif key in SHARED_FIELDS:
                found.append((f"install_options.{key}", f"use the rollout's own {key!r} field"))
        if found:
            return found
        try:
            template = self.install_input(TEMPLATE_NODE, "", 0)
        except pydantic.ValidationError as err:
            return [
                (_option_field(error["loc"]), error["msg"])
                for error in err.errors(include_url=False, include_input=False)
            ]
        return [
            (
                field
                if field.split("[")[0].split(".")[0] in SHARED_FIELDS
                else f"install_options.{field}",
                reason,
            )
            for field, reason in template.problems()
        ]


NODE_SET_UPGRADE_FIELDS = frozenset(
    {
        "node_id",
        "backend",
        "backend_galleries",
        "uri",
        "name",
        "alias",
        "keep_previous",
        "rollback",
        "previous_uri",
        "health_gate_seconds",
        "install_options",
        "rollout_id",
        "op_id",
        "restore_slots",
    }
)
"""Upgrade input fields the rollout sets per node; ``upgrade_options`` may not set them."""

PER_SLOT_FIELDS = frozenset(
    {"node_id", "model_id", "replica_index", "op_id", "rollout_id", "resume"}
)
"""Install input fields the rollout sets per slot (an op id shared by slots would mix up their
progress); ``install_options`` may not set them."""

SHARED_FIELDS = frozenset({"backend", "backend_galleries", "uri", "name", "alias"})
"""Install input fields the rollout's own fields set for every slot."""

LOAD_SET_FIELDS = frozenset(
    {"node_id", "backend", "model_id", "replica_index", "rollout_id", "install_options"}
)
"""Load input fields the rollout sets per slot; ``load`` may not set them."""
ROLLOUT_INPUT_BOUNDS: dict[str, Keywords] = {
    "backend": text_bounds(MAX_NAME_LENGTH, required=True),
    "backend_galleries": items_bounds(MAX_GALLERIES),
    "uri": text_bounds(MAX_URI_LENGTH),
    "name": text_bounds(MAX_NAME_LENGTH),
    "alias": text_bounds(MAX_NAME_LENGTH),
    "max_in_flight": between(1, MAX_ROLLOUT_SLOTS),
    "max_failures": between(1, MAX_ROLLOUT_SLOTS),
    "max_unavailable": between(1, MAX_ROLLOUT_SLOTS),
    "health_gate_seconds": between(1.0, MAX_DEADLINE_SECONDS),
    "carried_slots": items_bounds(MAX_ROLLOUT_SLOTS),
    "carried_runs": between(0, MAX_ROLLOUT_RUNS),
    "carried_stopped": text_bounds(MAX_URI_LENGTH),
}
"""The bounds ``problems()`` checks, as JSON Schema keywords (the generated reference); the
slots the targets name are bounded too (at most 10,000, ``MAX_ROLLOUT_SLOTS``)."""

TEMPLATE_NODE = "template"
"""A valid node id for checking the shared fields once, before any target's own."""


def _option_field(location: tuple[int | str, ...]) -> str:
    """``install_options.<field>`` for a decoding error of a shared install option."""
    path = ".".join(str(part) for part in location)
    return f"install_options.{path}" if path else "install_options"


def slot_workflow_id(
    action: RolloutAction, node_id: str, backend: str, model_id: str, replica_index: int
) -> str:
    """A slot's install workflow id, or its load's for the ``load`` action."""
    if action is RolloutAction.LOAD:
        return load_workflow_id(node_id, backend, model_id, replica_index)
    return install_workflow_id(node_id, backend, model_id, replica_index)


def expand_slots(
    targets: list[RolloutTarget], backend: str, action: RolloutAction = RolloutAction.INSTALL
) -> list[SlotStatus]:
    """One queued slot per (node, model, replica), duplicates removed, order kept."""
    slots: dict[str, SlotStatus] = {}
    for target in targets:
        for replica in target.replica_indexes or [0]:
            workflow_id = slot_workflow_id(
                action, target.node_id, backend, target.model_id, replica
            )
            slots.setdefault(
                workflow_id,
                SlotStatus(
                    node_id=target.node_id,
                    model_id=target.model_id,
                    replica_index=replica,
                    workflow_id=workflow_id,
                ),
            )
    return list(slots.values())


class RolloutStatus(ContractModel):
    """The ``status`` query and the final result: every slot's outcome, counts by state."""

    backend: str
    """The backend rolled out."""
    counts: dict[str, int]
    """Slots (install) or nodes (upgrade, delete) per state."""
    slots: list[SlotStatus]
    """Every slot with its state, address or error (install)."""
    in_flight: int = 0
    """Slots installing right now."""
    action: RolloutAction = RolloutAction.INSTALL
    """What the rollout does."""
    nodes: list[NodeOutcome] = Field(default_factory=list)
    """Upgrade/delete: one row per node (before/after version, outcome, the node's error)."""
    cancelled: bool = False
    """The rollout was cancelled."""
    stopped: str = ""
    """Why the rollout stopped starting slots, if it did."""
    runs: int = 1
    """Workflow runs so far (continue-as-new starts a new run)."""


class InstallSlotsInput(ContractModel):
    """One batch of a rollout's slots for the ``install_slots`` activity.

    The batch travels as a rollout input whose ``targets`` are just the batch's slots, so the
    activity derives each slot's workflow id and install input exactly as the rollout does,
    and the history holds one compact copy of the install options per batch, not per slot.
    """

    rollout_id: str
    """The rollout's workflow id, signalled with the outcomes."""
    task_queue: str
    """Where the installs run: the rollout's own task queue."""
    batch: RolloutInput
    """The batch as a rollout input whose ``targets`` are just the batch's slots."""


class InstallSlotsResult(ContractModel):
    """The batch's outcomes the activity had not yet signalled to the rollout."""

    reports: list[SlotReport] = Field(default_factory=list)
    """Outcomes not yet signalled to the rollout."""


class InstallSlotsProgress(ContractModel):
    """Heartbeat details of ``install_slots``: what a retried attempt must not redo."""

    started: list[str] = Field(default_factory=list)
    """Installs this rollout started (a retry finds them running and still owns them)."""
    reported: list[str] = Field(default_factory=list)
    """Slots whose outcome the rollout already has."""


class AddTargetsResult(ContractModel):
    """Answer of the ``add_targets`` update."""

    added: int
    """Slots added to the rollout."""
    already_known: int
    """Slots the rollout already had (ignored)."""
