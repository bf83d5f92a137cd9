"""Fetching a backend artifact to a local ``.partial`` file: ``file://`` and ``http(s)://``.

Runs in a worker thread (see :mod:`node_agent.blocking`). HTTP downloads resume an existing
``.partial`` file with a ``Range`` request when the server supports it, so a dropped
connection or a killed agent does not restart a multi-GB download from zero. The sha256 is
computed over the whole file, resumed prefix included, and checked before anything is
unpacked. Only ``http.client`` is used, because its connection exposes the socket that a
cancel must shut down to wake a blocked read.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import ssl
import urllib.parse
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from durable_installs.node_agent.blocking import Abort
from durable_installs.protocol.messages import format_size

CHUNK = 256 * 1024
MAX_REDIRECTS = 5
ProgressFn = Callable[[int, int], None]
"""``(bytes_done, bytes_total)``; total is 0 when unknown. Called from the worker thread."""

_OCI_PREFIXES = ("quay.io/", "ghcr.io/", "docker.io/", "oci://", "ocifile://", "ollama://")
# ``org/repo:tag`` and ``host:port/repo:tag`` (a tag or digest is required, so plain relative
# paths stay paths)
_SHORT_DOCKER_REF = re.compile(
    r"^[a-z0-9][a-z0-9._-]*(:[0-9]{1,5})?(/[a-z0-9._-]+)+(:[\w.-]+|@sha256:\w+)$"
)


class SourceKind(Enum):
    """What an artifact URI points at, which decides how it is fetched."""

    DIRECTORY = "directory"
    ARCHIVE_FILE = "archive-file"
    ARCHIVE_HTTP = "archive-http"
    OCI = "oci"
    UNSUPPORTED = "unsupported"


class DownloadError(Exception):
    """One source failed; the message is the cause, without the gallery prefix."""


def local_path(uri: str) -> Path:
    """The filesystem path of a ``file://`` URI or a plain path."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    return Path(uri)


