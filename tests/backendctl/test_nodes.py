"""``nodes`` against scripted nodes over a real NATS."""

from __future__ import annotations

import json

from nats.aio.client import Client as NATS

from durable_installs.protocol.messages import NodeBackendInfo, RunningModelInfo
from tests.backendctl.cli import ctl, one_error_line
from tests.fake_node import FakeNode


async def test_nodes_shows_what_each_node_runs_and_which_do_not_answer(
    nc: NATS, nats_url: str, node_id: str, temporal_address: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="cpu-llama-cpp", version="1.2.3")]
    node.running = [RunningModelInfo(model_id="qwen3", replica_index=0, address="10.0.0.7:50051")]
    missing = f"{node_id}-gone"

    out = await ctl(
        "nodes",
        "--node",
        node_id,
        "--node",
        missing,
        "--json",
        address=temporal_address,
        env={"NATS_URL": nats_url},
    )

    assert out.returncode == 0, out.stderr
    reports = {report["node_id"]: report for report in json.loads(out.stdout)}
    assert reports[node_id]["answered"] is True
    assert reports[node_id]["backends"] == [{"name": "cpu-llama-cpp", "version": "1.2.3"}]
    assert reports[node_id]["running"] == [
        {"model_id": "qwen3", "replica_index": 0, "address": "10.0.0.7:50051"}
    ]
    assert reports[missing]["answered"] is False
    assert "no responders" in reports[missing]["problem"]


async def test_nodes_table_escapes_what_a_node_sends(
    nc: NATS, nats_url: str, node_id: str, temporal_address: str
) -> None:
    node = await FakeNode(nc, node_id).start()
    node.backends = [NodeBackendInfo(name="[bold]evil\x1b[31m", version="1")]

    out = await ctl(
        "nodes", "--node", node_id, address=temporal_address, env={"NATS_URL": nats_url}
    )

    assert out.returncode == 0, out.stderr
    assert "[bold]evil?[31m" in out.stdout
    assert "\x1b" not in out.stdout


async def test_nats_down_is_one_line_naming_the_url(temporal_address: str) -> None:
    out = await ctl(
        "nodes",
        "--node",
        "node-1",
        address=temporal_address,
        env={"NATS_URL": "nats://127.0.0.1:1"},
    )

    assert out.returncode == 2
    assert one_error_line(out.stderr).startswith(
        "error: cannot connect to NATS at nats://127.0.0.1:1"
    )
