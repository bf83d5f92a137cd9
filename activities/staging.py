"""Staging: model files onto a node over LocalAI's file-transfer API, resumable and checked.

The same activity stages to a stock LocalAI worker and to our node agent, because both
serve ``/v1/files/<key>`` the same way (docs/protocol.md, "File transfer"):

1. ``HEAD`` first: a file already there with the right ``X-Content-SHA256`` is skipped,
   and a partial upload of the same hash (``X-Target-SHA256``) is resumed from its
   ``X-File-Size``, the bytes the node has committed;
2. the source is admitted (``activities/sources.py``: closed by default), read from a local
   file or through the worker's verified cache (``activities/source_cache.py``);
3. ``PUT`` with ``Content-Range: bytes <committed>-<last>/<size>`` and the whole file's
   ``X-Content-SHA256``, streamed, heartbeating how far it got; the node checks the hash
   before it puts the file in place.

Whatever breaks (the worker, the agent, NATS, Temporal, a stalled connection), the next
attempt asks again and continues where the node is, so a file is never sent from zero twice.
Each answer the node gives is mapped to a typed failure by its status, never by echoing the
node's text (``StagingRefused`` for a token, a path, a size the node will not take;
``NodeCannotStoreModel`` for a full disk; ``SourceMismatch`` when the bytes do not hash).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.source_cache import SourceCache, SourceUnavailable
from activities.sources import Source, TrustedSources
from durable_installs.contracts.failures import (
    NODE_CANNOT_STORE_MODEL,
    SOURCE_MISMATCH,
    STAGING_FAILED,
    STAGING_REFUSED,
)
from durable_installs.contracts.load import (
    NodeFiles,
    NodeFilesInput,
    StageFileInput,
    StageFileResult,
    StageProgress,
)
from durable_installs.contracts.names import NODE_FILES_ACTIVITY, STAGE_FILE_ACTIVITY
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import FilesSpaceReply

log = logging.getLogger(__name__)

FILES_PATH = "/v1/files/"
MODELS_KEY = "models/"
CHUNK = 4 * 1024 * 1024
HEARTBEAT_EVERY = 1.0
MAX_ROUNDS = 8
"""HEAD-and-PUT rounds in one attempt (a 416, a 308, a busy node); then the attempt fails
and Temporal's retry takes over."""
SPACE_TIMEOUT = 5.0
MAX_RETRY_AFTER = 10.0
COMMIT_SECONDS_PER_GIB = 10.0
"""How long the node may take, after the last byte, to hash a resumed file before it answers."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "durable-installs" / "models"


@dataclass(frozen=True)
class StagingConfig:
    """What a worker needs to stage model files: the trusted sources, the nodes' token."""

    sources: TrustedSources = field(default_factory=TrustedSources)
    files_token: str = ""
    """Bearer token of the nodes' file-transfer API (``NODE_FILES_TOKEN``)."""
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_bytes: int = 50 * 2**30
    max_bytes_per_second: int = 0
    """Per transfer; 0: as fast as the node takes them."""


@dataclass
class _Sent:
    """How far one file's transfer got, for the heartbeat."""

    path: str
    size: int | None
    before: int
    """Bytes earlier attempts sent (from their last heartbeat)."""
    sent: int = 0
    committed: int = 0

    def progress(self) -> StageProgress:
        return StageProgress(
            path=self.path,
            committed=self.committed,
            size=self.size,
            bytes_sent=self.before + self.sent,
        )


