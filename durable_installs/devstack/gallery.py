"""The demo gallery: real sample backends, one downloaded and one loading slowly enough to watch.

Archives are built once into the state directory and reused on the next run, so a restarted
stack finds the same sha256 for the backends its nodes already installed.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from durable_installs.devstack.fileserver import RangeFileServer
from durable_installs.devstack.sample_backend import Gallery, SampleBackend, build_archive
from durable_installs.protocol.messages import GalleryConfig

MIB = 1024 * 1024

FAST_BACKEND = SampleBackend("cpu-echo", version="1.0.0", alias="echo")
"""Installs in about a second from a local file."""

LARGE_BACKEND = SampleBackend("cpu-large", version="1.0.0", padding_bytes=24 * MIB)
"""24 MiB served at :data:`THROTTLE_BYTES_PER_SECOND`: about 40 s of download progress."""

SLOW_LOAD_BACKEND = SampleBackend("cpu-slow-load", version="1.0.0", load_seconds=20.0)
"""Installs at once; its ``LoadModel`` takes 20 s (``Status`` says busy meanwhile), so the
load-model phase can be watched."""

THROTTLE_BYTES_PER_SECOND = 600 * 1024
"""Slow enough that the sample install of ``make run`` can be opened in the UI and watched
(about 40 s for 24 MiB); ``--artifact-rate`` changes it."""


class ThrottledFileServer(RangeFileServer):
    """Serves a directory at a fixed rate, so a download shows several seconds of progress."""

    def __init__(self, root: Path, port: int, rate: int = THROTTLE_BYTES_PER_SECOND) -> None:
        super().__init__(port)
        self.root = root
        self.rate = rate

    def find(self, path: str) -> bytes | None:
        file = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() not in file.parents or not file.is_file():
            return None
        return file.read_bytes()

    def write_body(self, handler: BaseHTTPRequestHandler, payload: bytes) -> None:
        chunk = max(self.rate // 10, 1)
        for offset in range(0, len(payload), chunk):
            handler.wfile.write(payload[offset : offset + chunk])
            time.sleep(0.1)


def _archive(archives: Path, spec: SampleBackend) -> tuple[Path, str]:
    """Build the archive once; its sha256 is remembered beside it."""
    path = archives / f"{spec.name}-{spec.version}.tar.gz"
    sidecar = path.with_suffix(".sha256.json")
    if path.exists() and sidecar.exists():
        return path, str(json.loads(sidecar.read_text())["sha256"])
    built = build_archive(path, spec)
    sidecar.write_text(json.dumps({"sha256": built.sha256}))
    return path, built.sha256


def prepare_gallery(
    gallery_dir: Path, server: ThrottledFileServer, extra: list[dict[str, Any]] | None = None
) -> GalleryConfig:
    """Write the demo index: ``cpu-echo`` (alias ``echo``), the slow ``cpu-large`` and the
    slow-loading ``cpu-slow-load``."""
    archives = server.root
    archives.mkdir(parents=True, exist_ok=True)
    gallery = Gallery(path=gallery_dir / "index.yaml", name="demo")
    fast_path, fast_sha = _archive(archives, FAST_BACKEND)
    gallery.add(
        {
            "name": FAST_BACKEND.name,
            "alias": FAST_BACKEND.alias,
            "uri": fast_path.resolve().as_uri(),
            "sha256": fast_sha,
            "version": FAST_BACKEND.version,
            "description": "tiny sample backend from a local archive",
        }
    )
    large_path, large_sha = _archive(archives, LARGE_BACKEND)
    gallery.add(
        {
            "name": LARGE_BACKEND.name,
            "uri": server.url(large_path.name),
            "sha256": large_sha,
            "version": LARGE_BACKEND.version,
            "description": "sample backend with 24 MiB of weights, served slowly",
        }
    )
    slow_path, slow_sha = _archive(archives, SLOW_LOAD_BACKEND)
    gallery.add(
        {
            "name": SLOW_LOAD_BACKEND.name,
            "uri": slow_path.resolve().as_uri(),
            "sha256": slow_sha,
            "version": SLOW_LOAD_BACKEND.version,
            "description": "sample backend whose LoadModel takes 20 s",
        }
    )
    for entry in extra or []:  # e.g. the OCI image backend of devstack.demo_registry
        gallery.add(entry)
    return gallery.config
