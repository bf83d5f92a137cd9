"""``make run``'s OCI demo: a local registry holding one image backend, ``cpu-echo-oci``.

When Debian's ``docker-registry`` is installed the stack starts it (storage under the state
directory, loopback only), pushes the sample backend as a two-layer image and adds a gallery
entry pointing at it, so nodes pull it exactly as they would from quay.io. Without the
registry the stack runs as before and says how to get the OCI demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durable_installs.devstack.processes import ProcessGroup
from durable_installs.devstack.registry import Pusher, backend_image
from durable_installs.devstack.sample_backend import SampleBackend
from durable_installs.servers import (
    REGISTRY_INSTALL_HINT,
    registry_binary,
    registry_command,
    wait_for_port,
    write_registry_config,
)

OCI_BACKEND = SampleBackend("cpu-echo-oci", version="1.0.0")
REPOSITORY = "local-ai-backends"
TAG = "latest-cpu-echo"


@dataclass(frozen=True)
class DemoRegistry:
    """What the stack tells the user about the OCI demo."""

    entry: dict[str, Any] | None
    """The gallery entry of the image backend; None when the registry is not installed."""
    note: str


def start_demo_registry(group: ProcessGroup, state: Path, port: int) -> DemoRegistry:
    """Start the registry in ``group`` and push the demo image, if the registry is installed."""
    if registry_binary() is None:
        hint = f"OCI demo backend off: {REGISTRY_INSTALL_HINT} to get cpu-echo-oci"
        return DemoRegistry(None, hint)
    config = write_registry_config(state / "registry", port)
    group.start(
        "registry",
        registry_command(config),
        server=True,
        ready=lambda c: wait_for_port(port, 30, c.proc),
    )
    pusher = Pusher(f"http://127.0.0.1:{port}")
    try:
        digest = pusher.image(REPOSITORY, TAG, backend_image(OCI_BACKEND))
    finally:
        pusher.close()
    ref = f"127.0.0.1:{port}/{REPOSITORY}:{TAG}"
    entry = {
        "name": OCI_BACKEND.name,
        "uri": ref,
        "version": OCI_BACKEND.version,
        "description": "sample backend as an OCI image in the local registry",
    }
    return DemoRegistry(entry, f"OCI demo backend cpu-echo-oci: {ref} ({digest[:19]}...)")
