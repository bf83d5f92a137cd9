"""Resolving a requested name against the gallery indexes (reference §10.1, §10.3 step 2-3).

A request may name a concrete entry, a meta entry (resolved by this node's capability,
falling back to ``default`` then ``cpu``) or an alias shared by several concrete builds. All
of them end as one concrete entry, whose name is the key of the agent's per-backend lock and
the directory it installs into. Gallery-supplied names are validated like request names: an
index must not be able to make the agent write outside its backends directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from node_agent.errors import InstallError
from node_agent.names import name_problem
from protocol.gallery import (
    GalleryEntry,
    GalleryIndexError,
    concrete_for_capability,
    find_entry,
    parse_index,
    read_index_source,
)
from protocol.messages import GalleryConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolution:
    """What a requested name installs: one concrete entry, maybe reached through a meta entry."""

    requested: str
    concrete: GalleryEntry
    gallery: GalleryConfig
    meta: GalleryEntry | None = None


def load_index(gallery: GalleryConfig, timeout: float) -> list[GalleryEntry]:
    """Entries of one gallery, trying its URL then each mirror. Blocking."""
    errors = []
    for source in (gallery.url, *gallery.mirrors):
        try:
            return parse_index(read_index_source(source, timeout=timeout), source)
        except GalleryIndexError as err:
            errors.append(str(err))
    raise GalleryIndexError("; ".join(errors))


def _checked(entry: GalleryEntry, gallery: GalleryConfig) -> GalleryEntry:
    problem = name_problem(entry.name)
    if problem is not None:
        raise InstallError(
            f'invalid backend name "{entry.name}" in gallery "{gallery.name}": {problem}'
        )
    return entry


def _by_alias(entries: list[GalleryEntry], alias: str, capability: str) -> GalleryEntry | None:
    matches = [e for e in entries if not e.is_meta and e.uri and e.alias.lower() == alias.lower()]
    for token in (capability, "cpu"):
        for entry in matches:
            if token and token != "default" and token in entry.name:
                return entry
    return matches[0] if matches else None


def resolve(
    name: str, galleries: list[GalleryConfig], capability: str, timeout: float = 120.0
) -> Resolution:
    """Resolve ``name`` (``<gallery>@<name>`` allowed) to a concrete entry. Blocking.

    Raises :class:`InstallError` with the catalogue texts (``no backend found with name``).
    """
    if not name:
        raise InstallError("backend name is empty")
    gallery_name, _, bare = name.rpartition("@")
    selected = [g for g in galleries if not gallery_name or g.name == gallery_name]
    load_errors = []
    for gallery in selected:
        try:
            entries = load_index(gallery, timeout)
        except GalleryIndexError as err:
            log.warning("gallery %s unavailable: %s", gallery.name, err)
            load_errors.append(str(err))
            continue
        entry = find_entry(entries, bare)
        if entry is not None and entry.is_meta:
            target = concrete_for_capability(entry, capability)
            if target is None:
                raise InstallError(
                    f"no backend found with capabilities for {capability!r} "
                    f"in meta backend {entry.name!r}"
                )
            concrete = find_entry(entries, target)
            if concrete is None or concrete.is_meta:
                raise InstallError(f'no backend found with name "{target}"')
            return Resolution(name, _checked(concrete, gallery), gallery, _checked(entry, gallery))
        if entry is None:
            entry = _by_alias(entries, bare, capability)
        if entry is not None:
            return Resolution(name, _checked(entry, gallery), gallery)
    if selected and len(load_errors) == len(selected):
        raise InstallError("; ".join(load_errors))
    raise InstallError(f'no backend found with name "{name}"')
