"""Small but real backends and gallery files, built on the fly (tests and demo stacks).

A sample backend is a directory with ``run.sh`` that starts a tiny Python gRPC server
implementing ``/backend.Backend/Health`` (answers ``OK``) and ``/backend.Backend/Free`` on the
``--addr`` it is given — exactly the run contract of docs/protocol.md. ``run.sh`` names the absolute
path of the interpreter that built it, so the backend runs without network access or a
separate installation. :func:`build_gallery` packs backends as ``.tar.gz`` archives and writes
a gallery index (YAML or JSON) with their sha256, ready for a node agent to install.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from durable_installs.protocol.messages import GalleryConfig

SERVER_SOURCE = '''\
"""Sample backend: serves Health and Free of backend.Backend on --addr."""
import argparse
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

VERSION = {version!r}
TOKEN = os.environ.get("LOCALAI_GRPC_AUTH_TOKEN", "")


def _authorised(context):
    if not TOKEN:
        return True
    metadata = dict(context.invocation_metadata())
    return metadata.get("authorization") == "Bearer " + TOKEN


def health(request, context):
    if not _authorised(context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
    return b"\\x0a\\x02OK"


def free(request, context):
    print("free called", file=sys.stderr, flush=True)
    return b"\\x0a\\x05freed\\x10\\x01"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    args = parser.parse_args()
    handler = grpc.method_handlers_generic_handler(
        "backend.Backend",
        {{
            "Health": grpc.unary_unary_rpc_method_handler(health),
            "Free": grpc.unary_unary_rpc_method_handler(free),
        }},
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        bound = server.add_insecure_port(args.addr)
    except RuntimeError:
        bound = 0
    if not bound:
        print("cannot listen on " + args.addr, file=sys.stderr, flush=True)
        sys.exit(1)
    server.start()
    print("sample backend " + VERSION + " listening on " + args.addr, file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


if __name__ == "__main__":
    main()
'''

CRASH_SCRIPT = """\
#!/bin/sh
echo "loading model runtime {version}" >&2
echo "fatal: libcuda.so.1: cannot open shared object file" >&2
exit 3
"""


def run_script(python: str = sys.executable) -> str:
    """``run.sh`` of a healthy sample backend: the server under this interpreter."""
    return f'#!/bin/sh\ncd "$(dirname "$0")"\nexec "{python}" server.py "$@"\n'


@dataclass(frozen=True)
class SampleBackend:
    """What to build: a name, a version, and how the backend behaves."""

    name: str
    version: str = "1.0.0"
    alias: str = ""
    crash: bool = False
    """``run.sh`` prints to stderr and exits 3 (a backend that dies at start-up)."""
    with_run_file: bool = True
    """False: the archive lacks ``run.sh`` (not a valid backend)."""
    padding_bytes: int = 0
    """Size of an incompressible ``weights.bin``: makes the download long enough to watch."""


@dataclass(frozen=True)
class BuiltArtifact:
    """An archive on disk and its sha256."""

    path: Path
    sha256: str

    @property
    def uri(self) -> str:
        """``file://`` URI of the archive."""
        return self.path.resolve().as_uri()


def backend_files(spec: SampleBackend) -> dict[str, tuple[bytes, int]]:
    """Relative path → (content, mode) of the backend's files."""
    files: dict[str, tuple[bytes, int]] = {
        "server.py": (SERVER_SOURCE.format(version=spec.version).encode(), 0o644),
        "VERSION": (f"{spec.version}\n".encode(), 0o644),
    }
    if spec.with_run_file:
        script = CRASH_SCRIPT.format(version=spec.version) if spec.crash else run_script()
        files["run.sh"] = (script.encode(), 0o755)
    if spec.padding_bytes:
        # Pseudo-random bytes do not compress, so the archive really is this large.
        files["weights.bin"] = (random.Random(spec.name).randbytes(spec.padding_bytes), 0o644)
    return files


def write_backend_dir(directory: Path, spec: SampleBackend) -> Path:
    """Write the backend as a plain directory (a local-directory source)."""
    directory.mkdir(parents=True, exist_ok=True)
    for relative, (content, mode) in backend_files(spec).items():
        target = directory / relative
        target.write_bytes(content)
        target.chmod(mode)
    return directory


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_archive(
    path: Path, spec: SampleBackend, extra: list[tuple[tarfile.TarInfo, bytes]] | None = None
) -> BuiltArtifact:
    """Pack ``spec`` as a ``.tar.gz`` (or ``.tar`` by suffix) with ``run.sh`` at the root.

    ``extra`` appends hand-made members, e.g. path-traversal entries for safety tests.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    compressed = path.name.endswith((".tar.gz", ".tgz"))
    with tarfile.open(path, "w:gz") if compressed else tarfile.open(path, "w") as tar:
        for relative, (content, file_mode) in sorted(backend_files(spec).items()):
            info = tarfile.TarInfo(relative)
            info.size = len(content)
            info.mode = file_mode
            tar.addfile(info, io.BytesIO(content))
        for info, content in extra or []:
            tar.addfile(info, io.BytesIO(content) if info.isfile() else None)
    return BuiltArtifact(path=path, sha256=sha256_file(path))


@dataclass
class Gallery:
    """A gallery index file being assembled; :meth:`write` (re)writes it."""

    path: Path
    name: str = "local"
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> GalleryConfig:
        """The gallery as a node's configuration (``file://`` URL)."""
        return GalleryConfig(name=self.name, url=self.path.resolve().as_uri())

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append a raw entry (replacing one of the same name) and rewrite the file."""
        self.entries = [e for e in self.entries if e.get("name") != entry.get("name")]
        self.entries.append(entry)
        self.write()
        return entry

    def add_backend(
        self,
        spec: SampleBackend,
        archive_dir: Path,
        *,
        uri: str | None = None,
        sha256: str | None = None,
        mirrors: list[str] | None = None,
    ) -> BuiltArtifact:
        """Build ``spec`` into ``archive_dir`` and publish it (``uri``/``sha256`` overridable)."""
        built = build_archive(archive_dir / f"{spec.name}-{spec.version}.tar.gz", spec)
        entry: dict[str, Any] = {
            "name": spec.name,
            "uri": uri or built.uri,
            "sha256": built.sha256 if sha256 is None else sha256,
            "version": spec.version,
        }
        if spec.alias:
            entry["alias"] = spec.alias
        if mirrors:
            entry["mirrors"] = mirrors
        self.add(entry)
        return built

    def add_meta(self, name: str, capabilities: dict[str, str], alias: str = "") -> None:
        """Publish a meta entry: capability → concrete entry name."""
        entry: dict[str, Any] = {"name": name, "capabilities": capabilities}
        if alias:
            entry["alias"] = alias
        self.add(entry)

    def write(self) -> None:
        """Write the index as JSON for ``.json`` paths, YAML otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".json":
            self.path.write_text(json.dumps(self.entries, indent=2))
        else:
            self.path.write_text(yaml.safe_dump(self.entries, sort_keys=False))


def build_gallery(root: Path, specs: list[SampleBackend], name: str = "local") -> Gallery:
    """A ready gallery under ``root`` with one archive per spec (demo stacks start here)."""
    gallery = Gallery(path=root / "index.yaml", name=name)
    for spec in specs:
        gallery.add_backend(spec, root / "archives")
    return gallery
