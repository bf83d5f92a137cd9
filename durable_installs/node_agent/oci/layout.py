"""``ocifile://<path>``: an OCI image layout packed as a tarball (``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``), e.g. what ``skopeo copy ... oci-archive:<path>`` writes.

It offers the same three reads as :class:`node_agent.oci.registry.Registry`, so the pull
logic is one: the layout's ``index.json`` plays the tag, blobs are tar members found by
digest. Everything read is verified against its digest like a registry's answer.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from durable_installs.node_agent.blocking import Abort
from durable_installs.node_agent.oci.errors import PullError
from durable_installs.node_agent.oci.manifest import MAX_MANIFEST_BYTES, OCI_INDEX, Descriptor
from durable_installs.node_agent.oci.registry import CHUNK, BytesFn

INDEX = "index.json"


class Layout:
    """Reads one OCI layout tarball."""

    def __init__(self, path: Path, abort: Abort) -> None:
        self._abort = abort
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self._members = {
                m.name.removeprefix("./"): m for m in self._tar.getmembers() if m.isfile()
            }
        except (OSError, tarfile.TarError, EOFError) as err:
            raise PullError(
                f"cannot read the OCI layout tarball ({type(err).__name__})", permanent=True
            ) from err

    def close(self) -> None:
        """Close the tarball."""
        self._tar.close()

    def __enter__(self) -> Layout:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _read(self, name: str, limit: int, what: str) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise PullError(f"{what} is missing from the OCI layout", permanent=True)
        if member.size > limit:
            raise PullError(f"{what} is larger than {limit} bytes", permanent=True)
        handle = self._tar.extractfile(member)
        if handle is None:
            raise PullError(f"{what} is not a file in the OCI layout", permanent=True)
        with handle:
            return handle.read(limit + 1)

    def manifest(self, target: str) -> tuple[bytes, str]:
        """``index.json`` for the top level (``target`` empty), else a manifest blob."""
        if not target:
            return self._read(INDEX, MAX_MANIFEST_BYTES, INDEX), OCI_INDEX
        hex_digest = target.split(":", 1)[1]
        return self._read(f"blobs/sha256/{hex_digest}", MAX_MANIFEST_BYTES, "manifest"), ""

    def small_blob(self, descriptor: Descriptor, limit: int, what: str) -> bytes:
        """A small blob read into memory."""
        return self._read(f"blobs/sha256/{descriptor.hex}", limit, what)

    def blob(
        self, descriptor: Descriptor, partial: Path, on_bytes: BytesFn, what: str
    ) -> hashlib._Hash:
        """Copy a blob out of the tarball into ``partial``, hashing it on the way."""
        name = f"blobs/sha256/{descriptor.hex}"
        member = self._members.get(name)
        handle = self._tar.extractfile(member) if member is not None else None
        if handle is None:
            raise PullError(f"{what} is missing from the OCI layout", permanent=True)
        digest = hashlib.sha256()
        done = 0
        with handle, partial.open("wb") as out:
            while chunk := handle.read(CHUNK):
                self._abort.check()
                done += len(chunk)
                if done > descriptor.size:
                    raise PullError(f"{what} is larger than its descriptor says", permanent=True)
                out.write(chunk)
                digest.update(chunk)
                on_bytes(done)
        return digest