class _Pace:
    """At most ``rate`` bytes a second (0: no limit)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.taken = 0

    async def take(self, amount: int) -> None:
        if not self.rate:
            return
        self.taken += amount
        ahead = self.taken / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            await asyncio.sleep(ahead)


@dataclass(frozen=True)
class _Head:
    """What ``HEAD`` said about the key."""

    status: int
    size: int = 0
    content_sha256: str = ""
    target_sha256: str = ""
    local_path: str = ""


def _broke(message: str) -> ApplicationError:
    """A transfer that broke: retried, and the retry resumes."""
    return ApplicationError(message, type=STAGING_FAILED)


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=STAGING_REFUSED, non_retryable=True)


class StagingActivities:
    """``node_files`` and ``stage_model_file``, sharing the worker's cache and settings."""

    def __init__(self, nc: NATS, config: StagingConfig) -> None:
        self._nc = nc
        self._config = config
        self._cache = SourceCache(config.cache_dir, config.cache_bytes)

    @activity.defn(name=NODE_FILES_ACTIVITY)
    async def node_files(self, input: NodeFilesInput) -> NodeFiles:
        """The node's ``files.space`` answer; ``known=False`` from a node without it."""
        subject = subjects.files_space(input.node_id)
        try:
            msg = await self._nc.request(subject, b"{}", timeout=SPACE_TIMEOUT)
        except (NoRespondersError, NatsTimeoutError):
            return NodeFiles(known=False)
        try:
            reply = FilesSpaceReply.model_validate_json(msg.data)
        except ValidationError:
            log.warning("node %s answered files.space with a malformed reply", input.node_id)
            return NodeFiles(known=False)
        if reply.error:
            return NodeFiles(known=False)
        return NodeFiles(
            known=True,
            available_disk=reply.available_disk,
            total_disk=reply.total_disk,
            reserved_disk=reply.reserved_disk,
            max_file_size=reply.max_file_size,
            files_url=_files_url(reply.address),
        )

    @activity.defn(name=STAGE_FILE_ACTIVITY)
    async def stage_model_file(self, input: StageFileInput) -> StageFileResult:
        """Put one file on the node; skip it if there, resume it if partly there."""
        source = self._config.sources.admit(input.file.uri)
        sent = _Sent(input.file.path, input.file.size, _previous_bytes_sent())
        beating = asyncio.create_task(_heartbeat(sent))
        try:
            async with self._node_client(input) as client:
                return await self._stage(input, source, client, sent)
        except asyncio.CancelledError:
            if _load_cancelled():
                await self._forget_partial(input)
            raise
        finally:
            beating.cancel()

    # --- one file ------------------------------------------------------------------------------

    async def _stage(
        self, input: StageFileInput, source: Source, client: httpx.AsyncClient, sent: _Sent
    ) -> StageFileResult:
        file = input.file
        key_url = _key_url(input.files_url, file.path)
        for _ in range(MAX_ROUNDS):
            head = await _head(client, key_url)
            if head.content_sha256 == file.sha256:
                return self._result(input, head.size, head.local_path, sent, present=True)
            committed = head.size if head.target_sha256 == file.sha256 else 0
            sent.committed = committed
            async with self._local(source, input, sent) as local:
                size = local.stat().st_size
                if file.size is not None and size != file.size:
                    raise ApplicationError(
                        f"the model source of {file.path} has {size} bytes; the load promised "
                        f"{file.size}",
                        type=SOURCE_MISMATCH,
                        non_retryable=True,
                    )
                outcome = await self._put(client, key_url, input, local, committed, size, sent)
            if outcome is not None:
                local_path = outcome or head.local_path
                return self._result(input, size, local_path, sent, present=False)
        raise _broke(f"{file.path}: the node kept asking for another round; retrying")

    @contextlib.asynccontextmanager
    async def _local(
        self, source: Source, input: StageFileInput, sent: _Sent
    ) -> AsyncIterator[Path]:
        """A local, readable file with the source's bytes."""
        if source.path is not None:
            if not source.path.is_file():
                raise ApplicationError(
                    f"model source {input.file.uri!r} is not a regular file on the worker",
                    type=SOURCE_MISMATCH,
                    non_retryable=True,
                )
            yield source.path
            return
        timeout = httpx.Timeout(30.0, read=input.stall_seconds)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
                self._cache.fetched(
                    source.url,
                    input.file.sha256,
                    input.file.size,
                    client=client,
                    stall_seconds=input.stall_seconds,
                    progress=lambda _: None,
                ) as path,
            ):
                yield path
        except SourceUnavailable as err:
            raise _broke(str(err)) from None

    async def _put(
        self,
        client: httpx.AsyncClient,
        url: str,
        input: StageFileInput,
        local: Path,
        committed: int,
        size: int,
        sent: _Sent,
    ) -> str | None:
        """One ``PUT`` from ``committed``: the node-local path when the file is in place,
        None when another round is needed."""
        headers = {
            "X-Content-SHA256": input.file.sha256,
            "Content-Length": str(size - committed),
            "Content-Type": "application/octet-stream",
        }
        if size:
            headers["Content-Range"] = f"bytes {committed}-{size - 1}/{size}"
        commit_wait = input.stall_seconds + COMMIT_SECONDS_PER_GIB * size / 2**30
        timeout = httpx.Timeout(30.0, write=input.stall_seconds, read=commit_wait)
        body = _read(local, committed, size, sent, _Pace(self._config.max_bytes_per_second))
        try:
            response = await client.put(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as err:
            raise _broke(
                f"{input.file.path}: the node took no bytes for {input.stall_seconds:g}s "
                "(stalled); resuming"
            ) from err
        except httpx.TransportError as err:
            raise _broke(
                f"{input.file.path}: the connection to the node broke ({type(err).__name__}); "
                "resuming"
            ) from err
        return await self._answer(response, input, sent.committed, size)

    async def _answer(
        self, response: httpx.Response, input: StageFileInput, reached: int, size: int
    ) -> str | None:
        """What the node's answer to a ``PUT`` that sent up to byte ``reached`` means."""
        status = response.status_code
        path = input.file.path
        if status in (200, 201, 204):
            return _local_path_of(response)
        if status in (308, 416):
            return None  # the node has another size than we thought: ask again
        if status == 409:
            if "retry-after" in response.headers:  # another upload of this key is running
                await asyncio.sleep(_retry_after(response))
            return None  # else the node dropped a partial of another hash: from zero
        if status in (401, 403):
            raise _refused(
                f"node {input.node_id} refused the worker's file-transfer token (HTTP {status}): "
                "start the worker with the nodes' token (--node-files-token or NODE_FILES_TOKEN)"
            )
        if status == 400 and reached < size:
            raise _refused(f"node {input.node_id} refused the file {path!r} (HTTP 400)")
        if status == 400:
            raise ApplicationError(
                f"node {input.node_id} received {path!r} but its bytes do not have the sha256 "
                f"the load promised ({input.file.sha256[:12]}...); the node dropped them",
                type=SOURCE_MISMATCH,
                non_retryable=True,
            )
        if status == 404 or status == 405:
            raise _refused(f"{input.files_url} serves no file-transfer API (HTTP {status} for PUT)")
        if status == 413:
            raise _refused(
                f"node {input.node_id} takes no file as large as {path!r} ({size} bytes)"
            )
        if status == 507:
            raise ApplicationError(
                f"node {input.node_id} has no room left for {path!r} ({size} bytes) "
                "beyond its reserve; nothing was put in place",
                type=NODE_CANNOT_STORE_MODEL,
                non_retryable=True,
            )
        if status in (408, 429, 503):
            await asyncio.sleep(_retry_after(response))
            return None
        raise _broke(f"{path}: node {input.node_id} answered HTTP {status}; retrying")

    # --- helpers -------------------------------------------------------------------------------

    def _node_client(self, input: StageFileInput) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self._config.files_token}"}
        if not self._config.files_token:
            headers = {}
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(30.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=2),
        )

    def _result(
        self, input: StageFileInput, size: int, local_path: str, sent: _Sent, *, present: bool
    ) -> StageFileResult:
        return StageFileResult(
            path=input.file.path,
            sha256=input.file.sha256,
            size=size,
            local_path=local_path,
            present=present,
            bytes_sent=sent.before + sent.sent,
        )

    async def _forget_partial(self, input: StageFileInput) -> None:
        """A cancelled load leaves no partial behind on a node that can drop one (a ``DELETE``
        of the key; a node that cannot reaps stale partials itself)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3), self._node_client(input) as client:
                await client.delete(_key_url(input.files_url, input.file.path))


async def _head(client: httpx.AsyncClient, url: str) -> _Head:
    try:
        response = await client.head(url)
    except httpx.HTTPError as err:
        raise _broke(f"asking the node about the file failed ({type(err).__name__})") from err
    status = response.status_code
    if status == 404:
        return _Head(status)
    if status in (401, 403):
        raise _refused(
            f"the node refused the worker's file-transfer token (HTTP {status}): start the "
            "worker with the nodes' token (--node-files-token or NODE_FILES_TOKEN)"
        )
    if status == 400:
        raise _refused("the node refused the file's path (HTTP 400): outside its directories")
    if status != 200:
        raise _broke(f"the node answered HEAD with HTTP {status}; retrying")
    headers = response.headers
    size = headers.get("x-file-size", "")
    return _Head(
        status,
        size=int(size) if size.isdigit() else 0,
        content_sha256=headers.get("x-content-sha256", "").lower(),
        target_sha256=headers.get("x-target-sha256", "").lower(),
        local_path=headers.get("x-local-path", "")[:4096],
    )


async def _read(
    local: Path, start: int, size: int, sent: _Sent, pace: _Pace
) -> AsyncIterator[bytes]:
    """The file's bytes from ``start``; a file that shrinks underneath is an error."""
    with local.open("rb") as handle:
        handle.seek(start)
        left = size - start
        while left:
            block = await asyncio.to_thread(handle.read, min(CHUNK, left))
            if not block:
                raise _broke(f"{local.name} shrank while it was being sent")
            left -= len(block)
            await pace.take(len(block))
            yield block
            sent.sent += len(block)
            sent.committed += len(block)


