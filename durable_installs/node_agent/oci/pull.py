"""One image pull into a staging directory: resolve, download and verify blobs, apply layers.

Order: top manifest (its sha256 is the digest recorded in ``metadata.json``; a pinned
reference must match it) → platform manifest when the top is an index → config (bounded,
verified) → every layer downloaded to ``<work>/<hex>.partial``, verified while streaming, and
renamed to ``<work>/<hex>`` → layers applied in order, each one's uncompressed digest checked
against the config's ``rootfs.diff_ids`` as it is applied. Verified blobs and partials of a pull
that fails transiently stay in ``work`` so the next attempt resumes them; a permanent
failure, a cancel or a success removes ``work``. Runs in a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from durable_installs.node_agent.blocking import Abort
from durable_installs.node_agent.errors import Cancelled
from durable_installs.node_agent.oci import reference
from durable_installs.node_agent.oci.errors import PullError
from durable_installs.node_agent.oci.layers import LayerApplier, UnsafeLayer
from durable_installs.node_agent.oci.layout import Layout
from durable_installs.node_agent.oci.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    ManifestError,
    Platform,
    host_platform,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
)
from durable_installs.node_agent.oci.registry import BytesFn, Registry

log = logging.getLogger(__name__)

OCIFILE = "ocifile://"
MAX_INDEX_DEPTH = 2


class Source(Protocol):
    """Where manifests and blobs come from: a registry or a layout tarball."""

    def manifest(self, target: str) -> tuple[bytes, str]: ...

    def small_blob(self, descriptor: Descriptor, limit: int, what: str) -> bytes: ...

    def blob(
        self, descriptor: Descriptor, partial: Path, on_bytes: BytesFn, what: str
    ) -> hashlib._Hash: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PullProgress:
    """One progress observation: ``phase`` is ``download`` or ``extract``; ``layer`` 1-based;
    ``done``/``total`` count bytes over the whole image (compressed layer sizes)."""

    phase: str
    layer: int
    layers: int
    done: int
    total: int


ProgressFn = Callable[[PullProgress], None]


@dataclass(frozen=True)
class PullOptions:
    """Limits and settings of a pull."""

    max_download_bytes: int
    max_unpacked_bytes: int
    timeout: float
    platform: Platform | None = None


def _sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _open(uri: str, options: PullOptions, abort: Abort) -> tuple[Source, str]:
    """The source of ``uri`` and the top-level target to ask it for."""
    if uri.startswith(OCIFILE):
        return Layout(Path(reference.ocifile_path(uri)), abort), ""
    try:
        ref = reference.parse(uri)
    except reference.InvalidReference as err:
        raise PullError(f"invalid image reference: {err}", permanent=True) from err
    return Registry(ref, timeout=options.timeout, abort=abort), ref.target


def _resolve(source: Source, target: str, platform: Platform) -> tuple[str, bytes]:
    """The top digest and the single-platform manifest's bytes."""
    body, content_type = source.manifest(target)
    top = _sha256(body)
    if target.startswith("sha256:") and top != target:
        raise PullError("manifest digest mismatch: the registry sent other content", permanent=True)
    for _ in range(MAX_INDEX_DEPTH + 1):
        kind = media_type_of(body, content_type)
        if kind in MANIFEST_TYPES:
            if not target:  # a layout's index.json is not content-addressed
                raise PullError("index.json must be an image index", permanent=True)
            return top, body
        if kind not in INDEX_TYPES:
            raise PullError("manifest has an unsupported media type", permanent=True)
        chosen = parse_index(body, platform)
        body, content_type = source.manifest(chosen.digest)
        if _sha256(body) != chosen.digest:
            raise PullError("platform manifest digest mismatch", permanent=True)
        if not target:
            top, target = chosen.digest, chosen.digest
    raise PullError("image indexes are nested too deeply", permanent=True)


