"""The two gRPC calls the agent makes to a backend process: ``Health`` and ``Free`` (§17).

They live in :mod:`durable_installs.protocol.backend_grpc` with ``LoadModel`` and ``Status``,
which the load-model activities call and which may not import the node agent; the agent keeps
its names here.
"""

from __future__ import annotations

from durable_installs.protocol.backend_grpc import FREE, HEALTH, free, health
from durable_installs.protocol.protowire import read_bytes_field

HEALTH_OK = b"\x0a\x02OK"

__all__ = ["FREE", "HEALTH", "HEALTH_OK", "free", "health", "read_bytes_field"]
