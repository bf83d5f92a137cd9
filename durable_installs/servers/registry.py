"""The OCI distribution registry (Debian's ``docker-registry``) on a loopback port.

Started with its storage in a directory we own, never as the system service: for the OCI
tests, the demo stack's OCI gallery entry and the OCI benchmark. Images for it are built by
:mod:`durable_installs.devstack.registry`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from durable_installs.servers.ports import free_port
from durable_installs.servers.running import running

REGISTRY_BINARY = "/usr/bin/docker-registry"
REGISTRY_INSTALL_HINT = "apt-get install docker-registry"


def registry_binary() -> str | None:
    """The registry binary if installed (Debian path first, then PATH)."""
    if Path(REGISTRY_BINARY).is_file():
        return REGISTRY_BINARY
    return shutil.which("docker-registry")


def registry_command(config: Path) -> list[str]:
    """The registry serving ``config`` (:func:`write_registry_config` writes one)."""
    binary = registry_binary()
    if binary is None:
        raise RuntimeError(f"the registry is not installed ({REGISTRY_INSTALL_HINT})")
    return [binary, "serve", str(config)]


@dataclass(frozen=True)
class RunningRegistry:
    """A registry started by :func:`registry_server`."""

    host: str
    """``127.0.0.1:<port>``: image references start with it."""
    url: str
    storage: Path
    """The registry's filesystem storage (tests tamper with blobs there)."""

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps the blob ``digest`` on disk."""
        hex_digest = digest.split(":", 1)[1]
        return (
            self.storage / "data/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest
        ) / "data"


def write_registry_config(storage: Path, port: int, htpasswd: Path | None = None) -> Path:
    """The registry's YAML config: filesystem storage under ``storage``, loopback ``port``."""
    storage.mkdir(parents=True, exist_ok=True)
    config = storage / "registry.yml"
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: local-test-registry",
    ]
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: test", f"    path: {htpasswd}"]
    config.write_text("\n".join(lines) + "\n")
    return config


@contextmanager
def registry_server(
    storage: Path, *, htpasswd: Path | None = None, port: int | None = None
) -> Iterator[RunningRegistry]:
    """Run the distribution registry on loopback for the block (storage in ``storage``).

    ``htpasswd``: require Basic auth against that bcrypt htpasswd file.
    """
    port = port or free_port()
    command = registry_command(write_registry_config(storage, port, htpasswd))
    with running(command, port, log=storage / "registry.log"):
        yield RunningRegistry(
            host=f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}", storage=storage
        )
