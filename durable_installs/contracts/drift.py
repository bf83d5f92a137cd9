"""Drift: what each node has installed compared with the gallery's current entry.

``DriftCheckWorkflow`` asks every known node (announced in the registry, plus explicit
targets for stock workers) for ``backend.list`` and classifies each backend:

- ``up_to_date``: the gallery's version (and, when both are known, URI or digest) matches;
- ``outdated``: the gallery has another version, URI or digest;
- ``unknown``: nothing comparable (no version on one side, same mutable URI, no digest);
- ``not_in_gallery``: the gallery has no entry of that name (external install, removed entry).

With ``start_upgrades`` it starts one ``RolloutBackendWorkflow`` with ``"action": "upgrade"``
per outdated backend, targeting exactly the nodes where it is outdated.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field

from durable_installs.contracts.install import describe_problems, gallery_problems
from durable_installs.contracts.limits import (
    MAX_GALLERIES,
    MAX_INTERVAL_SECONDS,
    MAX_NAME_LENGTH,
    MIN_DURATION_SECONDS,
    Keywords,
    between,
    items_bounds,
    number_problem,
    text_bounds,
    text_problem,
    with_bounds,
)
from durable_installs.contracts.model import ContractModel
from durable_installs.protocol.messages import GalleryConfig
from durable_installs.protocol.subjects import token_problem

MAX_DRIFT_NODES = 10_000
"""Most nodes one drift check covers (explicit plus announced)."""

MAX_DRIFT_BACKENDS = 256
"""Most backend names in the ``backends`` filter."""

NODES_PER_CHECK = 50
"""Nodes one ``check_drift`` activity asks (concurrently); the workflow runs batches."""

MAX_UPGRADE_OPTIONS_BYTES = 16 * 1024

MINIMAL_DRIFT_INPUT = {"backend_galleries": [{"name": "main", "url": "https://…/index.yaml"}]}


class DriftState(StrEnum):
    """How one installed backend compares with the gallery."""

    UP_TO_DATE = "up_to_date"
    OUTDATED = "outdated"
    UNKNOWN = "unknown"
    NOT_IN_GALLERY = "not_in_gallery"


class DriftCheckInput(ContractModel):
    """Which nodes, which gallery, and whether to act on what is outdated."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra=with_bounds(lambda: DRIFT_INPUT_BOUNDS)
    )

    backend_galleries: list[GalleryConfig]
    """The galleries whose entries are "current" (the first gallery naming a backend wins)."""
    nodes: list[str] = Field(default_factory=list)
    """Explicit node ids, e.g. stock LocalAI workers, which do not announce themselves."""
    use_registry: bool = True
    """Also check every node announced in the node registry."""
    backends: list[str] = Field(default_factory=list)
    """Only these backend names; empty checks every installed backend."""
    start_upgrades: bool = False
    """Start an upgrade rollout for every outdated backend (off: report only)."""
    upgrade_options: dict[str, Any] = Field(default_factory=dict)
    """Extra ``RolloutBackendWorkflow`` input fields (e.g. ``max_unavailable``, ``rollback``);
    ``backend``, ``action``, ``targets`` and ``backend_galleries`` are refused (drift decides)."""
    upgrade_task_queue: str = ""
    """Task queue of the upgrade rollouts; empty uses the drift check's own."""
    request_timeout_seconds: float = 10.0
    """How long each node's ``backend.list`` may take."""

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field with the reason; values are never echoed."""
        found: list[tuple[str, str]] = []
        if not self.backend_galleries:
            found.append(("backend_galleries", "it is empty; name at least one gallery"))
        found += gallery_problems(self.backend_galleries)
        if len(self.nodes) > MAX_DRIFT_NODES:
            found.append(("nodes", f"has {len(self.nodes)} ids; the limit is {MAX_DRIFT_NODES}"))
        else:
            for position, node in enumerate(self.nodes):
                problem = token_problem(node)
                if problem:
                    found.append((f"nodes[{position}]", problem))
        if len(self.backends) > MAX_DRIFT_BACKENDS:
            found.append(
                ("backends", f"has {len(self.backends)} names; the limit is {MAX_DRIFT_BACKENDS}")
            )
        else:
            for position, name in enumerate(self.backends):
                problem = text_problem(name, MAX_NAME_LENGTH, required=True)
                if problem:
                    found.append((f"backends[{position}]", problem))
        reserved = {"backend", "action", "targets", "backend_galleries"} & set(self.upgrade_options)
        if reserved:
            found.append(
                ("upgrade_options", f"sets {', '.join(sorted(reserved))}, which drift decides")
            )
        size = len(str(self.upgrade_options).encode())
        if size > MAX_UPGRADE_OPTIONS_BYTES:
            found.append(
                ("upgrade_options", f"is {size} bytes; the limit is {MAX_UPGRADE_OPTIONS_BYTES}")
            )
        if self.upgrade_task_queue:
            problem = text_problem(self.upgrade_task_queue, MAX_NAME_LENGTH)
            if problem:
                found.append(("upgrade_task_queue", problem))
        problem = number_problem(
            self.request_timeout_seconds, MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS, "seconds"
        )
        if problem:
            found.append(("request_timeout_seconds", problem))
        return found

    def describe_problems(self) -> str:
        """One line naming every invalid field, or "" when valid."""
        problems = self.problems()
        return f"invalid input: {describe_problems(problems)}" if problems else ""


DRIFT_INPUT_BOUNDS: dict[str, Keywords] = {
    "backend_galleries": {"minItems": 1} | items_bounds(MAX_GALLERIES),
    "nodes": items_bounds(MAX_DRIFT_NODES),
    "backends": items_bounds(MAX_DRIFT_BACKENDS),
    "upgrade_options": {"x-max-bytes": MAX_UPGRADE_OPTIONS_BYTES},
    "upgrade_task_queue": text_bounds(MAX_NAME_LENGTH),
    "request_timeout_seconds": between(MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
}
"""The bounds ``problems()`` checks, as JSON Schema keywords (the generated reference)."""


class BackendDrift(ContractModel):
    """One installed backend on one node, compared with the gallery."""

    name: str
    """The backend as ``backend.list`` shows it."""
    state: DriftState
    """How it compares with the gallery's current entry."""
    reason: str
    """Why it is in that state, in words."""
    installed_version: str = ""
    """Version the node reports; empty when it reports none."""
    installed_uri: str = ""
    """Source the node installed it from."""
    installed_digest: str = ""
    """Digest the node recorded (OCI manifest or archive sha256)."""
    gallery_version: str = ""
    """Version of the gallery's current entry."""
    gallery_uri: str = ""
    """Source of the gallery's current entry."""


