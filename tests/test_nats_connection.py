"""The one NATS connection every process opens through ``NatsOptions``."""

from __future__ import annotations

import logging

import pytest

from durable_installs.protocol.connection import NatsOptions
from durable_installs.servers import nats_server
from tests.workflow_helpers import wait_for

LOGGER = "durable_installs.protocol.connection"


async def test_a_deliberate_close_logs_no_reconnect_warning(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    nc = await NatsOptions(url=nats_url).connect("closing")

    await nc.drain()

    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == []


async def test_a_lost_server_is_logged_as_a_disconnect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with nats_server() as url:
        nc = await NatsOptions(url=url).connect("losing")
    try:
        await wait_for(
            lambda: any(
                r.getMessage() == "NATS: disconnected; reconnecting" for r in caplog.records
            ),
            what="the disconnect logged",
        )
    finally:
        await nc.close()
