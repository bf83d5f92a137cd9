"""Validation of names that become directory names under the backends directory.

Backend, ``name`` and ``alias`` values from requests, and entry names from gallery indexes,
end up as ``<backends_dir>/<name>``. Anything that could escape that directory, hide from
listings or collide with the agent's own staging/backup directories is refused up front, so a
bad name can never write outside the backends directory.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 255
RESERVED_SUFFIXES = (".install-tmp", ".install-backup", ".partial")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a backend directory name, or None when it can."""
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is longer than {MAX_NAME_LENGTH} characters"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if name in (".", "..") or ".." in name:
        return "it contains '..'"
    if name.startswith("."):
        return "it starts with '.'"
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"it contains the control character {ch!r}"
    if name.endswith(RESERVED_SUFFIXES):
        return "it ends with a suffix the agent reserves for its own files"
    return None


def strip_gallery(name: str) -> str:
    """``<gallery>@<name>`` names an entry of one gallery; the directory is just ``<name>``."""
    return name.split("@", 1)[-1]


def invalid_name_error(name: str) -> str | None:
    """The reply's error for a backend name the agent refuses (LocalAI's wording), or None."""
    problem = name_problem(name)
    if problem is None:
        return None
    return f'invalid request: invalid backend name "{name}": {problem}'
