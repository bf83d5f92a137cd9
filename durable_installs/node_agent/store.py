"""The backends directory: layout, ``metadata.json``, name lookup, staging and atomic swap.

Layout (docs/protocol.md §10)::

    <root>/<concrete>/run.sh + metadata.json   an installed backend
    <root>/<meta>/metadata.json                 {"meta_backend_for": "<concrete>", ...}
    <root>/<name>.install-tmp/                  staging of an install in progress
    <root>/<name>.install-backup/               previous version during a swap
    <root>/.downloads/<id>.partial              resumable downloads
    <root>/.previous/<concrete>/                the version an upgrade replaced, kept for a
                                                rollback until the rollout drops it

A request may name a backend by concrete name, meta name or alias; :meth:`BackendStore.lookup`
maps all three onto the one concrete directory, which is what the agent locks and records on
its processes. Leftovers of an interrupted install are cleaned at the next attempt and at
start-up; an interrupted swap is rolled back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durable_installs.node_agent.names import RESERVED_SUFFIXES, name_problem, strip_gallery
from durable_installs.protocol.messages import NodeBackendInfo

log = logging.getLogger(__name__)

RUN_FILE = "run.sh"
METADATA_FILE = "metadata.json"
STAGING_SUFFIX = ".install-tmp"
BACKUP_SUFFIX = ".install-backup"
DOWNLOADS_DIR = ".downloads"
PREVIOUS_DIR = ".previous"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Metadata:
    """``metadata.json`` of an installed (or meta) backend; empty fields are omitted."""

    name: str
    alias: str = ""
    meta_backend_for: str = ""
    gallery_url: str = ""
    installed_at: str = ""
    version: str = ""
    uri: str = ""
    digest: str = ""

    def to_json(self) -> str:
        """JSON with empty fields dropped, as LocalAI writes it."""
        return json.dumps({k: v for k, v in asdict(self).items() if v}, indent=2)

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Metadata:
        """Known fields of ``data``; a missing name falls back to the directory name."""
        known = {f.name for f in fields(cls)}
        values = {k: str(v) for k, v in data.items() if k in known and v is not None}
        values["name"] = values.get("name") or name
        return cls(**values)


@dataclass(frozen=True)
class Installed:
    """A runnable concrete backend on disk."""

    name: str
    directory: Path
    metadata: Metadata

    @property
    def run_file(self) -> Path:
        """The entry point the agent starts."""
        return self.directory / RUN_FILE


def directory_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of a directory, None if it is gone; changes when a swap replaces it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class BackendStore:
    """Reads and changes the backends directory. Callers hold the backend's lock."""

    def __init__(self, root: Path, capability: str = "default") -> None:
        self.root = root
        self._capability = capability

    # --- paths -----------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """``<root>/<name>`` for a validated name; refuses anything that could escape."""
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"backend name {name!r} is not allowed: {problem}")
        path = self.root / name
        if path.parent != self.root:
            raise ValueError(f"backend name {name!r} escapes the backends directory")
        return path

    def staging(self, name: str) -> Path:
        """The staging directory of an install of ``name``."""
        return self.root / f"{self.path(name).name}{STAGING_SUFFIX}"

    def backup(self, name: str) -> Path:
        """Where the previous version of ``name`` waits during a swap."""
        return self.root / f"{self.path(name).name}{BACKUP_SUFFIX}"

    def downloads(self) -> Path:
        """Directory of resumable ``.partial`` downloads."""
        path = self.root / DOWNLOADS_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- reading ---------------------------------------------------------------------------

    def _names(self) -> list[str]:
        try:
            children = sorted(self.root.iterdir())
        except OSError:
            return []
        return [
            c.name
            for c in children
            if c.is_dir() and not c.name.startswith(".") and not c.name.endswith(RESERVED_SUFFIXES)
        ]

    def metadata(self, name: str) -> Metadata | None:
        """Metadata of directory ``name`` (``{"name": dir}`` without a file); None if absent."""
        directory = self.root / name
        if not directory.is_dir():
            return None
        try:
            data = json.loads((directory / METADATA_FILE).read_text())
        except (OSError, ValueError):
            data = {}
        return Metadata.from_dict(name, data if isinstance(data, dict) else {})

    def _concrete(self, name: str) -> Installed | None:
        meta = self.metadata(name)
        if meta is None or meta.meta_backend_for or not (self.root / name / RUN_FILE).is_file():
            return None
        return Installed(name=name, directory=self.root / name, metadata=meta)

    def lookup(self, requested: str) -> Installed | None:
        """The runnable concrete backend that ``requested`` (concrete, meta or alias) means."""
        name = strip_gallery(requested)
        if name_problem(name) is not None:
            return None
        meta = self.metadata(name)
        if meta is not None:
            if meta.meta_backend_for:
                return self._concrete(meta.meta_backend_for)
            found = self._concrete(name)
            if found is not None:
                return found
        by_alias = [
            c for n in self._names() if (c := self._concrete(n)) and c.metadata.alias == name
        ]
        return self._preferred(by_alias)

    def _preferred(self, candidates: list[Installed]) -> Installed | None:
        """Several builds share an alias: prefer this host's capability, then ``cpu``."""
        for token in (self._capability, "cpu"):
            for candidate in candidates:
                if token and token != "default" and token in candidate.name:
                    return candidate
        return candidates[0] if candidates else None

    def names_for(self, concrete: str) -> set[str]:
        """Every name that maps onto ``concrete``: itself, its alias, meta names pointing at it."""
        names = {concrete}
        meta = self.metadata(concrete)
        if meta is not None and meta.alias:
            names.add(meta.alias)
        for name in self._names():
            other = self.metadata(name)
            if other is not None and other.meta_backend_for == concrete:
                names.add(name)
        return names

    def rows(self) -> list[NodeBackendInfo]:
        """Runnable backends and meta backends, as ``backend.list`` reports them."""
        rows = []
        for name in self._names():
            meta = self.metadata(name)
            if meta is None or meta.name != name:
                continue
            if meta.meta_backend_for:
                if self._concrete(meta.meta_backend_for) is None:
                    continue
            elif self._concrete(name) is None:
                continue
            rows.append(
                NodeBackendInfo(
                    name=name,
                    is_meta=bool(meta.meta_backend_for),
                    installed_at=meta.installed_at,
                    gallery_url=meta.gallery_url,
                    version=meta.version,
                    uri=meta.uri,
                    digest=meta.digest,
                )
            )
        return rows

    # --- changing --------------------------------------------------------------------------

    def prepare_staging(self, name: str) -> Path:
        """A fresh, empty staging directory; leftovers of an interrupted attempt go first."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(name)
        if final.is_file() or final.is_symlink():
            final.unlink()  # stray plain file of the old flat layout
        self.clean_leftovers(name)
        staging = self.staging(name)
        staging.mkdir()
        return staging

    def clean_leftovers(self, name: str) -> None:
        """Remove staging of ``name``; roll back or drop a backup left by an interrupted swap."""
        shutil.rmtree(self.staging(name), ignore_errors=True)
        backup, final = self.backup(name), self.path(name)
        if backup.exists():
            if final.exists():
                shutil.rmtree(backup, ignore_errors=True)
            else:
                log.warning("restoring %s from an interrupted swap", final)
                os.rename(backup, final)

    def recover(self) -> None:
        """Start-up clean-up of every interrupted install in the directory."""
        if not self.root.is_dir():
            return
        for child in sorted(self.root.iterdir()):
            for suffix in (STAGING_SUFFIX, BACKUP_SUFFIX):
                base = child.name.removesuffix(suffix)
                if child.name.endswith(suffix) and name_problem(base) is None:
                    log.info("cleaning leftover %s", child)
                    self.clean_leftovers(base)

    def write_metadata(self, directory: Path, metadata: Metadata) -> None:
        """Write ``metadata.json`` into ``directory``."""
        (directory / METADATA_FILE).write_text(metadata.to_json())

    def swap_in(self, name: str, staging: Path) -> Path | None:
        """Atomically replace ``<root>/<name>`` by ``staging``; returns the backup, if any.

        The previous version is renamed to the backup first and renamed back if the second
        rename fails, so a failure leaves the old version where it was.
        """
        final, backup = self.path(name), self.backup(name)
        shutil.rmtree(backup, ignore_errors=True)
        had_previous = final.exists()
        if had_previous:
            os.rename(final, backup)
        try:
            os.rename(staging, final)
        except OSError:
            if had_previous:
                os.rename(backup, final)
            raise
        return backup if had_previous else None

    def restore(self, name: str, backup: Path) -> None:
        """Undo :meth:`swap_in`: the new version goes, the backup becomes current again."""
        final = self.path(name)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(backup, final)

    def previous(self, name: str) -> Path:
        """Where the version an upgrade replaced waits for a rollback (or to be dropped)."""
        if name_problem(name) is not None:
            raise ValueError(f"invalid backend name {name!r}")
        return self.root / PREVIOUS_DIR / name

    def keep_previous(self, name: str, backup: Path) -> bool:
        """Keep ``backup`` as the previous version of ``name``, unless one is kept already.

        The first kept version wins: a re-sent or repeated upgrade during one rollout must not
        replace the version the rollout would roll back to with one of its own. The rollout
        drops it when it ends. Returns whether ``backup`` was kept (else it is removed).
        """
        target = self.previous(name)
        if target.exists():
            shutil.rmtree(backup, ignore_errors=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(backup, target)
        return True

    def roll_back(self, name: str) -> bool:
        """Make the kept previous version current again; False when none is kept.

        Both steps are renames within the backends directory: the current version moves to the
        swap backup, the previous one into place, then the backup goes. A crash in between is
        repaired at start-up like an interrupted swap (:meth:`clean_leftovers`).
        """
        previous, final, backup = self.previous(name), self.path(name), self.backup(name)
        if not previous.is_dir():
            return False
        shutil.rmtree(backup, ignore_errors=True)
        if final.exists():
            os.rename(final, backup)
        os.rename(previous, final)
        shutil.rmtree(backup, ignore_errors=True)
        return True

    def drop_previous(self, name: str) -> bool:
        """Remove the kept previous version of ``name``; False when none was kept."""
        previous = self.previous(name)
        if not previous.exists():
            return False
        shutil.rmtree(previous, ignore_errors=True)
        return True

    def remove(self, name: str) -> None:
        """Delete ``<root>/<name>`` and its leftovers."""
        self.clean_leftovers(name)
        shutil.rmtree(self.path(name), ignore_errors=True)

    def write_meta_pointer(self, meta: Metadata) -> None:
        """Create ``<root>/<meta.name>/metadata.json`` pointing at its concrete backend."""
        directory = self.path(meta.name)
        directory.mkdir(parents=True, exist_ok=True)
        stamped = replace(meta, installed_at=meta.installed_at or _now())
        temporary = directory / f"{METADATA_FILE}.tmp"
        temporary.write_text(stamped.to_json())
        os.replace(temporary, directory / METADATA_FILE)

    def metas_pointing_at(self, concrete: str) -> list[str]:
        """Meta directories that point at ``concrete``."""
        return [
            n
            for n in self._names()
            if (m := self.metadata(n)) is not None and m.meta_backend_for == concrete
        ]
