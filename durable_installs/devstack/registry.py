"""A real OCI registry on loopback, and images built and pushed without Docker.

The registry is the CNCF distribution registry from Debian's ``docker-registry`` package
(``/usr/bin/docker-registry``), started on a free loopback port with its storage in a
directory we own, never as the system service. Images are built here from files (each layer a
tar or tar.gz, a config, a manifest, optionally an index of platforms) and pushed with the
distribution API over ``httpx``: tests and the demo stack never download an image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from durable_installs.devstack.sample_backend import SampleBackend, backend_files

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP_MAGIC = b"\x1f\x8b"


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Blob:
    """Bytes with a media type; its descriptor may be falsified on purpose by tests."""

    media_type: str
    data: bytes
    digest: str = ""
    size: int = -1

    def descriptor(self) -> dict[str, object]:
        """The descriptor a manifest lists for this blob."""
        return {
            "mediaType": self.media_type,
            "digest": self.digest or digest_of(self.data),
            "size": self.size if self.size >= 0 else len(self.data),
        }


def tar_layer(
    members: list[tuple[tarfile.TarInfo, bytes | None]], *, compress: bool = True
) -> Blob:
    """A layer from hand-made tar members (content ``None`` for non-files)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    data = raw.getvalue()
    if compress:
        return Blob(LAYER_GZIP, gzip.compress(data, compresslevel=1, mtime=0))
    return Blob(LAYER_TAR, data)


def file_member(name: str, content: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    """A regular file member."""
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, content


def files_layer(files: dict[str, tuple[bytes, int]], *, compress: bool = True) -> Blob:
    """A layer holding ``files`` (relative path → (content, mode))."""
    return tar_layer(
        [file_member(n, c, m) for n, (c, m) in sorted(files.items())], compress=compress
    )


def diff_id_of(layer: Blob) -> str:
    """The layer's diff_id: the digest of its uncompressed tar (gzip told from the content)."""
    data = gzip.decompress(layer.data) if layer.data[:2] == GZIP_MAGIC else layer.data
    return digest_of(data)


def config_blob(layers: list[Blob], os_name: str = "linux", architecture: str = "amd64") -> Blob:
    """A minimal image config whose ``rootfs.diff_ids`` describe ``layers``, as pulls verify."""
    rootfs = {"type": "layers", "diff_ids": [diff_id_of(layer) for layer in layers]}
    config = {"architecture": architecture, "os": os_name, "rootfs": rootfs}
    return Blob(OCI_CONFIG, json.dumps(config).encode())


@dataclass(init=False)
class Image:
    """A single-platform image: config and layers (bottom first)."""

    layers: list[Blob]
    config: Blob
    media_type: str

    def __init__(
        self, layers: list[Blob], config: Blob | None = None, media_type: str = OCI_MANIFEST
    ) -> None:
        """Without ``config``, a linux/amd64 one whose diff_ids match ``layers``."""
        self.layers = layers
        self.config = config if config is not None else config_blob(layers)
        self.media_type = media_type

    def manifest(self) -> bytes:
        """The manifest JSON."""
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": self.media_type,
                "config": self.config.descriptor(),
                "layers": [layer.descriptor() for layer in self.layers],
            }
        ).encode()


def index_of(entries: list[tuple[bytes, dict[str, str]]]) -> bytes:
    """An image index over (manifest bytes, platform) pairs."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest_of(body),
                    "size": len(body),
                    "platform": platform,
                }
                for body, platform in entries
            ],
        }
    ).encode()


class Pusher:
    """Pushes blobs and manifests to one registry with the distribution API."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None) -> None:
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, auth=auth, timeout=120.0)

    def close(self) -> None:
        """Release the connection."""
        self._client.close()

    def blob(self, repository: str, data: bytes) -> str:
        """Upload ``data`` monolithically (skipped when present); returns its digest."""
        digest = digest_of(data)
        if self._client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
            return digest
        started = self._client.post(f"/v2/{repository}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        done = self._client.put(
            f"{location}{separator}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        done.raise_for_status()
        return digest

    def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest or index under a tag (or digest); returns its digest."""
        answer = self._client.put(
            f"/v2/{repository}/manifests/{reference}",
            content=body,
            headers={"Content-Type": media_type},
        )
        answer.raise_for_status()
        return digest_of(body)

    def image(self, repository: str, tag: str, image: Image) -> str:
        """Push an image's blobs and manifest under ``tag``; returns the manifest digest."""
        for blob in (image.config, *image.layers):
            self.blob(repository, blob.data)
        return self.manifest(repository, tag, image.manifest(), image.media_type)

    def multi_platform(
        self, repository: str, tag: str, images: list[tuple[Image, dict[str, str]]]
    ) -> str:
        """Push each image by digest and an index over them under ``tag``."""
        entries = []
        for image, platform in images:
            for blob in (image.config, *image.layers):
                self.blob(repository, blob.data)
            body = image.manifest()
            self.manifest(repository, digest_of(body), body, image.media_type)
            entries.append((body, platform))
        return self.manifest(repository, tag, index_of(entries), OCI_INDEX)


def backend_image(spec: SampleBackend, *, architecture: str = "amd64") -> Image:
    """A sample backend as an image of two layers: the program, then ``run.sh`` (if any)."""
    files = backend_files(spec)
    program = {k: v for k, v in files.items() if k != "run.sh"}
    layers = [files_layer(program)]
    if "run.sh" in files:
        layers.append(files_layer({"run.sh": files["run.sh"]}))
    return Image(layers=layers, config=config_blob(layers, architecture=architecture))


def write_layout(path: Path, image: Image) -> str:
    """Write ``image`` as an OCI layout tarball (``ocifile://``); returns its manifest digest."""
    manifest = image.manifest()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": image.media_type, "digest": digest_of(manifest), "size": len(manifest)}
        ],
    }
    entries = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
    }
    for data in (manifest, image.config.data, *(layer.data for layer in image.layers)):
        entries[f"blobs/sha256/{digest_of(data).split(':', 1)[1]}"] = data
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return digest_of(manifest)
