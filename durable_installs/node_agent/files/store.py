"""Partial uploads and their commit: nothing reaches its place before its sha256 is verified.

LocalAI appends a resumable upload to the destination file itself (a ``.sha256.target`` sidecar
marks it as partial), so a half-received model sits where a backend would load it. Here a
partial lives in ``<directory>/.node-agent-partial/<sha256 of the relative path>.part``, with
``.json`` beside it holding the key, the whole file's sha256 and its size; the same
filesystem as the target, so the commit is one ``rename``. What HEAD reports is LocalAI's view
all the same: a partial's size and ``X-Target-SHA256``; a committed file's size and
``X-Content-SHA256``.

A committed file gets LocalAI's ``<file>.sha256`` sidecar (the hex digest), trusted while it
is not older than the file, so HEAD does not re-read a 70 GB model every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from durable_installs.node_agent.files.keys import (
    PARTIAL_DIR,
    KeyRefused,
    Roots,
    Target,
    check_writable,
)

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
MAX_META_BYTES = 4096
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Partial:
    """An upload in progress: bytes committed so far, and what the whole file will be."""

    size: int
    sha256: str
    total: int


@dataclass(frozen=True)
class Space:
    """A filesystem's size and the bytes an unprivileged writer may still use."""

    total: int
    available: int


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (blocking: call it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


def space_of(directory: Path) -> Space:
    """Space of the filesystem ``directory`` is (or would be) on: its nearest existing parent."""
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    stats = os.statvfs(probe)
    return Space(total=stats.f_blocks * stats.f_frsize, available=stats.f_bavail * stats.f_frsize)


class FileStore:
    """The partial area and commits of the three key directories (blocking file operations)."""

    def __init__(self, roots: Roots) -> None:
        self.roots = roots

    def prepare(self, partial_max_age: float) -> None:
        """Create the directories; drop partials nobody has written to for ``partial_max_age``."""
        cutoff = time.time() - partial_max_age
        for root in self.roots.all():
            (root / PARTIAL_DIR).mkdir(mode=0o750, parents=True, exist_ok=True)
            for entry in (root / PARTIAL_DIR).iterdir():
                with contextlib.suppress(OSError):
                    if entry.lstat().st_mtime < cutoff:
                        log.info("removing a stale partial upload %s", entry.name)
                        entry.unlink()

    # --- partials -------------------------------------------------------------------------

    def partial_paths(self, target: Target) -> tuple[Path, Path]:
        """The data file and the metadata file of ``target``'s partial."""
        name = hashlib.sha256(target.relative.encode()).hexdigest()
        area = target.root / PARTIAL_DIR
        return area / f"{name}.part", area / f"{name}.json"

    def read_partial(self, target: Target) -> Partial | None:
        """The partial of ``target``, or None; an unreadable one is discarded."""
        data, meta = self.partial_paths(target)
        try:
            with meta.open("rb") as handle:
                fields = json.loads(handle.read(MAX_META_BYTES))
            size = data.stat().st_size
        except FileNotFoundError:
            if data.exists() or meta.exists():
                self.discard(target)
            return None
        except (OSError, ValueError):
            self.discard(target)
            return None
        if not (
            isinstance(fields, dict)
            and fields.get("key") == target.relative
            and isinstance(fields.get("sha256"), str)
            and is_sha256(fields["sha256"])
            and isinstance(fields.get("total"), int)
            and 0 <= size <= fields["total"]
        ):
            self.discard(target)
            return None
        return Partial(size=size, sha256=fields["sha256"], total=fields["total"])

    def begin(self, target: Target, sha256: str, total: int, fresh: bool) -> Path:
        """Record what the upload is (``fresh``: from byte 0); the data file to append to."""
        data, meta = self.partial_paths(target)
        if fresh:
            data.write_bytes(b"")
        temporary = meta.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({"key": target.relative, "sha256": sha256, "total": total}))
        os.replace(temporary, meta)
        return data

    def discard(self, target: Target) -> None:
        """Remove ``target``'s partial, if any."""
        for path in self.partial_paths(target):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # --- commit ---------------------------------------------------------------------------

    def commit(self, target: Target, sha256: str) -> Path:
        """Move the verified partial into place and write its sidecar; returns the path.

        Raises :class:`KeyRefused` when the place turned into a link or a file meanwhile (the
        partial is then discarded) and ``OSError`` when the disk refuses.
        """
        data, meta = self.partial_paths(target)
        with data.open("rb+") as handle:
            os.fsync(handle.fileno())
        try:
            check_writable(target)
            target.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            check_writable(target)
        except KeyRefused:
            self.discard(target)
            raise
        sidecar = Path(f"{target.path}{SIDECAR_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()
        os.replace(data, target.path)
        _write_sidecar(sidecar, sha256)
        directory = os.open(target.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        with contextlib.suppress(FileNotFoundError):
            meta.unlink()
        return target.path

    def committed_sha256(self, path: Path) -> str:
        """sha256 of a file in place: its sidecar while fresh, else computed (and cached)."""
        sidecar = Path(f"{path}{SIDECAR_SUFFIX}")
        file_mtime = path.stat().st_mtime_ns
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if sidecar.stat().st_mtime_ns >= file_mtime:
                with sidecar.open("rb") as handle:
                    cached = handle.read(128).decode().strip().lower()
                if is_sha256(cached):
                    return cached
        digest = sha256_file(path)
        with contextlib.suppress(OSError):
            _write_sidecar(sidecar, digest)
        return digest


def _write_sidecar(sidecar: Path, digest: str) -> None:
    """LocalAI's format: the hex digest alone."""
    sidecar.write_text(digest)