def _download(
    source: Source,
    layer: Descriptor,
    work: Path,
    on_bytes: BytesFn,
    what: str,
) -> Path:
    final = work / layer.hex
    if final.is_file() and final.stat().st_size == layer.size:
        on_bytes(layer.size)
        return final  # verified by an earlier, interrupted attempt
    partial = work / f"{layer.hex}.partial"
    digest = source.blob(layer, partial, on_bytes, what)
    size = partial.stat().st_size
    if size != layer.size or "sha256:" + digest.hexdigest() != layer.digest:
        partial.unlink(missing_ok=True)
        raise PullError(
            f"{what} digest mismatch (expected {layer.digest}, {layer.size} bytes; "
            f"received sha256:{digest.hexdigest()}, {size} bytes)",
            permanent=True,
        )
    partial.rename(final)
    return final


def _check_diff_id(found: str, expected: str, label: str) -> None:
    """A layer must unpack to the tar its config describes, not only match its descriptor.

    Checked as soon as the layer is applied (its bytes are hashed while extracting); a
    refusal is permanent, so the caller discards the staging directory with what it holds.
    The digests are logged, not echoed: the expected one is fetched content.
    """
    if found != expected:
        log.warning("%s: uncompressed digest %s, the config says %s", label, found, expected)
        raise PullError(f"{label} does not match the image config's diff_id", permanent=True)


def pull(
    uri: str,
    staging: Path,
    work: Path,
    options: PullOptions,
    on_progress: ProgressFn,
    abort: Abort,
) -> str:
    """Pull ``uri`` into ``staging``; returns the image's top manifest digest.

    ``work`` holds blobs between attempts (one directory per image). Raises
    :class:`PullError`.
    """
    work.mkdir(parents=True, exist_ok=True)
    source, target = _open(uri, options, abort)
    try:
        digest = _pull(source, target, staging, work, options, on_progress, abort)
    except PullError as err:
        if err.permanent:
            shutil.rmtree(work, ignore_errors=True)
        raise
    except (ManifestError, UnsafeLayer) as err:
        shutil.rmtree(work, ignore_errors=True)
        raise PullError(str(err), permanent=True) from err
    except Cancelled:
        shutil.rmtree(work, ignore_errors=True)  # nobody wants this image any more
        raise
    finally:
        source.close()
    shutil.rmtree(work, ignore_errors=True)
    return digest


def _pull(
    source: Source,
    target: str,
    staging: Path,
    work: Path,
    options: PullOptions,
    on_progress: ProgressFn,
    abort: Abort,
) -> str:
    top, body = _resolve(source, target, options.platform or host_platform())
    manifest = parse_manifest(body)
    config = source.small_blob(manifest.config, MAX_MANIFEST_BYTES, "image config")
    if _sha256(config) != manifest.config.digest:
        raise PullError("image config digest mismatch", permanent=True)
    layers = manifest.layers
    diff_ids = parse_config(config, len(layers))
    total = sum(layer.size for layer in layers)
    if total > options.max_download_bytes:
        raise PullError(
            f"image layers total {total} bytes, over the configured download limit of "
            f"{options.max_download_bytes} bytes",
            permanent=True,
        )
    count = len(layers)
    paths = []
    before = 0
    for index, layer in enumerate(layers, start=1):
        abort.check()

        def downloaded(done: int, index: int = index, before: int = before) -> None:
            on_progress(PullProgress("download", index, count, before + done, total))

        what = f"layer {index}/{count} ({layer.digest})"
        paths.append(_download(source, layer, work, downloaded, what))
        before += layer.size
    applier = LayerApplier(staging, limit=options.max_unpacked_bytes, abort=abort)
    before = 0
    for index, (layer, path, diff_id) in enumerate(zip(layers, paths, diff_ids, strict=True), 1):

        def extracted(done: int, index: int = index, before: int = before) -> None:
            on_progress(PullProgress("extract", index, count, before + done, total))

        label = f"layer {index}/{count}"
        _check_diff_id(applier.apply(path, extracted, label), diff_id, label)
        before += layer.size
    on_progress(PullProgress("extract", count, count, total, total))
    log.info("pulled %s layers (%d bytes, %d unpacked)", count, total, applier.unpacked)
    return top
