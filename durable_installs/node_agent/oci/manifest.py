"""Image manifests and indexes: parsing what a registry or layout returns, choosing a platform.

Everything here is untrusted input. A manifest is bounded in size before it is parsed, every
descriptor's digest must be a well-formed ``sha256``, sizes are non-negative and bounded, and
only the media types an image backend can use are accepted. Error messages describe the
problem in our own words and never repeat a fetched string (media types and platform names
from a registry are not echoed).
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from typing import Any

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Manifests and configs larger than this are refused (containerd uses the same bound)."""
MAX_LAYERS = 256
MAX_INDEX_ENTRIES = 512

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

LAYER_GZIP = (
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
LAYER_TAR = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
)
LAYER_TYPES = (*LAYER_GZIP, *LAYER_TAR)
CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_BLOB = 1 << 50


class ManifestError(ValueError):
    """The manifest or index is unusable; the message names the cause, not fetched text."""


@dataclass(frozen=True)
class Descriptor:
    """A content-addressed blob: its digest, size and media type."""

    media_type: str
    digest: str
    size: int

    @property
    def hex(self) -> str:
        """The digest's hex part (``sha256:`` stripped), a safe file name."""
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Platform:
    """``os``/``architecture``/``variant`` as an index's ``platform`` field spells them."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform manifest: config and layers in application order."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


_MACHINES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
}


def host_platform() -> Platform:
    """The platform of this machine in OCI terms (``linux/amd64``, ``linux/arm64/v8``, ...)."""
    arch, variant = _MACHINES.get(platform.machine().lower(), (platform.machine().lower(), ""))
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` → :class:`Platform`; raises ``ValueError`` on another shape."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_]{1,32}", p) for p in parts):
        raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
    return Platform(*parts)


def _json(body: bytes, what: str) -> dict[str, Any]:
    if len(body) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise ManifestError(f"{what} is not valid JSON") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return data


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestError(f"{what} is not a descriptor object")
    digest, size, media = raw.get("digest"), raw.get("size"), raw.get("mediaType", "")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ManifestError(f"{what} has no valid sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB:
        raise ManifestError(f"{what} has an invalid size")
    if not isinstance(media, str) or len(media) > 256:
        raise ManifestError(f"{what} has an invalid media type")
    return Descriptor(media, digest, size)


def media_type_of(body: bytes, header: str) -> str:
    """The manifest's media type: its own ``mediaType`` field, else the Content-Type header."""
    data = _json(body, "manifest")
    inner = data.get("mediaType")
    if isinstance(inner, str) and inner:
        return inner
    if "manifests" in data:
        return OCI_INDEX
    return header.split(";", 1)[0].strip()


def parse_index(body: bytes, wanted: Platform) -> Descriptor:
    """The manifest of ``wanted`` in an image index / manifest list.

    Matches ``os`` and ``architecture``; a variant in the request must match, a missing
    variant in the entry is accepted (``arm64`` entries often omit ``v8``).
    """
    data = _json(body, "image index")
    entries = data.get("manifests")
    if not isinstance(entries, list) or len(entries) > MAX_INDEX_ENTRIES:
        raise ManifestError("image index has no valid manifests list")
    if len(entries) == 1 and isinstance(entries[0], dict) and "platform" not in entries[0]:
        return _descriptor(entries[0], "image index entry 1")  # an OCI layout's index.json
    fallback = None
    for position, raw in enumerate(entries):
        descriptor = _descriptor(raw, f"image index entry {position + 1}")
        found = raw.get("platform") if isinstance(raw, dict) else None
        if not isinstance(found, dict):
            continue
        if found.get("os") != wanted.os or found.get("architecture") != wanted.architecture:
            continue
        variant = found.get("variant") or ""
        if variant == wanted.variant:
            return descriptor
        if not variant and fallback is None:
            fallback = descriptor
    if fallback is not None:
        return fallback
    raise ManifestError(f"image index has no manifest for platform {wanted}")


def parse_manifest(body: bytes) -> ImageManifest:
    """Config and layers of a single-platform manifest; unknown layer types are refused."""
    data = _json(body, "manifest")
    if data.get("schemaVersion") != 2:
        raise ManifestError("manifest schema version is not 2")
    config = _descriptor(data.get("config"), "manifest config")
    if config.media_type not in CONFIG_TYPES:
        raise ManifestError("manifest config has an unsupported media type")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers or len(raw_layers) > MAX_LAYERS:
        raise ManifestError(f"manifest must list between 1 and {MAX_LAYERS} layers")
    layers = []
    for position, raw in enumerate(raw_layers):
        layer = _descriptor(raw, f"layer {position + 1}")
        if layer.media_type not in LAYER_TYPES:
            raise ManifestError(
                f"layer {position + 1} has an unsupported media type "
                "(supported: tar and tar+gzip layers)"
            )
        layers.append(layer)
    return ImageManifest(config=config, layers=tuple(layers))


def parse_config(body: bytes, layers: int) -> tuple[str, ...]:
    """The config's ``rootfs.diff_ids``: the sha256 of each layer's uncompressed tar, in order.

    The manifest's digests cover the compressed blobs only; the diff_ids are what the image's
    author says those blobs unpack to, and an image with a layer that unpacks to another tar
    is refused. One per layer, or the two documents describe different images.
    """
    data = _json(body, "image config")
    rootfs = data.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and _DIGEST.fullmatch(d) for d in diff_ids
    ):
        raise ManifestError("image config has no valid rootfs.diff_ids")
    if len(diff_ids) != layers:
        raise ManifestError(
            f"image config lists {len(diff_ids)} diff_ids but the manifest lists {layers} layers"
        )
    return tuple(diff_ids)
