"""``backend.list`` carries what drift and upgrades compare: version, uri, digest, when, where."""

from __future__ import annotations

from pathlib import Path

from durable_installs.devstack.sample_backend import Gallery, SampleBackend
from tests.node_agent.conftest import AgentFactory


async def test_an_archive_install_lists_every_metadata_field_with_the_archive_digest(
    start_agent: AgentFactory, gallery: Gallery, archives: Path
) -> None:
    built = gallery.add_backend(SampleBackend("cpu-echo", version="3.2.1"), archives)
    node = await start_agent()
    assert (await node.install("cpu-echo")).success

    listed = (await node.listing()).backends or []

    assert len(listed) == 1
    row = listed[0]
    assert (row.name, row.version, row.uri) == ("cpu-echo", "3.2.1", built.uri)
    assert row.gallery_url == gallery.config.url
    assert row.installed_at.endswith("Z")
    assert row.digest == f"sha256:{built.sha256}"
