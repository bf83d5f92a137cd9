"""Knowing the fleet: the ``list_nodes`` and ``check_drift`` activities.

``list_nodes`` reads every entry of the node registry bucket (``protocol.announce``); entries
are untrusted: one that does not parse, is too large, or whose content names another node or
instance than its key is skipped and counted, never echoed. ``check_drift`` asks a batch of
nodes for ``backend.list`` concurrently and compares each backend with the gallery.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from nats.aio.client import Client as NATS
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.lifecycle import node_error_text
from activities.probe import ask_node
from durable_installs.contracts.drift import (
    BackendDrift,
    CheckDriftInput,
    CheckDriftResult,
    DriftState,
    NodeDrift,
)
from durable_installs.contracts.failures import REGISTRY_UNAVAILABLE
from durable_installs.contracts.names import CHECK_DRIFT_ACTIVITY, LIST_NODES_ACTIVITY
from durable_installs.contracts.nodes import FleetView
from durable_installs.protocol import subjects
from durable_installs.protocol.announce import (
    NODE_REGISTRY_BUCKET,
    open_registry,
    read_announcements,
)
from durable_installs.protocol.gallery import (
    GalleryEntry,
    GalleryIndexError,
    parse_index,
    read_index_source,
)
from durable_installs.protocol.messages import BackendListReply, NodeBackendInfo
from durable_installs.telemetry import Telemetry

GALLERY_FETCH_TIMEOUT = 30.0
"""Bound on reading one gallery index for a drift check."""


def pinned_digest(uri: str) -> str:
    """``sha256:<hex>`` of an OCI reference pinned with ``@sha256:…``, else ""."""
    _, sep, digest = uri.rpartition("@")
    return digest.lower() if sep and digest.lower().startswith("sha256:") else ""


def compare(installed: NodeBackendInfo, entry: GalleryEntry | None) -> BackendDrift:
    """Classify one installed backend against its gallery entry (see :mod:`contracts.drift`).

    Versions decide when both sides have one; then a URI the entry no longer lists (nor its
    mirrors); then a digest the entry pins (an ``@sha256:`` reference, or ``sha256`` of an
    archive). Anything else is ``unknown``: the same mutable URI may or may not hold new bits.
    """
    drift = BackendDrift(
        name=installed.name,
        state=DriftState.UNKNOWN,
        reason="",
        installed_version=installed.version,
        installed_uri=installed.uri,
        installed_digest=installed.digest,
        gallery_version=entry.version if entry else "",
        gallery_uri=entry.uri if entry else "",
    )
    if entry is None:
        return drift.model_copy(
            update={"state": DriftState.NOT_IN_GALLERY, "reason": "no gallery entry"}
        )
    if entry.is_meta:
        return drift.model_copy(
            update={"reason": "meta entry; its concrete build is compared instead"}
        )
    known_uris = set(entry.sources())
    if entry.version and installed.version:
        if entry.version != installed.version:
            return drift.model_copy(
                update={
                    "state": DriftState.OUTDATED,
                    "reason": f"version {installed.version} installed, {entry.version} current",
                }
            )
        if installed.uri and known_uris and installed.uri not in known_uris:
            return drift.model_copy(
                update={"state": DriftState.OUTDATED, "reason": "same version, another source"}
            )
        return drift.model_copy(
            update={"state": DriftState.UP_TO_DATE, "reason": f"version {entry.version}"}
        )
    if installed.uri and known_uris and installed.uri not in known_uris:
        return drift.model_copy(
            update={"state": DriftState.OUTDATED, "reason": "the gallery points elsewhere now"}
        )
    wanted = pinned_digest(entry.uri) or (f"sha256:{entry.sha256.lower()}" if entry.sha256 else "")
    if wanted and installed.digest:
        if installed.digest.lower() == wanted:
            return drift.model_copy(
                update={"state": DriftState.UP_TO_DATE, "reason": "same digest"}
            )
        return drift.model_copy(
            update={"state": DriftState.OUTDATED, "reason": "the gallery pins another digest"}
        )
    missing = "no version on the node" if entry.version else "no version in the gallery"
    return drift.model_copy(update={"reason": f"{missing} and no digest to compare"})


def read_galleries(input: CheckDriftInput, notes: list[str]) -> dict[str, GalleryEntry]:
    """Entries by name, the first gallery naming a backend winning (the install's order)."""
    entries: dict[str, GalleryEntry] = {}
    for gallery in input.backend_galleries:
        try:
            parsed = parse_index(read_index_source(gallery.url, GALLERY_FETCH_TIMEOUT), gallery.url)
        except GalleryIndexError as err:
            notes.append(f"gallery {gallery.name}: {err}")
            continue
        for entry in parsed:
            entries.setdefault(entry.name, entry)
    return entries


class FleetActivities:
    """The node registry and drift checks; holds the worker's NATS connection."""

    def __init__(self, nc: NATS, telemetry: Telemetry | None = None) -> None:
        self._nc = nc
        self._tracer = (telemetry or Telemetry()).tracer()

    @activity.defn(name=LIST_NODES_ACTIVITY)
    async def list_nodes(self) -> FleetView:
        """Every live announcement; node ids announced by several agent processes.

        Creates the bucket when it does not exist yet (a fresh NATS server), so an empty
        fleet is an empty view, not an error.
        """
        try:
            kv = await open_registry(self._nc, create=True)
            nodes, skipped = await read_announcements(kv)
        except Exception as err:  # no JetStream, permissions, connection trouble
            raise ApplicationError(
                f"the node registry (JetStream key-value bucket {NODE_REGISTRY_BUCKET}) cannot "
                f"be read: {type(err).__name__}; run nats-server with JetStream (-js), or check "
                "without it (use_registry false, explicit nodes)",
                type=REGISTRY_UNAVAILABLE,
            ) from err
        counts = Counter(n.node_id for n in nodes)
        return FleetView(
            nodes=nodes,
            duplicates=sorted(node for node, count in counts.items() if count > 1),
            skipped_entries=skipped,
        )

    @activity.defn(name=CHECK_DRIFT_ACTIVITY)
    async def check_drift(self, input: CheckDriftInput) -> CheckDriftResult:
        """``backend.list`` of every node of the batch, each backend compared with the gallery."""
        notes: list[str] = []
        entries = await asyncio.to_thread(read_galleries, input, notes)
        wanted = {name.lower() for name in input.backends}
        nodes = await asyncio.gather(
            *(self._node_drift(node, input, entries, wanted) for node in input.node_ids)
        )
        return CheckDriftResult(nodes=list(nodes), gallery_notes=notes)

    async def _node_drift(
        self,
        node_id: str,
        input: CheckDriftInput,
        entries: dict[str, GalleryEntry],
        wanted: set[str],
    ) -> NodeDrift:
        answer = await ask_node(
            self._nc,
            self._tracer,
            "backend.list",
            subjects.backend_list(node_id),
            BackendListReply,
            input.timeout_seconds,
        )
        reply = answer.reply
        if reply is None:
            return NodeDrift(node_id=node_id, answered=False, error=answer.note)
        if reply.error:
            return NodeDrift(
                node_id=node_id,
                answered=False,
                error=f"backend.list failed: {node_error_text(reply.error)}",
            )
        backends = [
            compare(info, entries.get(info.name))
            for info in reply.backends or []
            if not info.is_meta
            and not info.is_system
            and (not wanted or info.name.lower() in wanted)
        ]
        return NodeDrift(node_id=node_id, answered=True, backends=backends)
