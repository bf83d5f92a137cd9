"""The demo gallery: real sample backends, one served slowly enough to watch its progress.

Archives are built once into the state directory and reused on the next run, so a restarted
stack finds the same sha256 for the backends its nodes already installed.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from node_agent.sample_backend import Gallery, SampleBackend, build_archive
from protocol.messages import GalleryConfig

MIB = 1024 * 1024

FAST_BACKEND = SampleBackend("cpu-echo", version="1.0.0", alias="echo")
"""Installs in about a second from a local file."""

LARGE_BACKEND = SampleBackend("cpu-large", version="1.0.0", padding_bytes=24 * MIB)
"""24 MiB served at :data:`THROTTLE_BYTES_PER_SECOND`: several seconds of download progress."""

THROTTLE_BYTES_PER_SECOND = 4 * MIB


@dataclass
class ThrottledFileServer:
    """Serves a directory over HTTP on 127.0.0.1 at a fixed rate, with Range for resumes."""

    root: Path
    port: int
    rate: int = THROTTLE_BYTES_PER_SECOND
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        root, rate = self.root, self.rate

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = (root / self.path.lstrip("/")).resolve()
                if root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and int(match.group(1)) < len(body):
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = max(rate // 10, 1)
                for offset in range(start, len(body), chunk):
                    try:
                        self.wfile.write(body[offset : offset + chunk])
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    time.sleep(0.1)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _archive(archives: Path, spec: SampleBackend) -> tuple[Path, str]:
    """Build the archive once; its sha256 is remembered beside it."""
    path = archives / f"{spec.name}-{spec.version}.tar.gz"
    sidecar = path.with_suffix(".sha256.json")
    if path.exists() and sidecar.exists():
        return path, str(json.loads(sidecar.read_text())["sha256"])
    built = build_archive(path, spec)
    sidecar.write_text(json.dumps({"sha256": built.sha256}))
    return path, built.sha256


def prepare_gallery(gallery_dir: Path, server: ThrottledFileServer) -> GalleryConfig:
    """Write the demo index: ``cpu-echo`` (alias ``echo``) and the slow ``cpu-large``."""
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
            "description": "sample backend with 24 MiB of weights, served at 4 MiB/s",
        }
    )
    return gallery.config
