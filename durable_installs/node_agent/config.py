"""Everything a node agent is configured with, in one immutable value.

Defaults are the reference's fixed values (§12): 30 s readiness budget polled every 200 ms,
250 ms progress debounce, 15 s port quarantine, 5 min port affinity. Tests shrink the
timings; operators normally only set the identity, NATS, directory, gallery and port options.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from durable_installs.node_agent import capability as capability_detection
from durable_installs.node_agent.files import FilesConfig, Roots
from durable_installs.protocol.connection import NatsOptions
from durable_installs.protocol.messages import GalleryConfig
from durable_installs.telemetry import Telemetry

GIB = 1024**3
CAPABILITY_FILE = capability_detection.CAPABILITY_FILE


def detect_capability() -> str:
    """The meta-backend capability of this host (see :mod:`node_agent.capability`)."""
    return capability_detection.detect()


@dataclass(frozen=True)
class AgentConfig:
    """Configuration of one node agent.

    Required: ``node_id`` (the raw id; it must be a valid subject token) and ``backends_dir``.
    ``galleries`` is the node's own gallery list, used when a request carries no
    ``backend_galleries``. ``advertise_host`` is the host part of the routable address the
    agent replies with; processes listen on ``bind_host`` and are health-checked on loopback.
    ``telemetry`` gives the agent its tracer and meter (everything off by default).

    Trust (issue 11): a request's ``backend_galleries`` is used only when every gallery in it
    is one of ``galleries`` or lies under a prefix of ``allow_request_galleries``; a request's
    ``uri`` only under a prefix of ``allow_request_uris``; ``nodes.<node>.stop`` shuts the agent
    down only with ``allow_remote_stop``. All are closed by default.
    """

    node_id: str
    backends_dir: Path
    galleries: tuple[GalleryConfig, ...] = ()
    advertise_host: str = field(default_factory=socket.gethostname)
    port_range: tuple[int, int] = (50051, 50151)
    bind_host: str = "0.0.0.0"
    capability: str = field(default_factory=detect_capability)
    nats: NatsOptions = field(default_factory=NatsOptions)
    grpc_auth_token: str = ""
    max_download_bytes: int = 64 * GIB
    max_unpacked_bytes: int = 128 * GIB
    readiness_timeout: float = 30.0
    readiness_poll: float = 0.2
    health_call_timeout: float = 2.0
    free_timeout: float = 5.0
    stop_grace: float = 5.0
    progress_debounce: float = 0.25
    port_quarantine: float = 15.0
    port_affinity: float = 300.0
    download_stall_timeout: float = 120.0
    index_fetch_timeout: float = 120.0
    duplicate_check_interval: float = 15.0
    """Seconds between asks whether another agent serves this node id; 0 turns it off."""
    duplicate_check_window: float = 1.0
    """How long one ask collects answers."""
    max_index_bytes: int = 64 * 1024**2
    telemetry: Telemetry = field(default_factory=Telemetry)
    allow_request_galleries: tuple[str, ...] = ()
    allow_request_uris: tuple[str, ...] = ()
    allow_remote_stop: bool = False
    keep_backends: bool = False
    """On stop, leave backend processes running for the next agent to adopt (``--keep-backends``):
    restarting or upgrading the agent then costs no slot its process."""
    announce_interval: float = 10.0
    """Seconds between puts of this agent's entry in the node registry; 0 turns it off."""
    files: FilesConfig = field(default_factory=FilesConfig)
    """The file-transfer server and the models directory (off without a token)."""

    @property
    def file_roots(self) -> Roots:
        """The models directory (default ``<backends dir>/../models``), staging and data."""
        return Roots.beside(self.files.models_dir or self.backends_dir.parent / "models")
