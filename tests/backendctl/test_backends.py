"""``backends``: gallery entries and the scripted nodes that have them."""

from __future__ import annotations

import json
from pathlib import Path

from nats.aio.client import Client as NATS

from durable_installs.protocol.messages import NodeBackendInfo
from tests.backendctl.cli import ctl
from tests.fake_node import FakeNode


async def test_backends_lists_gallery_entries_with_the_nodes_that_have_them(
    nc: NATS, nats_url: str, node_id: str, temporal_address: str, tmp_path: Path
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="cpu-llama-cpp", version="1.2.3")]
    index = tmp_path / "index.yaml"
    index.write_text(
        "- name: llama-cpp\n  capabilities: {default: cpu-llama-cpp}\n"
        "- name: cpu-llama-cpp\n  uri: https://example.invalid/a.tar\n  version: 1.2.3\n"
        "- name: cpu-whisper\n  uri: https://example.invalid/b.tar\n"
    )

    out = await ctl(
        "backends",
        "--gallery",
        str(index),
        "--node",
        node_id,
        "--json",
        address=temporal_address,
        env={"NATS_URL": nats_url},
    )

    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert node_id in rows["llama-cpp"]["nodes"] and rows["llama-cpp"]["kind"] == "meta"
    assert node_id in rows["cpu-llama-cpp"]["nodes"]
    assert node_id not in rows["cpu-whisper"]["nodes"]
