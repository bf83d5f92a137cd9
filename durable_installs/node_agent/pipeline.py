"""The install pipeline of one concrete backend (docs/protocol.md §10).

staging directory → fetch (``uri``, then each mirror) → sha256 → safe unpack → require
``run.sh`` → ``metadata.json`` → atomic swap with backup. Staging is always removed; a
failure at any step leaves the installed version untouched. The caller holds the backend's
lock. Blocking work runs in threads through :func:`node_agent.blocking.run_blocking`, so a
cancel stops it before the staging directory is removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from durable_installs.node_agent import archive, fetch, oci
from durable_installs.node_agent.blocking import Abort, run_blocking
from durable_installs.node_agent.config import AgentConfig
from durable_installs.node_agent.errors import InstallError
from durable_installs.node_agent.fetch import DownloadError, SourceKind
from durable_installs.node_agent.progress import Tick
from durable_installs.node_agent.store import RUN_FILE, BackendStore, Metadata
from durable_installs.protocol.messages import ProgressPhase
from durable_installs.telemetry import NodeMetrics, phase_span
from durable_installs.telemetry.spans import BYTES

log = logging.getLogger(__name__)

UNSUPPORTED_OCI = ("ollama://",)
"""OCI-classified sources that are not images of backends (Ollama models)."""

TickFn = Callable[[Tick], None]
"""Receives progress on the event loop."""

TEST_PAUSE_BEFORE_EXTRACT = "NODE_AGENT_TEST_PAUSE_BEFORE_EXTRACT"
"""Test only: seconds to sleep between a verified download and its extraction.

Tests set it to hold a subprocess agent in that window and SIGKILL it there; nothing else
should. Unset (the default) costs nothing.
"""


def _test_pause() -> float:
    try:
        return max(0.0, float(os.environ.get(TEST_PAUSE_BEFORE_EXTRACT, "0")))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Artifact:
    """What to install under ``name``: sources in order and the expected sha256."""

    name: str
    sources: tuple[str, ...]
    sha256: str = ""
    alias: str = ""
    version: str = ""
    gallery_url: str = ""
    check_redirect: Callable[[str], None] | None = None
    """Raises for a redirect target the source may not lead to (set for request ``uri``s, so an
    allowed server cannot redirect the agent somewhere the allow-list does not admit)."""


class _Throttle:
    """Forward thread-side progress to the loop at most every 50 ms (the debounce does the rest)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_tick: TickFn, make: Callable[[int, int], Tick]
    ) -> None:
        self._loop, self._on_tick, self._make = loop, on_tick, make
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= 0.05 or (total and done >= total):
            self._last = now
            self._loop.call_soon_threadsafe(self._on_tick, self._make(done, total))


def _percent(done: int, total: int) -> float:
    return min(100.0, done * 100.0 / total) if total else 0.0


def partial_path(store: BackendStore, uri: str) -> Path:
    """Resumable download file of ``uri``; stable across attempts and agent restarts."""
    return store.downloads() / f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}.partial"