def _load_cancelled() -> bool:
    """Whether this cancel is the load's own (the workflow asked), not a lost attempt.

    An attempt the server timed out (its heartbeats did not arrive: Temporal or the network
    was down), one it no longer knows, a paused one and a worker shutting down are all
    retried, and the retry resumes from the node's partial: dropping it would send the file
    from zero again, and could race the retry that is already resuming it.
    """
    details = activity.cancellation_details()
    return details is not None and details.cancel_requested


async def _heartbeat(sent: _Sent) -> None:
    while True:
        activity.heartbeat(sent.progress())
        await asyncio.sleep(HEARTBEAT_EVERY)


def _previous_bytes_sent() -> int:
    details = activity.info().heartbeat_details
    if not details:
        return 0
    with contextlib.suppress(Exception):
        earlier = details[0]
        if isinstance(earlier, StageProgress):
            return earlier.bytes_sent
        return StageProgress.model_validate(earlier).bytes_sent
    return 0


def _key_url(files_url: str, path: str) -> str:
    return files_url.rstrip("/") + FILES_PATH + urllib.parse.quote(MODELS_KEY + path)


def _files_url(address: str) -> str:
    """``http://host:port`` for the address a node answered, or empty when it is not one."""
    if not address or any(c in address for c in "/?#@ \\"):
        return ""
    return f"http://{address}"


def _local_path_of(response: httpx.Response) -> str:
    local = str(response.headers.get("x-local-path", ""))
    if not local:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            local = str(json.loads(response.content[:8192]).get("local_path", ""))
    return local[:4096]


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "1")
    try:
        return min(max(float(value), 0.1), MAX_RETRY_AFTER)
    except ValueError:
        return 1.0
