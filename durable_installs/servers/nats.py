"""``nats-server`` on a loopback port for a block: what tests and benchmarks run against."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from durable_installs.servers.commands import nats_server_command
from durable_installs.servers.ports import free_port
from durable_installs.servers.running import running


@contextmanager
def nats_server(
    port: int | None = None, config: Path | None = None, *, jetstream: bool = False
) -> Iterator[str]:
    """Run ``nats-server`` on loopback for the block; yields its URL.

    ``config`` is a configuration file (users, permissions, TLS); its log goes to
    ``<config>.log``. ``jetstream`` turns JetStream on with its store in a temporary
    directory removed afterwards.
    """
    port = port or free_port()
    with ExitStack() as stack:
        store = None
        if jetstream:
            store = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nats-js-")))
        command = nats_server_command(port, jetstream_dir=store, config=config)
        log = None if config is None else config.with_suffix(".log")
        stack.enter_context(running(command, port, log=log, timeout=20.0))
        yield f"nats://127.0.0.1:{port}"
