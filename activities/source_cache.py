"""The worker's cache of model files fetched over http(s), keyed by sha256 and bounded.

One download feeds every node a model goes to: a rollout that loads a 20 GiB checkpoint
onto 40 slots reads it from its source once per worker, not 40 times. A file is cached
under its sha256 only after its bytes were verified against it, so a cached file is always
the one the load promised; a download cut by a crash, a stall or a cancel is kept as
``<sha256>.partial`` and resumed with a ``Range`` request the next time.

The bound is on bytes: when a new file would exceed it, the least recently used complete
files not being sent right now are removed first. A file larger than the whole cache is
refused with a message naming the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import SOURCE_MISMATCH, STAGING_REFUSED
from durable_installs.contracts.load import MAX_FILE_BYTES

CHUNK = 1024 * 1024
PARTIAL = ".partial"

Progress = Callable[[int], None]
"""Called with the bytes of the file the cache holds so far."""


class SourceUnavailable(Exception):
    """The source could not be read now (retryable: the next attempt resumes)."""


def _mismatch(message: str) -> ApplicationError:
    return ApplicationError(message, type=SOURCE_MISMATCH, non_retryable=True)


@dataclass
class SourceCache:
    """Verified model files under ``directory``, at most ``max_bytes`` of them."""

    directory: Path
    max_bytes: int = 50 * 2**30
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _in_use: dict[str, int] = field(default_factory=dict)

    def path(self, sha256: str) -> Path:
        return self.directory / sha256

    @contextlib.asynccontextmanager
    async def fetched(
        self,
        url: str,
        sha256: str,
        size: int | None,
        *,
        client: httpx.AsyncClient,
        stall_seconds: float,
        progress: Progress,
    ) -> AsyncIterator[Path]:
        """The verified file, fetched unless cached; kept from eviction while in use.

        Concurrent loads of one file wait for a single download (one per sha256).
        """
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            target = self.path(sha256)
            if not target.exists():
                await self._download(url, sha256, size, client, stall_seconds, progress)
            with contextlib.suppress(OSError):
                os.utime(target)  # recently used
        self._in_use[sha256] = self._in_use.get(sha256, 0) + 1
        try:
            yield target
        finally:
            self._in_use[sha256] -= 1
            if not self._in_use[sha256]:
                del self._in_use[sha256]

    async def _download(
        self,
        url: str,
        sha256: str,
        size: int | None,
        client: httpx.AsyncClient,
        stall_seconds: float,
        progress: Progress,
    ) -> None:
        if size is not None and size > self.max_bytes:
            raise ApplicationError(
                f"a model file of {size} bytes does not fit the worker's model cache of "
                f"{self.max_bytes} bytes (--model-cache-bytes)",
                type=STAGING_REFUSED,
                non_retryable=True,
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / (sha256 + PARTIAL)
        have = partial.stat().st_size if partial.exists() else 0
        limit = size if size is not None else MAX_FILE_BYTES
        if have > limit:
            partial.unlink()
            have = 0
        hasher = hashlib.sha256()
        if have:
            await asyncio.to_thread(_hash_into, partial, hasher)
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 200 and have:
                    have = 0  # the source ignores ranges: start over
                    hasher = hashlib.sha256()
                elif response.status_code == 416 and size is not None and have == size:
                    pass  # everything is here already
                elif response.status_code not in (200, 206):
                    raise self._status_failure(response.status_code)
                await self._free(limit if size is not None else 0)
                expected = _expected_length(response, have)
                if size is not None and expected is not None and expected != size:
                    raise _mismatch(
                        f"the model source says the file has {expected} bytes; the load "
                        f"promised {size}"
                    )
                if response.status_code != 416:
                    await self._receive(response, partial, have, limit, hasher, progress)
        except httpx.TimeoutException as err:
            raise SourceUnavailable(
                f"the model source sent nothing for {stall_seconds:g}s; resuming"
            ) from err
        except httpx.TransportError as err:
            raise SourceUnavailable(
                f"reading the model source failed: {type(err).__name__}"
            ) from err
        received = partial.stat().st_size
        if size is not None and received != size:
            raise _mismatch(
                f"the model source ended after {received} bytes; the load promised {size}"
            )
        if hasher.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise _mismatch(
                "the model source's bytes do not have the sha256 the load promised "
                f"({sha256[:12]}...); nothing was staged"
            )
        os.replace(partial, self.path(sha256))

    async def _receive(
        self,
        response: httpx.Response,
        partial: Path,
        have: int,
        limit: int,
        hasher: hashlib._Hash,
        progress: Progress,
    ) -> None:
        mode = "ab" if have else "wb"
        with partial.open(mode) as out:
            async for chunk in response.aiter_raw(CHUNK):
                have += len(chunk)
                if have > limit:
                    out.close()
                    await asyncio.to_thread(partial.unlink, missing_ok=True)
                    raise _mismatch(
                        f"the model source sent more than the {limit} bytes the load promised"
                    )
                hasher.update(chunk)
                await asyncio.to_thread(out.write, chunk)
                progress(have)

    def _status_failure(self, status: int) -> Exception:
        if status in (401, 403, 404, 410):
            return ApplicationError(
                f"the model source answered HTTP {status}",
                type=SOURCE_MISMATCH,
                non_retryable=True,
            )
        if 300 <= status < 400:
            return ApplicationError(
                f"the model source redirects (HTTP {status}); redirects are not followed, "
                "trust and name the final URL",
                type=SOURCE_MISMATCH,
                non_retryable=True,
            )
        return SourceUnavailable(f"the model source answered HTTP {status}")

    async def _free(self, needed: int) -> None:
        """Remove least recently used complete files until ``needed`` more bytes fit."""
        await asyncio.to_thread(self._evict, needed)

    def _evict(self, needed: int) -> None:
        entries = []
        total = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                info = path.stat()
                total += info.st_size
                if not path.name.endswith(PARTIAL) and path.name not in self._in_use:
                    entries.append((info.st_mtime, info.st_size, path))
        for _, entry_size, path in sorted(entries):
            if total + needed <= self.max_bytes:
                return
            with contextlib.suppress(OSError):
                path.unlink()
                total -= entry_size


def _expected_length(response: httpx.Response, have: int) -> int | None:
    """The whole file's size the response claims, when it says."""
    if response.status_code == 206:
        content_range = response.headers.get("content-range", "")
        total = content_range.rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


def _hash_into(path: Path, hasher: hashlib._Hash) -> None:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            hasher.update(block)
