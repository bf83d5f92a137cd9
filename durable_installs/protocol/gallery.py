"""Backend gallery index format and name resolution.

A gallery index is a YAML (or JSON) list of entries. Concrete entries carry an artifact
``uri``; meta entries carry a ``capabilities`` map from hardware capability to a concrete
entry name. Nodes, and the orchestrator's probe, must map meta and alias names onto concrete
names: ``backend.list`` reports ``cpu-llama-cpp`` but not ``llama-cpp``.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

CAPABILITY_FALLBACKS = ("default", "cpu")


class GalleryEntry(BaseModel):
    """One entry of a gallery index; descriptive fields are kept but not interpreted."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    alias: str = ""
    uri: str = ""
    mirrors: list[str] = Field(default_factory=list)
    sha256: str = ""
    version: str = ""
    capabilities: dict[str, str] = Field(default_factory=dict)
    description: str = ""

    @field_validator("mirrors", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("capabilities", mode="before")
    @classmethod
    def _null_map(cls, value: Any) -> Any:
        return {} if value is None else value

    @property
    def is_meta(self) -> bool:
        """A meta entry points at concrete builds per capability and has no artifact."""
        return bool(self.capabilities) and not self.uri

    def sources(self) -> tuple[str, ...]:
        """Where the artifact may come from, in LocalAI's download order.

        ``uri``, each mirror, then the development build of a released image: ``uri`` with
        its first ``latest-`` replaced by ``master-``, then that with ``-development``
        appended (``…:latest-cpu-x`` → ``…:master-cpu-x`` → ``…:master-cpu-x-development``).
        """
        listed = [self.uri, *self.mirrors]
        if "latest-" in self.uri:
            master = self.uri.replace("latest-", "master-", 1)
            listed += [master, f"{master}-development"]
        return tuple(dict.fromkeys(s for s in listed if s))


class GalleryIndexError(ValueError):
    """The index could not be fetched or is not a list of entries."""


def parse_index(text: str | bytes, source: str = "<index>") -> list[GalleryEntry]:
    """Entries of a YAML or JSON index (YAML is a superset of JSON, anchors included)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise GalleryIndexError(f"gallery index {source} is not valid YAML/JSON: {err}") from err
    if data is None:
        return []
    if not isinstance(data, list):
        raise GalleryIndexError(f"gallery index {source} must be a list of entries")
    entries = []
    for position, item in enumerate(data):
        if not isinstance(item, dict) or not item.get("name"):
            raise GalleryIndexError(f"gallery index {source}: entry {position} has no name")
        entries.append(GalleryEntry.model_validate(item))
    return entries


def read_index_source(url: str, timeout: float = 120.0) -> bytes:
    """Fetch an index from a ``file://`` path, a plain path or an ``http(s)://`` URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path if parsed.scheme else url))
        try:
            return path.read_bytes()
        except OSError as err:
            raise GalleryIndexError(f"reading gallery index {url}: {err}") from err
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body: bytes = response.read()
                return body
        except OSError as err:
            raise GalleryIndexError(f"fetching gallery index {url}: {err}") from err
    raise GalleryIndexError(f"gallery index {url}: unsupported scheme {parsed.scheme!r}")


def find_entry(entries: list[GalleryEntry], name: str) -> GalleryEntry | None:
    """The entry called ``name`` (case-insensitive), ignoring a ``<gallery>@`` prefix."""
    wanted = name.split("@", 1)[-1].lower()
    for entry in entries:
        if entry.name.lower() == wanted:
            return entry
    return None


def concrete_for_capability(meta: GalleryEntry, capability: str) -> str | None:
    """The concrete name a meta entry picks on a node with ``capability``."""
    for key in (capability, *CAPABILITY_FALLBACKS):
        if key in meta.capabilities:
            return meta.capabilities[key]
    return None


def candidate_concrete_names(entries: list[GalleryEntry], name: str) -> set[str]:
    """Every concrete name that ``name`` could mean on some node.

    Used where the node's capability is unknown (the orchestrator's probe): a meta name maps to
    all of its capability targets, an alias to every entry that carries it.
    """
    wanted = name.split("@", 1)[-1].lower()
    names = {wanted}
    entry = find_entry(entries, wanted)
    if entry is not None and entry.is_meta:
        names.update(target.lower() for target in entry.capabilities.values())
    names.update(e.name.lower() for e in entries if e.alias.lower() == wanted and not e.is_meta)
    return names
