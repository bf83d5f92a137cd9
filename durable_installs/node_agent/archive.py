"""Safe unpacking of a backend archive into a staging directory.

Every member is checked before anything is written: no absolute paths, no ``..`` components,
no device or FIFO members, no symlink or hard link that resolves outside the staging
directory, and the unpacked total stays under the configured limit. ``tarfile``'s ``data``
filter runs as a second line of defence. A refused archive leaves only the staging directory
behind, which the caller removes.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from durable_installs.node_agent.blocking import Abort
from durable_installs.protocol.messages import format_size

ProgressFn = Callable[[int, int], None]
log = logging.getLogger(__name__)


class UnsafeArchive(Exception):
    """The archive contains a member that must not be unpacked, or is not an archive.

    The message never quotes the archive (member names, link targets, compressor messages
    that show its first bytes): it reaches the requester. :func:`_refuse` logs the member.
    """


def _refuse(problem: str, member: tarfile.TarInfo) -> UnsafeArchive:
    log.warning("refusing archive member %r (link %r): %s", member.name, member.linkname, problem)
    return UnsafeArchive(problem)


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
        raise _refuse("a member has an absolute path", member)
    if ".." in name.replace("\\", "/").split("/"):
        raise _refuse("a member path contains '..'", member)
    if not _inside(root, name):
        raise _refuse("a member is outside the archive root", member)
    if member.isdev() or member.isfifo():
        raise _refuse("a member is a device or FIFO", member)
    if member.issym():
        target = member.linkname
        parent = posixpath.dirname(posixpath.join(root, name))
        if target.startswith("/") or not _inside(parent, target, root):
            raise _refuse("a symlink points outside the archive", member)
    if member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/") or not _inside(root, target):
            raise _refuse("a hard link points outside the archive", member)


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
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError) as err:
        # gzip's own message shows the file's first bytes; say only what kind of failure it was
        log.warning("cannot unpack %s: %s", archive.name, err)
        raise UnsafeArchive(f"not a readable tar archive ({type(err).__name__})") from err
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
