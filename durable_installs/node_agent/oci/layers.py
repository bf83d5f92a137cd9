"""Applying image layers, in order, into a staging directory: the same bar as archives.

Each member passes :func:`node_agent.archive.check_member` (no absolute paths, no ``..``, no
devices or FIFOs, no link leaving the root) and then ``tarfile``'s ``data`` filter, which
also clears setuid/setgid/sticky bits and checks the *resolved* path against the root, so a
symlink from an earlier layer cannot redirect a later write. The total uncompressed size over
all layers is bounded (decompression bombs).

Applying a layer also yields its diff_id, the sha256 of its whole uncompressed tar stream,
which the caller compares with the image config's: the layer is decompressed here (gzip told
from the content) and every byte tarfile reads is hashed, then whatever tarfile leaves unread
after the end-of-archive blocks (record padding) is drained into the hash too, up to
:data:`MAX_TRAILER` bytes, so that a gzip of endless zeros after a tiny tar cannot hash forever.

Whiteouts (OCI image spec, "Representing Changes"): ``dir/.wh.name`` deletes ``dir/name`` of
a lower layer; ``dir/.wh..wh..opq`` empties ``dir`` of lower-layer content. A whiteout deletes
only inside the root: its parent is resolved on disk and must stay inside, and the entry it
names is removed without following a symlink. A file of a later layer replaces whatever an
earlier layer had at its path (a directory included).

Error texts describe the problem and the layer; member names (fetched content) are logged,
not echoed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from durable_installs.node_agent.archive import UnsafeArchive, check_member
from durable_installs.node_agent.blocking import Abort

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 64 * 1024
MAX_TRAILER = 1024 * 1024
"""Bytes allowed after a tar's end-of-archive blocks (tar pads to its record size: 10 KiB by
default, 1 MiB at a blocking factor of 2048)."""
ReadFn = Callable[[int], None]
"""Called with how many compressed bytes of the layer have been read so far."""


class UnsafeLayer(Exception):
    """A layer that must not be applied; the message names the kind of problem."""


class _Counting:
    """A read-only file wrapper that reports how many bytes were read (for progress)."""

    def __init__(self, raw: IO[bytes], on_read: ReadFn) -> None:
        self._raw, self._on_read, self.position = raw, on_read, 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.position += len(data)
        self._on_read(self.position)
        return data

    def readable(self) -> bool:
        return True


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Hashing:
    """A read-only file wrapper that hashes every byte read: the layer's diff_id."""

    def __init__(self, raw: _Readable) -> None:
        self._raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        return data

    def readable(self) -> bool:
        return True


def _uncompressed(raw: IO[bytes], counting: _Counting) -> _Readable:
    """The layer's tar stream read through ``counting``: gunzipped if ``raw`` starts like gzip.

    Decompressed here rather than by tarfile, so the uncompressed bytes can be hashed.
    """
    compressed = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    raw.seek(0)
    if not compressed:
        return counting
    # typeshed asks for seek(); GzipFile only seeks when its own seek() is called
    gunzipped: _Readable = gzip.GzipFile(fileobj=counting, mode="rb")  # type: ignore[call-overload]
    return gunzipped


