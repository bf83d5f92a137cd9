"""Fixtures for a real OCI registry (Debian's ``docker-registry``) and pushing test images."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.registry import (
    INSTALL_HINT,
    Pusher,
    RunningRegistry,
    registry_binary,
    registry_server,
)

SKIP_REASON = f"the distribution registry is not installed ({INSTALL_HINT}; CI installs it)"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry on a free loopback port with its own storage, for the test module."""
    if registry_binary() is None:
        pytest.skip(SKIP_REASON)
    with registry_server(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def pusher(registry: RunningRegistry) -> Iterator[Pusher]:
    """Pushes images to :func:`registry` with the distribution API."""
    client = Pusher(registry.url)
    yield client
    client.close()