def classify(uri: str) -> SourceKind:
    """Classify an artifact URI. Short Docker Hub refs (``org/repo:tag``) count as OCI."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if uri.startswith(_OCI_PREFIXES) or _SHORT_DOCKER_REF.match(uri):
        return SourceKind.OCI
    if scheme in ("http", "https"):
        return SourceKind.ARCHIVE_HTTP
    if scheme in ("", "file"):
        path = local_path(uri)
        if path.is_dir():
            return SourceKind.DIRECTORY
        return SourceKind.ARCHIVE_FILE
    return SourceKind.UNSUPPORTED


def fetch(
    uri: str,
    partial: Path,
    *,
    limit: int,
    stall_timeout: float,
    on_progress: ProgressFn,
    abort: Abort,
    check_redirect: Callable[[str], None] | None = None,
) -> str:
    """Bring the archive at ``uri`` into ``partial``; returns its sha256 (hex).

    ``partial`` is kept on transport failures (for a later resume) and removed when the
    size limit is exceeded. ``check_redirect`` raises for a redirect target not to follow.
    """
    kind = classify(uri)
    if kind is SourceKind.ARCHIVE_FILE:
        return _copy_file(local_path(uri), partial, limit, on_progress, abort)
    if kind is SourceKind.ARCHIVE_HTTP:
        return _http_download(
            uri, partial, limit, stall_timeout, on_progress, abort, check_redirect
        )
    raise DownloadError(f"unsupported source {uri!r}")


def describe(err: BaseException) -> str:
    """An I/O failure in words that never quote what the server sent.

    ``http.client`` exceptions carry the received bytes (``BadStatusLine`` holds the line);
    OS errors carry only the OS's text (and the local file name, which is ours).
    """
    if isinstance(err, http.client.HTTPException):
        return f"invalid HTTP response ({type(err).__name__})"
    if isinstance(err, OSError) and err.strerror:
        return str(err)
    return type(err).__name__


def _limit_error(limit: int) -> DownloadError:
    return DownloadError(f"download exceeds the configured size limit of {format_size(limit)}")


def _copy_file(
    source: Path, partial: Path, limit: int, on_progress: ProgressFn, abort: Abort
) -> str:
    try:
        total = source.stat().st_size
    except OSError as err:
        raise DownloadError(describe(err)) from err
    if total > limit:
        raise _limit_error(limit)
    digest = hashlib.sha256()
    done = 0
    try:
        with source.open("rb") as src, partial.open("wb") as dst:
            while chunk := src.read(CHUNK):
                abort.check()
                dst.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                on_progress(done, total)
    except OSError as err:
        raise DownloadError(describe(err)) from err
    return digest.hexdigest()


def _hash_prefix(partial: Path) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    size = 0
    if partial.exists():
        with partial.open("rb") as existing:
            while chunk := existing.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    return digest, size


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError as err:
        raise DownloadError("invalid URL (or redirect target)") from err
    if not parsed.hostname or parsed.scheme not in ("http", "https"):
        raise DownloadError("invalid URL (or redirect target): not http(s) with a host")
    conn: http.client.HTTPConnection
    if parsed.scheme == "https":
        conn = http.client.HTTPSConnection(
            parsed.hostname, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parsed.hostname, port, timeout=timeout)
    target = parsed.path or "/"
    if parsed.query:
        target += "?" + parsed.query
    return conn, target


def _content_range_start(header: str | None) -> tuple[int, int] | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    if match is None:
        return None
    total = int(match.group(2)) if match.group(2) != "*" else 0
    return int(match.group(1)), total


def _unsatisfiable_size(header: str | None) -> int | None:
    """The full size a 416 reports (``Content-Range: bytes */<size>``), if it does."""
    match = re.fullmatch(r"bytes \*/(\d{1,20})", (header or "").strip())
    return int(match.group(1)) if match is not None else None


def _http_download(
    url: str,
    partial: Path,
    limit: int,
    timeout: float,
    on_progress: ProgressFn,
    abort: Abort,
    check_redirect: Callable[[str], None] | None = None,
) -> str:
    digest, offset = _hash_prefix(partial)
    for _ in range(MAX_REDIRECTS + 1):
        abort.check()
        conn, target = _connect(url, timeout)
        try:
            try:
                conn.connect()
            except OSError as err:
                raise DownloadError(describe(err)) from err
            with abort.watching(conn.sock):
                headers = {"User-Agent": "node-agent", "Accept-Encoding": "identity"}
                if offset:
                    headers["Range"] = f"bytes={offset}-"
                try:
                    conn.request("GET", target, headers=headers)
                    response = conn.getresponse()
                except (OSError, http.client.HTTPException) as err:
                    abort.check()
                    raise DownloadError(describe(err)) from err
                status = response.status
                if status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                    url = urllib.parse.urljoin(url, response.getheader("Location", ""))
                    if check_redirect is not None:
                        check_redirect(url)
                    continue
                if status == 416 and offset:
                    if _unsatisfiable_size(response.getheader("Content-Range")) == offset:
                        # the partial is the whole file: a kill came between download and
                        # extract. The caller verifies the sha256 as for any download.
                        on_progress(offset, offset)
                        return digest.hexdigest()
                    partial.unlink(missing_ok=True)  # stale partial; start over
                    digest, offset = hashlib.sha256(), 0
                    continue
                append, total = _accept_status(response, offset)
                if not append:
                    digest, offset = hashlib.sha256(), 0
                if total > limit:
                    partial.unlink(missing_ok=True)
                    raise _limit_error(limit)
                return _stream(
                    response, partial, append, offset, total, limit, digest, on_progress, abort
                )
        finally:
            conn.close()
    raise DownloadError(f"too many redirects (more than {MAX_REDIRECTS})")


def _accept_status(response: http.client.HTTPResponse, offset: int) -> tuple[bool, int]:
    """Whether to append to the partial file, and the total size (0 if unknown)."""
    if response.status == 206 and offset:
        start = _content_range_start(response.getheader("Content-Range"))
        if start is not None and start[0] == offset:
            return True, start[1]
        raise DownloadError("server answered a resume request with a mismatching range")
    if response.status == 200:
        length = response.getheader("Content-Length")
        return False, int(length) if length and length.isdigit() else 0
    raise DownloadError(f"HTTP {response.status}")  # the reason phrase is the server's text


def _stream(
    response: http.client.HTTPResponse,
    partial: Path,
    append: bool,
    offset: int,
    total: int,
    limit: int,
    digest: hashlib._Hash,
    on_progress: ProgressFn,
    abort: Abort,
) -> str:
    done = offset if append else 0
    with partial.open("ab" if append else "wb") as out:
        while True:
            try:
                chunk = response.read1(CHUNK)
            except (OSError, http.client.HTTPException) as err:
                abort.check()
                raise DownloadError(f"reading response: {describe(err)}") from err
            abort.check()
            if not chunk:
                break
            out.write(chunk)
            out.flush()  # what is on disk is what a resume after a crash can count on
            digest.update(chunk)
            done += len(chunk)
            if done > limit:
                out.close()
                partial.unlink(missing_ok=True)
                raise _limit_error(limit)
            on_progress(done, total)
    if total and done < total:
        raise DownloadError(
            f"unexpected EOF: received {done} of {total} bytes (the partial file is kept "
            "and the next attempt resumes it)"
        )
    return digest.hexdigest()
