"""What an install or upgrade request puts on disk, and from where (docs/protocol.md §4).

A request names a gallery entry (its ``backend``, or a bare name in ``uri``), an archive URL
or an OCI image; the agent's trust settings decide which of those it may use. Planning runs
before the backend's lock is taken, because the lock is keyed by the resolved concrete name.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from durable_installs.node_agent import catalog, fetch
from durable_installs.node_agent.blocking import Abort, run_blocking
from durable_installs.node_agent.config import AgentConfig
from durable_installs.node_agent.errors import AgentError, InstallError
from durable_installs.node_agent.fetch import SourceKind
from durable_installs.node_agent.names import invalid_name_error
from durable_installs.node_agent.oci import reference as oci_reference
from durable_installs.node_agent.oci.pull import OCIFILE
from durable_installs.node_agent.pipeline import Artifact
from durable_installs.node_agent.store import BackendStore, Metadata
from durable_installs.node_agent.trust import Trust
from durable_installs.protocol.messages import GalleryConfig, decode_galleries


@dataclass(frozen=True)
class Plan:
    """What an install or upgrade request will put on disk, decided before taking the lock."""

    lock_name: str
    artifact: Artifact | None = None
    meta: Metadata | None = None


class Planner:
    """Turns a request's backend, ``uri``, ``name``, ``alias`` and galleries into a :class:`Plan`,
    refusing what the agent does not trust."""

    def __init__(
        self, config: AgentConfig, trust: Trust, store: BackendStore, executor: Executor
    ) -> None:
        self.config = config
        self.trust = trust
        self.store = store
        self._executor = executor

    def galleries(self, text: str) -> list[GalleryConfig]:
        """The request's galleries when the agent trusts every one of them, else a refusal."""
        if not text:
            return list(self.config.galleries)
        try:
            galleries = decode_galleries(text)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise AgentError(f"decoding backend galleries: {where}: {first['msg']}") from err
        for gallery in galleries:
            self.trust.check_gallery(gallery)
        return galleries

    async def plan(
        self, backend: str, uri: str, name: str, alias: str, galleries: str, force: bool
    ) -> Plan:
        """Decide what to install and which lock to take; gallery lookups run in a thread."""
        if uri:
            return await self._external_plan(uri, name, alias, galleries)
        if not force and (installed := self.store.lookup(backend)) is not None:
            return Plan(lock_name=installed.name)
        return await self._gallery_plan(backend, galleries)

    async def _gallery_plan(self, backend: str, galleries_text: str) -> Plan:
        galleries = self.galleries(galleries_text)
        config = self.config
        resolution = await run_blocking(
            self._executor,
            Abort(),
            lambda: catalog.resolve(
                backend,
                galleries,
                config.capability,
                config.index_fetch_timeout,
                config.max_index_bytes,
            ),
        )
        entry = resolution.concrete
        sources = entry.sources()
        self.trust.check_entry_sources(resolution.gallery, sources)
        artifact = Artifact(
            name=entry.name,
            sources=sources,
            sha256=entry.sha256,
            alias=entry.alias,
            version=entry.version,
            gallery_url=resolution.gallery.url,
        )
        meta = None
        if resolution.meta is not None:
            meta = Metadata(
                name=resolution.meta.name,
                meta_backend_for=entry.name,
                gallery_url=resolution.gallery.url,
                version=resolution.meta.version,
            )
        return Plan(lock_name=entry.name, artifact=artifact, meta=meta)

    async def _external_plan(self, uri: str, name: str, alias: str, galleries: str) -> Plan:
        """``uri`` set on the request: a gallery name, or an external source the agent trusts.

        A bare name (no ``/``, ``\\`` or scheme) is looked up in the galleries. Anything else
        must pass the ``--allow-request-uri`` allow-list, which never admits a local path or
        ``file://`` URL, so the filesystem is not even looked at for a request's ``uri``.
        """
        if is_gallery_name(uri):
            if name or alias:
                raise InstallError(
                    "specifying a name or alias is not supported for gallery backends"
                )
            return await self._gallery_plan(uri, galleries)
        self.trust.check_uri(uri)
        kind = fetch.classify(uri)
        if kind is SourceKind.OCI:
            return image_plan(uri, name, alias)
        if kind is not SourceKind.ARCHIVE_HTTP:  # the allow-list admits only http(s) and OCI
            raise InstallError(f'source "{uri}" is not supported by this agent')
        file_name = uri.rsplit("/", 1)[-1].split("?", 1)[0]
        target = name or archive_stem(file_name)
        if (error := invalid_name_error(target)) is not None:
            raise AgentError(error)
        artifact = Artifact(
            name=target, sources=(uri,), alias=alias, check_redirect=self.trust.check_redirect
        )
        return Plan(lock_name=target, artifact=artifact)


def image_plan(uri: str, name: str, alias: str) -> Plan:
    """An OCI image named by a request: a registry reference (``name`` required, as in LocalAI)
    or ``ocifile://<path>`` (name defaults to the file name without its extension)."""
    if uri.startswith(OCIFILE):
        target = name or archive_stem(Path(oci_reference.ocifile_path(uri)).name)
    elif not name:
        raise InstallError(
            f"error installing backend {uri}: specifying a name is required for OCI images"
        )
    else:
        target = name
        try:
            oci_reference.parse(uri)
        except oci_reference.InvalidReference as err:
            raise InstallError(
                f'rejected OCI image "{uri}": invalid image reference: {err}'
            ) from err
    # The caller has passed the request's uri through the trust allow-list (registry and
    # repository prefixes; an ocifile:// path from a request is never admitted).
    if (error := invalid_name_error(target)) is not None:
        raise AgentError(error)
    return Plan(lock_name=target, artifact=Artifact(name=target, sources=(uri,), alias=alias))


def is_gallery_name(uri: str) -> bool:
    """A request ``uri`` that names a gallery entry rather than a source (docs/protocol.md §4)."""
    return "/" not in uri and "\\" not in uri and ":" not in uri


def archive_stem(file_name: str) -> str:
    """The backend name an archive or image file gives when the request names none."""
    for suffix in (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar", ".oci"):
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name
