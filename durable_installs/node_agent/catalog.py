"""Resolving a requested name against the gallery indexes (docs/protocol.md §10).

A request may name a concrete entry, a meta entry (resolved by this node's capability,
falling back to ``default`` then ``cpu``) or an alias shared by several concrete builds. All
of them end as one concrete entry, whose name is the key of the agent's per-backend lock and
the directory it installs into. Gallery-supplied names are validated like request names: an
index must not be able to make the agent write outside its backends directory.
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from durable_installs.node_agent.errors import InstallError
from durable_installs.node_agent.names import name_problem
from durable_installs.protocol.gallery import (
    GalleryEntry,
    GalleryIndexError,
    concrete_for_capability,
    find_entry,
    parse_index,
    read_index_source,
)
from durable_installs.protocol.messages import GalleryConfig, format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolution:
    """What a requested name installs: one concrete entry, maybe reached through a meta entry."""

    requested: str
    concrete: GalleryEntry
    gallery: GalleryConfig
    meta: GalleryEntry | None = None


MAX_INDEX_BYTES = 64 * 1024**2
"""Default bound of one index document (LocalAI's own index is well under 1 MiB)."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ``ftp://``)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:  # fmt: skip
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(req.full_url, code, "redirect refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _read_bounded(source: str, timeout: float, limit: int) -> bytes:
    """An index's bytes, refusing more than ``limit``; ``file://`` goes through the reader of
    :mod:`protocol.gallery` (only the agent's own galleries can be local files)."""
    if urllib.parse.urlsplit(source).scheme not in ("http", "https"):
        data = read_index_source(source, timeout=timeout)
    else:
        try:
            with _OPENER.open(source, timeout=timeout) as response:
                data = response.read(limit + 1)
        except OSError as err:
            raise GalleryIndexError(f"fetching gallery index {source}: {err}") from err
    if len(data) > limit:
        raise GalleryIndexError(
            f"gallery {source} is larger than the limit of {format_size(limit)}"
        )
    return data


def load_index(
    gallery: GalleryConfig, timeout: float, limit: int = MAX_INDEX_BYTES
) -> list[GalleryEntry]:
    """Entries of one gallery, trying its URL then each mirror. Blocking.

    Failure texts name the source and what went wrong (HTTP status, YAML line, entry field)
    but never quote the fetched document: the parser's and urllib's own messages do (a YAML
    error prints the offending line, an HTTP error its reason phrase), and the text travels
    back to whoever sent the request. The full error goes to the agent's log.
    """
    errors = []
    for source in (gallery.url, *gallery.mirrors):
        try:
            return _load_source(source, timeout, limit)
        except GalleryIndexError as err:
            errors.append(str(err))
    raise GalleryIndexError("; ".join(errors))


def _load_source(source: str, timeout: float, limit: int) -> list[GalleryEntry]:
    try:
        data = _read_bounded(source, timeout, limit)
    except GalleryIndexError as err:
        log.warning("gallery index %s unreadable: %s", source, err)
        if err.__cause__ is None:  # our own text (size limit): no fetched content in it
            raise
        raise GalleryIndexError(f"gallery {source}: {_read_problem(err.__cause__)}") from err
    except (http.client.HTTPException, ValueError) as err:  # bad status line, invalid URL
        log.warning("gallery index %s unreadable: %r", source, err)
        raise GalleryIndexError(
            f"gallery {source}: invalid HTTP response or URL ({type(err).__name__})"
        ) from err
    try:
        return parse_index(data, source)
    except GalleryIndexError as err:
        log.warning("gallery index %s invalid: %s", source, err)
        cause = err.__cause__
        if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
            line = cause.problem_mark.line + 1
            raise GalleryIndexError(f"gallery {source} is not valid YAML at line {line}") from err
        if isinstance(cause, yaml.YAMLError):
            raise GalleryIndexError(f"gallery {source} is not valid YAML") from err
        raise  # "must be a list of entries", "entry N has no name": no fetched text
    except ValidationError as err:
        log.warning("gallery index %s has an invalid entry: %s", source, err)
        raise GalleryIndexError(f"gallery {source}: {_entry_problem(data, err)}") from err


def _read_problem(cause: BaseException | None) -> str:
    """What failed reading an index, from the OS or the HTTP status, never the server's text."""
    if isinstance(cause, urllib.error.HTTPError):
        return f"HTTP {cause.code}"
    if isinstance(cause, urllib.error.URLError):
        cause = cause.reason if isinstance(cause.reason, BaseException) else None
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return type(cause).__name__ if cause is not None else "unreadable"


def _entry_problem(data: bytes, err: ValidationError) -> str:
    """``entry <n>: <field> <problem>`` with only names the model declares, never values."""
    first = err.errors()[0]
    loc = first["loc"]
    field_name = str(loc[0]) if loc and loc[0] in GalleryEntry.model_fields else "a field"
    position = _failing_entry(data)
    where = f"entry {position}: " if position is not None else ""
    return f"{where}{field_name} is invalid ({first['type']})"


def _failing_entry(data: bytes) -> int | None:
    """The position of the first entry that does not validate (the index already parsed)."""
    try:
        items = yaml.safe_load(data)
    except yaml.YAMLError:
        return None
    for position, item in enumerate(items if isinstance(items, list) else []):
        try:
            GalleryEntry.model_validate(item)
        except ValidationError:
            return position
    return None


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
    name: str,
    galleries: list[GalleryConfig],
    capability: str,
    timeout: float = 120.0,
    limit: int = MAX_INDEX_BYTES,
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
            entries = load_index(gallery, timeout, limit)
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