class NodeDrift(ContractModel):
    """Every installed backend of one node, or why the node could not be asked."""

    node_id: str
    """The node."""
    answered: bool
    """The node answered ``backend.list``; an unreachable node is never up to date."""
    error: str = ""
    """Why the node could not be asked, when it did not answer."""
    backends: list[BackendDrift] = Field(default_factory=list)
    """Each installed backend compared with the gallery."""


class CheckDriftInput(ContractModel):
    """One ``check_drift`` batch: these nodes against these galleries."""

    node_ids: list[str]
    """The nodes of this batch."""
    backend_galleries: list[GalleryConfig]
    """The galleries whose entries are current."""
    backends: list[str] = Field(default_factory=list)
    """Only these backend names; empty checks every installed backend."""
    timeout_seconds: float = 10.0
    """How long each node's ``backend.list`` may take."""


class CheckDriftResult(ContractModel):
    """One batch's findings, and the gallery problems met while reading the indexes."""

    nodes: list[NodeDrift]
    """Each node of the batch with its backends."""
    gallery_notes: list[str] = Field(default_factory=list)
    """Problems met while reading the gallery indexes."""


class UpgradeStarted(ContractModel):
    """An upgrade rollout the drift check started (or found already running)."""

    backend: str
    """The outdated backend."""
    workflow_id: str
    """The upgrade rollout's workflow id."""
    targets: list[str]
    """The nodes where the backend is outdated: the rollout's targets."""
    already_running: bool = False
    """A rollout with that id was already running; it was not started again."""


class DriftReport(ContractModel):
    """The whole check: per node, per backend; counts; what was started."""

    checked_at: datetime
    """When the check ran."""
    nodes: list[NodeDrift] = Field(default_factory=list)
    """Every node checked, with each backend's state."""
    duplicates: list[str] = Field(default_factory=list)
    """Node ids announced by more than one agent process."""
    gallery_notes: list[str] = Field(default_factory=list)
    """Problems met while reading the gallery indexes."""
    upgrades: list[UpgradeStarted] = Field(default_factory=list)
    """The upgrade rollouts started (with ``start_upgrades``)."""

    def counts(self) -> dict[str, int]:
        """How many node/backend pairs are in each state, plus ``unreachable`` nodes."""
        counter: Counter[str] = Counter()
        for node in self.nodes:
            if not node.answered:
                counter["unreachable"] += 1
            for backend in node.backends:
                counter[backend.state.value] += 1
        return dict(sorted(counter.items()))

    def outdated(self) -> dict[str, list[str]]:
        """Outdated backend name → node ids where it is outdated (sorted)."""
        found: dict[str, list[str]] = {}
        for node in self.nodes:
            for backend in node.backends:
                if backend.state is DriftState.OUTDATED:
                    found.setdefault(backend.name, []).append(node.node_id)
        return {name: sorted(nodes) for name, nodes in sorted(found.items())}
