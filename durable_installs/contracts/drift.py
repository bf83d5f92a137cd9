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

from pydantic import BaseModel, ConfigDict, Field

from durable_installs.contracts.install import describe_problems, gallery_problems
from durable_installs.contracts.limits import (
    MAX_INTERVAL_SECONDS,
    MAX_NAME_LENGTH,
    MIN_DURATION_SECONDS,
    number_problem,
    text_problem,
)
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


class DriftCheckInput(BaseModel):
    """Which nodes, which gallery, and whether to act on what is outdated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    """Extra ``RolloutBackendWorkflow`` input fields (e.g. ``max_unavailable``, ``rollback``)."""
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


class BackendDrift(BaseModel):
    """One installed backend on one node, compared with the gallery."""

    name: str
    state: DriftState
    reason: str
    installed_version: str = ""
    installed_uri: str = ""
    installed_digest: str = ""
    gallery_version: str = ""
    gallery_uri: str = ""


class NodeDrift(BaseModel):
    """Every installed backend of one node, or why the node could not be asked."""

    node_id: str
    answered: bool
    error: str = ""
    backends: list[BackendDrift] = Field(default_factory=list)


class CheckDriftInput(BaseModel):
    """One ``check_drift`` batch: these nodes against these galleries."""

    node_ids: list[str]
    backend_galleries: list[GalleryConfig]
    backends: list[str] = Field(default_factory=list)
    timeout_seconds: float = 10.0


class CheckDriftResult(BaseModel):
    """One batch's findings, and the gallery problems met while reading the indexes."""

    nodes: list[NodeDrift]
    gallery_notes: list[str] = Field(default_factory=list)


class UpgradeStarted(BaseModel):
    """An upgrade rollout the drift check started (or found already running)."""

    backend: str
    workflow_id: str
    targets: list[str]
    already_running: bool = False


class DriftReport(BaseModel):
    """The whole check: per node, per backend; counts; what was started."""

    checked_at: datetime
    nodes: list[NodeDrift] = Field(default_factory=list)
    duplicates: list[str] = Field(default_factory=list)
    """Node ids announced by more than one agent process."""
    gallery_notes: list[str] = Field(default_factory=list)
    upgrades: list[UpgradeStarted] = Field(default_factory=list)

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