class Pipeline:
    """Installs artifacts into a :class:`BackendStore`."""

    def __init__(
        self,
        store: BackendStore,
        config: AgentConfig,
        executor: Executor,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._executor = executor
        self._tracer = config.telemetry.tracer()
        self._metrics = metrics or NodeMetrics(config.telemetry.meter())

    async def install(
        self,
        artifact: Artifact,
        on_tick: TickFn,
        keep_backup: bool,
        before_swap: Callable[[], Awaitable[None]] | None = None,
    ) -> Path | None:
        """Install ``artifact``; returns the previous version's backup when ``keep_backup``.

        ``before_swap`` runs once the new version is staged and valid, right before it
        replaces the old one (an upgrade stops the backend's processes there, so a failed
        download never costs a running process).
        """
        abort = Abort()
        staging = self._store.prepare_staging(artifact.name)
        try:
            used, digest = await self._fetch_first(artifact, staging, on_tick, abort)
            run_file = staging / RUN_FILE
            if not run_file.is_file():
                raise InstallError(f'not a valid backend: run file not found "{run_file}"')
            self._store.write_metadata(
                staging,
                Metadata(
                    name=artifact.name,
                    alias=artifact.alias,
                    gallery_url=artifact.gallery_url,
                    installed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    version=artifact.version,
                    uri=used,
                    digest=digest,
                ),
            )
            if before_swap is not None:
                await before_swap()
            backup = self._store.swap_in(artifact.name, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if backup is not None and not keep_backup:
            shutil.rmtree(backup, ignore_errors=True)
            return None
        return backup

    async def _fetch_first(
        self, artifact: Artifact, staging: Path, on_tick: TickFn, abort: Abort
    ) -> tuple[str, str]:
        """Materialise the first source that works into ``staging``.

        Returns its URI and its digest: an OCI image's manifest digest, an archive's
        ``sha256:<hex>``, "" for a local directory (nothing stable to hash).
        """
        failures: list[str] = []  # one text per source that failed, in order
        rejected: list[str] = []  # the images no retry can fix: '"<uri>": <cause>'
        unsupported = 0
        for uri in artifact.sources:
            kind = fetch.classify(uri)
            if kind is SourceKind.OCI and not uri.startswith(UNSUPPORTED_OCI):
                _empty(staging)
                try:
                    return uri, await self._pull_image(uri, staging, on_tick, abort)
                except oci.PullError as err:
                    # The next source may well have it (a mirror, the development build):
                    # LocalAI tries every source, whatever the failure.
                    if err.permanent:
                        rejected.append(f'"{uri}": {err.cause}')
                        failures.append(f'rejected OCI image "{uri}": {err.cause}')
                    else:
                        failures.append(f'failed to pull OCI image "{uri}": {err.cause}')
                    continue
            if kind in (SourceKind.OCI, SourceKind.UNSUPPORTED):
                unsupported += 1
                failures.append(f'"{uri}": {kind.value} sources are not supported by this agent')
                continue
            _empty(staging)
            try:
                return uri, await self._materialise(uri, kind, artifact, staging, on_tick, abort)
            except DownloadError as err:
                failures.append(f'"{uri}": {err}' if uri != artifact.sources[0] else str(err))
            except archive.UnsafeArchive as err:
                raise InstallError(f'unsafe archive "{uri}": {err}') from err
        primary = artifact.sources[0] if artifact.sources else ""
        if unsupported == len(artifact.sources):
            raise InstallError(f'OCI image "{primary}" is not supported by this agent')
        if rejected and len(rejected) + unsupported == len(artifact.sources):
            # Every image was refused for good (no such tag, integrity, refused credentials):
            # no retry can help, so the reply says "rejected" (InstallRejected).
            raise InstallError("rejected OCI image " + "; ".join(rejected))
        raise InstallError(f'failed to download backend "{primary}": ' + "; ".join(failures))

    async def _pull_image(self, uri: str, staging: Path, on_tick: TickFn, abort: Abort) -> str:
        """Pull the OCI image ``uri`` into ``staging``; returns its manifest digest."""
        work = self._store.downloads() / f"oci-{hashlib.sha256(uri.encode()).hexdigest()[:24]}"
        options = oci.PullOptions(
            max_download_bytes=self._config.max_download_bytes,
            max_unpacked_bytes=self._config.max_unpacked_bytes,
            timeout=self._config.download_stall_timeout,
        )
        report = _pull_reporter(asyncio.get_running_loop(), on_tick, uri)
        on_tick(Tick(ProgressPhase.DOWNLOADING, f"Downloading {uri}"))
        with phase_span(self._tracer, "download", **{"install.source": uri}) as span:
            digest = await run_blocking(
                self._executor,
                abort,
                lambda: oci.pull(uri, staging, work, options, report, abort),
            )
            span.set("install.digest", digest)
        return digest

    async def _materialise(
        self,
        uri: str,
        kind: SourceKind,
        artifact: Artifact,
        staging: Path,
        on_tick: TickFn,
        abort: Abort,
    ) -> str:
        """Download (or copy) and extract ``uri`` into ``staging``; returns its digest or ""."""
        loop = asyncio.get_running_loop()
        limit = self._config.max_unpacked_bytes
        if kind is SourceKind.DIRECTORY:
            on_tick(Tick(ProgressPhase.EXTRACTING, f"Copying {uri}"))
            source = fetch.local_path(uri)
            with phase_span(self._tracer, "extract", **{"install.source": uri}):
                await run_blocking(
                    self._executor,
                    abort,
                    lambda: archive.copy_directory(source, staging, limit=limit, abort=abort),
                )
            return ""
        partial = partial_path(self._store, uri)
        downloading = _Throttle(
            loop,
            on_tick,
            lambda d, t: Tick(ProgressPhase.DOWNLOADING, str(partial), d, t, _percent(d, t)),
        )
        on_tick(Tick(ProgressPhase.DOWNLOADING, str(partial)))
        try:
            with phase_span(self._tracer, "download", **{"install.source": uri}) as download:
                digest = await run_blocking(
                    self._executor,
                    abort,
                    lambda: fetch.fetch(
                        uri,
                        partial,
                        limit=self._config.max_download_bytes,
                        stall_timeout=self._config.download_stall_timeout,
                        on_progress=downloading,
                        abort=abort,
                        check_redirect=artifact.check_redirect,
                    ),
                )
                size = partial.stat().st_size
                download.set(BYTES, size)
                self._metrics.download_bytes.add(size)
            with phase_span(self._tracer, "verify", **{"install.sha256": artifact.sha256}):
                if artifact.sha256 and digest.lower() != artifact.sha256.lower():
                    raise DownloadError(
                        f'SHA mismatch for file "{partial}" ( calculated: {digest} != '
                        f"metadata: {artifact.sha256} )"
                    )
            if pause := _test_pause():
                log.warning("pausing before extract for %gs (%s, test only)", pause, uri)
                await asyncio.sleep(pause)
            extracting = _Throttle(
                loop,
                on_tick,
                lambda d, t: Tick(
                    ProgressPhase.EXTRACTING, f"Extracting {uri}", d, t, _percent(d, t)
                ),
            )
            on_tick(Tick(ProgressPhase.EXTRACTING, f"Extracting {uri}"))
            with phase_span(self._tracer, "extract", **{"install.source": uri}):
                await run_blocking(
                    self._executor,
                    abort,
                    lambda: archive.extract(
                        partial, staging, limit=limit, on_progress=extracting, abort=abort
                    ),
                )
        except DownloadError as err:
            if "SHA mismatch" in str(err):
                partial.unlink(missing_ok=True)  # a resume would only repeat the mismatch
            raise
        except BaseException:
            partial.unlink(missing_ok=True)  # cancelled, or the archive is bad: start over
            raise
        partial.unlink(missing_ok=True)
        return f"sha256:{digest.lower()}"


def _pull_reporter(
    loop: asyncio.AbstractEventLoop, on_tick: TickFn, uri: str
) -> Callable[[oci.PullProgress], None]:
    """Pull progress → ticks in LocalAI's shape (``Downloading i/n <ref>``, ``Extracting <ref>``).

    Coalescing, not dropping: the thread keeps the newest observation per ``file_name`` and at
    most one delivery is queued on the loop, so the loop is never flooded and the last value
    before a stall (a registry that stops sending) is always delivered.
    """
    lock = threading.Lock()
    pending: list[Tick] = []

    def deliver() -> None:
        with lock:
            ticks = pending[:]
            pending.clear()
        for tick in ticks:
            on_tick(tick)

    def report(progress: oci.PullProgress) -> None:
        downloading = progress.phase == "download"
        name = (
            f"Downloading {progress.layer}/{progress.layers} {uri}"
            if downloading
            else f"Extracting {uri}"
        )
        phase = ProgressPhase.DOWNLOADING if downloading else ProgressPhase.EXTRACTING
        percent = _percent(progress.done, progress.total)
        tick = Tick(phase, name, progress.done, progress.total, percent)
        with lock:
            schedule = not pending
            if pending and pending[-1].file_name == name:
                pending[-1] = tick
            else:
                pending.append(tick)
        if schedule:
            loop.call_soon_threadsafe(deliver)

    return report


def _empty(directory: Path) -> None:
    """Remove everything inside ``directory`` (staging is wiped before each source)."""
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