def _inside(root: Path, path: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _remove(path: Path) -> None:
    """Remove ``path`` itself (never what a symlink points at)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def _resolved_parent(root: Path, relative: str) -> Path | None:
    """The on-disk parent of ``relative`` if it resolves inside ``root``; None otherwise."""
    parent = Path(os.path.realpath(root / posixpath.dirname(relative)))
    return parent if _inside(root, parent) else None


class LayerApplier:
    """Applies layers one after another into ``root``, sharing one size budget."""

    def __init__(self, root: Path, *, limit: int, abort: Abort) -> None:
        self.root = Path(os.path.realpath(root))
        self.limit = limit
        self.unpacked = 0
        self._abort = abort

    def apply(self, blob: Path, on_read: ReadFn, label: str) -> str:
        """Apply one layer file (tar, gzip-compressed or not: detected from the content).

        Returns its diff_id (``sha256:<hex>`` of the uncompressed tar) for the caller to
        compare with the image config's.
        """
        created: set[str] = set()
        with blob.open("rb") as raw:
            stream = _Hashing(_uncompressed(raw, _Counting(raw, on_read)))
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        self._abort.check()
                        self._member(tar, member, created, label)
                self._drain(stream, label)
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
                raise UnsafeLayer(
                    f"{label} is not a valid tar layer ({type(err).__name__})"
                ) from err
            except OSError as err:
                raise UnsafeLayer(f"cannot apply {label} ({type(err).__name__})") from err
        return "sha256:" + stream.digest.hexdigest()

    def _drain(self, stream: _Hashing, label: str) -> None:
        """Hash what follows the end-of-archive blocks: the diff_id covers the whole stream.

        tarfile stops reading at the first end-of-archive block, before the padding; without
        this the digest would miss it (and whatever else a blob hides there).
        """
        trailer = 0
        while chunk := stream.read(CHUNK):
            self._abort.check()
            trailer += len(chunk)
            if trailer > MAX_TRAILER:
                raise UnsafeLayer(
                    f"{label}: more than {MAX_TRAILER} bytes follow the end of the tar archive"
                )

    def _member(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, created: set[str], label: str
    ) -> None:
        raw = member.name
        while raw.startswith("./"):
            raw = raw[2:]
        name = posixpath.normpath(raw) if raw else "."
        try:
            check_member(member)
        except UnsafeArchive as err:
            log.warning("%s: refused member %r: %s", label, member.name, err)
            raise UnsafeLayer(f"{label}: {_kind(err)}") from err
        if name in ("", "."):
            return
        base = posixpath.basename(name)
        if base.startswith(WHITEOUT):
            self._whiteout(name, base, created, label)
            return
        self.unpacked += max(member.size, 0)
        if self.unpacked > self.limit:
            raise UnsafeLayer(
                f"uncompressed image size exceeds the configured limit of {self.limit} bytes"
            )
        parent = _resolved_parent(self.root, name)
        if parent is None:
            raise UnsafeLayer(f"{label}: a member's directory resolves outside the image")
        target = parent / base
        with contextlib.suppress(FileNotFoundError):
            existing = target.lstat().st_mode
            if not (member.isdir() and stat.S_ISDIR(existing)):
                _remove(target)  # an upper layer replaces the lower entry
        try:
            tar.extract(member, self.root, filter="data")
        except tarfile.FilterError as err:
            log.warning("%s: filter refused member %r: %s", label, member.name, err)
            raise UnsafeLayer(f"{label}: a member would be written outside the image") from err
        except (KeyError, tarfile.ExtractError) as err:
            raise UnsafeLayer(f"{label}: a hard link names a file the image does not have") from err
        created.add(name)

    def _whiteout(self, name: str, base: str, created: set[str], label: str) -> None:
        parent = _resolved_parent(self.root, name)
        if parent is None:
            raise UnsafeLayer(f"{label}: a whiteout points outside the image")
        if base == OPAQUE:
            directory = posixpath.dirname(name)
            if not parent.is_dir():
                return
            for child in list(parent.iterdir()):
                relative = posixpath.join(directory, child.name) if directory else child.name
                if relative not in created:
                    _remove(child)
            return
        hidden = base[len(WHITEOUT) :]
        if not hidden or hidden in (".", "..") or "/" in hidden:
            raise UnsafeLayer(f"{label}: a whiteout has an invalid name")
        _remove(parent / hidden)


def _kind(err: UnsafeArchive) -> str:
    """The refusal reason of :func:`check_member` without the member's name."""
    text = str(err)
    for needle, kind in (
        ("absolute path", "a member has an absolute path"),
        ("contains '..'", "a member path contains '..'"),
        ("outside the archive root", "a member path leaves the image root"),
        ("device or FIFO", "a member is a device file or FIFO"),
        ("symlink", "a symlink points outside the image"),
        ("hard link", "a hard link points outside the image"),
    ):
        if needle in text:
            return kind
    return "a member is not allowed"
