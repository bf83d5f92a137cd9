"""The command line of each server, built in one place for the stack, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from durable_installs.servers.binaries import find_binary


def temporal_dev_server_command(
    port: int,
    *,
    ui_port: int | None = None,
    db_file: Path | None = None,
    search_attributes: Iterable[str] = (),
    log_level: str = "warn",
) -> list[str]:
    """``temporal server start-dev`` on loopback: in memory unless ``db_file``, the web UI on
    ``ui_port`` (none without), each of ``search_attributes`` registered as a Keyword."""
    command = [find_binary("temporal"), "server", "start-dev", "--ip", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", log_level]
    command += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
    if db_file is not None:
        command += ["--db-filename", str(db_file)]
    for name in search_attributes:
        command += ["--search-attribute", f"{name}=Keyword"]
    return command


def nats_server_command(
    port: int | None,
    *,
    jetstream_dir: Path | None = None,
    config: Path | None = None,
    monitor_port: int | None = None,
) -> list[str]:
    """``nats-server`` on loopback: JetStream (the node registry's bucket) when it has a store
    directory, users, permissions, TLS or a cluster from ``config``, HTTP monitoring on
    ``monitor_port``. A port given here wins over a ``listen`` in the config; without one the
    config says where to listen."""
    command = [find_binary("nats-server")]
    if port is not None:
        command += ["-a", "127.0.0.1", "-p", str(port)]
    if monitor_port is not None:
        command += ["-m", str(monitor_port)]
    if config is not None:
        command += ["-c", str(config)]
    if jetstream_dir is not None:
        command += ["-js", "-sd", str(jetstream_dir)]
    return command
