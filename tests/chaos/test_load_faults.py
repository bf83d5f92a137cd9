"""A model load is hit mid-staging by each fault in turn; it completes, sending little twice.

Each test stages a three-file model (16 MiB each, 4 MiB/s per transfer) to a real node agent
through the counting proxy (``tests/chaos/loading.py``), waits until the node holds a quarter
of the second file as a partial upload, and then SIGKILLs one component: the worker (a new
one is started), the node agent (restarted on the same directories, token and file port),
``nats-server`` (restarted on its port) or the Temporal dev server (down longer than the
heartbeat timeout, restarted on the same database). The load must complete with the model
loaded, every file on the node with its sha256, and at most 5 % of the model sent twice,
counted by the proxy outside the worker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.chaos.components import NatsServer, TemporalServer
from tests.chaos.conftest import Harness
from tests.chaos.loading import HEARTBEAT_TIMEOUT, LOAD_WITHIN, staged_load
from tests.chaos.scenario import MIB
from tests.workflow_helpers import wait_for

pytestmark = pytest.mark.timeout(300)

MIDDLE = 1
"""The file the fault hits: the first is in place by then, the third not begun."""

TEMPORAL_OUTAGE_SECONDS = 8.0
"""Longer than the load's heartbeat timeout, so the server times the staging attempt out."""


async def test_worker_killed_mid_file_a_new_worker_resumes_the_staging(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str
) -> None:
    load = await staged_load(chaos, client, nats_url)
    first = await load.worker(temporal_address, nats_url, "worker-1")
    await load.start()
    await load.node_holds_part_of(MIDDLE, 0.25)

    first.kill()
    load.assert_mid_file(MIDDLE)
    await load.worker(temporal_address, nats_url, "worker-2")
    result = await load.result()

    await load.assert_loaded(result)
    assert load.resumed(MIDDLE), "the new worker continued the node's partial"


async def test_agent_killed_mid_file_restarts_and_the_staging_resumes(
    chaos: Harness, client: Client, temporal_address: str, nats_url: str
) -> None:
    load = await staged_load(chaos, client, nats_url)
    await load.worker(temporal_address, nats_url, "worker")
    await load.start()
    await load.node_holds_part_of(MIDDLE, 0.25)

    load.node.agent.kill()
    load.assert_mid_file(MIDDLE)
    kept = load.partial_size(MIDDLE)  # the agent is dead: this is all it stored
    await load.node.agent.start()
    result = await load.result()

    (first, cut), (resumed_at, _) = load.puts_of(MIDDLE)[:2]
    assert first == 0
    assert resumed_at == kept, "the staging continued exactly where the agent's partial ended"
    await load.assert_loaded(result, lost_in_flight=cut - kept)


async def test_nats_server_killed_mid_file_the_staging_goes_on_and_completes(
    chaos: Harness, client: Client, temporal_address: str, tmp_path: Path
) -> None:
    server = NatsServer("nats", tmp_path)
    chaos.adopt(server)
    await server.start()
    load = await staged_load(chaos, client, server.url)
    await load.worker(temporal_address, server.url, "worker")
    await load.start()
    await load.node_holds_part_of(MIDDLE, 0.25)

    server.kill()
    load.assert_mid_file(MIDDLE)
    # File transfer is HTTP between worker and node: it must not wait for NATS to return.
    sent = load.proxy.body_bytes("PUT")
    await wait_for(
        lambda: load.proxy.body_bytes("PUT") >= sent + 2 * MIB,
        within=LOAD_WITHIN,
        what="2 MiB more staged while NATS is down",
    )
    await server.start()
    result = await load.result()

    await load.assert_loaded(result)


async def test_temporal_times_the_staging_attempt_out_while_it_sends_the_next_one_resumes(
    chaos: Harness, nats_url: str, tmp_path: Path
) -> None:
    """The attempt the server times out after the outage is still sending when the worker
    learns it lost it, so the cancel lands mid-file; the next attempt resumes the partial.

    Two devices make that order certain rather than likely: the transfer is held at the
    proxy through the outage (a stalled network, far below the stall bound), so the middle
    file cannot finish meanwhile; and the worker is paused (SIGSTOP) while Temporal restarts
    until the server has timed the attempt out, so no heartbeat of the worker reaches the
    server before its overdue heartbeat timeout fires (which one comes first after a restart
    is otherwise a race).
    """
    temporal = TemporalServer(tmp_path)
    chaos.adopt(temporal)
    await temporal.start()
    client = await temporal.connect()
    load = await staged_load(chaos, client, nats_url, [16 * MIB, 64 * MIB, 16 * MIB])
    worker = await load.worker(temporal.address, nats_url, "worker")
    await load.start()
    await load.node_holds_part_of(MIDDLE, 0.25)

    load.proxy.hold()
    temporal.kill()
    await asyncio.sleep(TEMPORAL_OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
    worker.pause()
    await temporal.start()
    await load.staging_attempt_at_least(2)
    worker.resume()
    load.proxy.release()
    load.assert_mid_file(MIDDLE)
    result = await load.result()

    await load.assert_loaded(result)
    assert load.resumed(MIDDLE), "the next attempt continued the node's partial"


async def test_temporal_down_longer_than_the_heartbeat_timeout_mid_file(
    chaos: Harness, nats_url: str, tmp_path: Path
) -> None:
    assert HEARTBEAT_TIMEOUT < TEMPORAL_OUTAGE_SECONDS
    temporal = TemporalServer(tmp_path)
    chaos.adopt(temporal)
    await temporal.start()
    client = await temporal.connect()
    load = await staged_load(chaos, client, nats_url)
    await load.worker(temporal.address, nats_url, "worker")
    await load.start()
    await load.node_holds_part_of(MIDDLE, 0.25)

    temporal.kill()
    load.assert_mid_file(MIDDLE)
    await asyncio.sleep(TEMPORAL_OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
    await temporal.start()
    result = await load.result()

    await load.assert_loaded(result)
