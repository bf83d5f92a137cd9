"""Storage key → file on disk, confined to the node's models, data and staging directories.

Keys are LocalAI's: ``models/<…>`` goes to the models directory, ``data/<…>`` to the data
directory, anything else to the staging directory. LocalAI only checks that the joined path,
symbolic links resolved, stays inside its directory. We refuse more, and before touching the
disk, so a refused key never creates a directory or a byte anywhere:

- not UTF-8, a control character (NUL, newline...) or a backslash anywhere;
- absolute (``/etc/passwd``), empty components (``a//b``), ``.`` or ``..`` components;
- longer than 1024 bytes, a component longer than 255 bytes (what a filesystem takes);
- our own partial-upload directory as a component.

Reads (HEAD, GET) may follow a symbolic link that stays inside the directory, as on LocalAI
(a models directory may hold a Hugging Face style snapshot of links). Uploads never go through
a link at all: every existing component below the directory must be a real directory, and the
file itself a regular file or absent.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

PARTIAL_DIR = ".node-agent-partial"
"""Where partial uploads wait, one per directory (the same filesystem as their target)."""
MAX_KEY_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MODELS_PREFIX = "models/"
DATA_PREFIX = "data/"


class KeyRefused(Exception):
    """A key that does not name a file this server may touch; ``reason`` never quotes it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid key: {reason}")


@dataclass(frozen=True)
class Roots:
    """The three directories keys route to (absolute paths)."""

    models: Path
    staging: Path
    data: Path

    @classmethod
    def beside(cls, models_dir: Path) -> Roots:
        """LocalAI's worker layout: ``staging`` and ``data`` next to the models directory."""
        models = models_dir.absolute()
        return cls(models=models, staging=models.parent / "staging", data=models.parent / "data")

    def all(self) -> tuple[Path, Path, Path]:
        return self.models, self.staging, self.data


@dataclass(frozen=True)
class Target:
    """Where a key lives: its directory and the relative path inside it."""

    root: Path
    relative: str

    @property
    def path(self) -> Path:
        """The file's path as a backend will be given it (not symlink-resolved)."""
        return self.root / self.relative


def decode_key(raw: str) -> str:
    """Percent-decode the part of the URL path after ``/v1/files/`` (strict UTF-8)."""
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise KeyRefused("it is not UTF-8") from None


def route(key: str, roots: Roots) -> Target:
    """Check ``key`` and map it to its directory, without touching the disk."""
    if not key:
        raise KeyRefused("a key is required")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise KeyRefused(f"it is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key) or "\\" in key:
        raise KeyRefused("it contains a control character or a backslash")
    if key.startswith("/"):
        raise KeyRefused("it is an absolute path")
    root, relative = roots.staging, key
    if key.startswith(MODELS_PREFIX):
        root, relative = roots.models, key.removeprefix(MODELS_PREFIX)
    elif key.startswith(DATA_PREFIX):
        root, relative = roots.data, key.removeprefix(DATA_PREFIX)
    if not relative:
        raise KeyRefused("it names a directory, not a file")
    for part in relative.split("/"):
        if part in ("", ".", ".."):
            raise KeyRefused("it has an empty, '.' or '..' component")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise KeyRefused(f"a component is longer than {MAX_COMPONENT_BYTES} bytes")
        if part == PARTIAL_DIR:
            raise KeyRefused("it names the partial-upload directory")
    return Target(root, relative)


def readable_path(target: Target) -> Path:
    """The file to read for ``target``, links resolved; refused when it leaves its directory."""
    real_root = os.path.realpath(target.root)
    real = os.path.realpath(target.path)
    if not real.startswith(real_root + os.sep):
        raise KeyRefused("it leaves its directory through a symbolic link")
    return Path(real)


def check_writable(target: Target) -> None:
    """Refuse a key an upload may not write: a link below its directory, a file where a
    directory must be, or a directory where the file must be. Reads the disk, writes nothing."""
    parts = target.relative.split("/")
    current = target.root
    for index, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise KeyRefused("an upload may not go through a symbolic link")
        last = index == len(parts) - 1
        if last and stat.S_ISDIR(mode):
            raise KeyRefused("it names a directory, not a file")
        if not last and not stat.S_ISDIR(mode):
            raise KeyRefused("a parent of the file is not a directory")
        if last and not stat.S_ISREG(mode):
            raise KeyRefused("it names something other than a regular file")
