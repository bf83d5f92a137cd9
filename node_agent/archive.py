"""Safe unpacking of a backend archive into a staging directory.

Every member is checked before anything is written: no absolute paths, no ``..`` components,
no device or FIFO members, no symlink or hard link that resolves outside the staging
directory, and the unpacked total stays under the configured limit. ``tarfile``'s ``data``
filter runs as a second line of defence. A refused archive leaves only the staging directory
behind, which the caller removes.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from node_agent.blocking import Abort
from protocol.messages import format_size

ProgressFn = Callable[[int, int], None]


class UnsafeArchive(Exception):
    """The archive contains a member that must not be unpacked, or is not an archive."""


def _inside(base: str, relative: str, root: str | None = None) -> bool:
    """Whether ``base``/``relative``, normalised, stays within ``root`` (default ``base``)."""
    root = base if root is None else root
    normal = posixpath.normpath(posixpath.join(base, relative))
    return normal == root or normal.startswith(root + "/")


def check_member(member: tarfile.TarInfo) -> None:
    """Raise :class:`UnsafeArchive` if ``member`` could write outside the staging directory."""
    name = member.name
    root = "/staging"
    if name.startswith("/") or os.path.isabs(name):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise UnsafeArchive(f"member {name!r} contains '..'")
    if not _inside(root, name):
        raise UnsafeArchive(f"member {name!r} is outside the archive root")
    if member.isdev() or member.isfifo():
        raise UnsafeArchive(f"member {name!r} is a device or FIFO")
    if member.issym():
        target = member.linkname
        parent = posixpath.dirname(posixpath.join(root, name))
        if target.startswith("/") or not _inside(parent, target, root):
            raise UnsafeArchive(f"symlink {name!r} points outside the archive ({target!r})")
    if member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/") or not _inside(root, target):
            raise UnsafeArchive(f"hard link {name!r} points outside the archive ({target!r})")


def extract(
    archive: Path, staging: Path, *, limit: int, on_progress: ProgressFn, abort: Abort
) -> None:
    """Unpack ``archive`` (``.tar``, ``.tar.gz`` and other tarfile formats) into ``staging``."""
    archive_size = archive.stat().st_size
    unpacked = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            raw = tar.fileobj
            for member in tar:
                abort.check()
                check_member(member)
                unpacked += max(member.size, 0)
                if unpacked > limit:
                    raise UnsafeArchive(
                        f"unpacked size exceeds the configured limit of {format_size(limit)}"
                    )
                tar.extract(member, staging, filter="data")
                position = _raw_position(raw, archive_size)
                on_progress(position, archive_size)
    except (tarfile.TarError, EOFError) as err:
        raise UnsafeArchive(f"cannot unpack {archive.name}: {err}") from err
    on_progress(archive_size, archive_size)


def _raw_position(fileobj: object, size: int) -> int:
    """How far into the compressed file we are, for a percentage; best effort."""
    inner = getattr(fileobj, "fileobj", fileobj)  # gzip/bz2 wrappers keep the raw file here
    tell = getattr(inner, "tell", None)
    try:
        return min(int(tell()), size) if callable(tell) else 0
    except (OSError, ValueError):
        return 0


def copy_directory(source: Path, staging: Path, *, limit: int, abort: Abort) -> None:
    """Copy a local backend directory into ``staging``; links must stay inside it."""
    total = 0
    for path in source.rglob("*"):
        abort.check()
        if path.is_symlink():
            target = (path.parent / os.readlink(path)).resolve()
            if not target.is_relative_to(source.resolve()):
                raise UnsafeArchive(f"symlink {path.name!r} points outside {source}")
        elif path.is_file():
            total += path.stat().st_size
            if total > limit:
                raise UnsafeArchive(
                    f"unpacked size exceeds the configured limit of {format_size(limit)}"
                )
    staging.rmdir()
    shutil.copytree(source, staging, symlinks=True)
