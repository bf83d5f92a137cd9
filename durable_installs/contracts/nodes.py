"""The fleet as the orchestrator sees it: node announcements read from the KV bucket.

The announcement's wire shape lives in :mod:`protocol.announce` (the node agent builds it
without importing contracts); it is re-exported here so workflows and clients import every
shared model from :mod:`contracts`.
"""

from __future__ import annotations

from pydantic import Field

from durable_installs.contracts.model import ContractModel
from durable_installs.protocol.announce import (
    NODE_ANNOUNCE_INTERVAL_SECONDS,
    NODE_ANNOUNCE_TTL_SECONDS,
    NODE_REGISTRY_BUCKET,
    NodeAnnouncement,
)

__all__ = [
    "NODE_ANNOUNCE_INTERVAL_SECONDS",
    "NODE_ANNOUNCE_TTL_SECONDS",
    "NODE_REGISTRY_BUCKET",
    "FleetView",
    "NodeAnnouncement",
]


class FleetView(ContractModel):
    """Every live announcement, and the node ids announced by more than one agent process.

    A duplicate node id means two agents answer the same subjects: installs may land on
    either. It is reported, never resolved here (the agents' own duplicate check stops the
    younger one).
    """

    nodes: list[NodeAnnouncement] = Field(default_factory=list)
    """Every live announcement in the registry."""
    duplicates: list[str] = Field(default_factory=list)
    """Node ids announced by more than one agent process."""
    skipped_entries: int = 0
    """Entries that were unreadable or larger than allowed; never echoed."""

    def node_ids(self) -> list[str]:
        """Distinct announced node ids, sorted."""
        return sorted({n.node_id for n in self.nodes})
