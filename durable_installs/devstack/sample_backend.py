"""Small but real backends and gallery files, built on the fly (tests and demo stacks).

A sample backend is a directory with ``run.sh`` that starts a tiny Python gRPC server
implementing ``/backend.Backend/Health`` (answers ``OK``) and ``/backend.Backend/Free`` on the
``--addr`` it is given — exactly the run contract of docs/protocol.md — and, for the load-model
phase, ``LoadModel`` (succeeds when the model file named in ``ModelOptions`` exists and is
readable, else answers ``success: false`` with the reason; optionally slowly) and ``Status``
(``UNINITIALIZED``, ``BUSY`` while loading, ``READY``, ``ERROR``). ``ModelOptions`` is decoded
by hand with backend.proto's field numbers, as the server has nothing but ``grpcio``.
``run.sh`` names the absolute path of the interpreter that built it, so the backend runs
without network access or a separate installation. :func:`build_gallery` packs backends as
``.tar.gz`` archives and writes a gallery index (YAML or JSON) with their sha256, ready for a
node agent to install.
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
"""Sample backend: Health, Free, LoadModel and Status of backend.Backend on --addr."""
import argparse
import os
import signal
import struct
import sys
import threading
import time
from concurrent import futures

import grpc

VERSION = {version!r}
LOAD_SECONDS = {load_seconds!r}
TOKEN = os.environ.get("LOCALAI_GRPC_AUTH_TOKEN", "")

UNINITIALIZED, BUSY, READY, ERROR = 0, 1, 2, -1
state = UNINITIALIZED
load_lock = threading.Lock()


def _authorised(context):
    if not TOKEN:
        return True
    metadata = dict(context.invocation_metadata())
    return metadata.get("authorization") == "Bearer " + TOKEN


def _check(context):
    if not _authorised(context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")


def _varint(value):
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data, pos):
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("truncated varint")


def _fields(message):
    """Field number -> last value: bytes when length-delimited, int for varints."""
    found = dict()
    pos = 0
    while pos < len(message):
        tag, pos = _read_varint(message, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _read_varint(message, pos)
        elif wire_type == 2:
            length, pos = _read_varint(message, pos)
            value, pos = message[pos : pos + length], pos + length
        elif wire_type == 5:
            value, pos = struct.unpack("<f", message[pos : pos + 4])[0], pos + 4
        elif wire_type == 1:
            value, pos = message[pos : pos + 8], pos + 8
        else:
            raise ValueError("wire type " + str(wire_type))
        if pos > len(message):
            raise ValueError("truncated field")
        found[number] = value
    return found


def _int32(value):
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _result(success, message):
    text = message.encode()
    return b"\\x0a" + _varint(len(text)) + text + (b"\\x10\\x01" if success else b"")


def health(request, context):
    _check(context)
    return b"\\x0a\\x02OK"


def free(request, context):
    print("free called", file=sys.stderr, flush=True)
    return b"\\x0a\\x05freed\\x10\\x01"


def status(request, context):
    _check(context)
    return b"" if state == UNINITIALIZED else b"\\x08" + _varint(state)


def _text(options, number):
    value = options.get(number, b"")
    return value.decode(errors="replace") if isinstance(value, bytes) else ""


def load_model(request, context):
    """ModelOptions: Model 1, ContextSize 2, NGPULayers 12, Threads 15, ModelFile 21,
    ModelPath 59. Loads ModelFile, else Model (under ModelPath when relative)."""
    global state
    _check(context)
    try:
        options = _fields(request)
    except ValueError as err:
        return _result(False, "invalid ModelOptions: " + str(err))
    model, model_file, model_path = _text(options, 1), _text(options, 21), _text(options, 59)
    path = model_file or (os.path.join(model_path, model) if model_path and model else model)
    with load_lock:
        state = BUSY
        print("loading " + repr(path), file=sys.stderr, flush=True)
        time.sleep(LOAD_SECONDS)
        if not path:
            state = ERROR
            return _result(False, "no model given: ModelFile and Model are empty")
        if not os.path.isfile(path):
            state = ERROR
            return _result(False, "model file " + path + " not found (or not a regular file)")
        try:
            with open(path, "rb") as handle:
                handle.read(4)
        except OSError as err:
            state = ERROR
            return _result(False, "model file " + path + " is not readable: " + str(err.strerror))
        state = READY
        numbers = [_int32(options.get(n, 0)) for n in (2, 15, 12)]
        return _result(
            True,
            "loaded " + os.path.basename(path) + " (context " + str(numbers[0])
            + ", threads " + str(numbers[1]) + ", gpu layers " + str(numbers[2]) + ")",
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    args = parser.parse_args()
    handler = grpc.method_handlers_generic_handler(
        "backend.Backend",
        {{
            "Health": grpc.unary_unary_rpc_method_handler(health),
            "Free": grpc.unary_unary_rpc_method_handler(free),
            "LoadModel": grpc.unary_unary_rpc_method_handler(load_model),
            "Status": grpc.unary_unary_rpc_method_handler(status),
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


def server_source(spec: SampleBackend) -> str:
    """``server.py`` of ``spec``."""
    return SERVER_SOURCE.format(version=spec.version, load_seconds=float(spec.load_seconds))


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
    load_seconds: float = 0.0
    """How long ``LoadModel`` takes (``Status`` says ``BUSY`` meanwhile): a load to watch."""


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
        "server.py": (server_source(spec).encode(), 0o644),
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
