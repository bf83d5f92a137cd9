"""Wire messages of the backend install protocol (LocalAI distributed mode).

Field names, presence and ``omitempty`` rules follow docs/protocol.md §1 and §4 exactly: a LocalAI
worker must be able to read what we send and we must read what it sends. Receivers treat a
missing field as its zero value, and lists that Go leaves nil arrive as ``null``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictBool, StrictInt, TypeAdapter

from durable_installs.protocol.wire import OmitEmpty, WireModel

Int32 = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
"""A replica index: a non-negative 32-bit integer on the wire.

Strict, like Go's encoding/json: ``"1"``, ``true`` and ``1.0`` are refused, not coerced.
"""

Bool = StrictBool
"""A request flag: only JSON ``true``/``false``; ``"yes"`` or ``1`` is refused as Go does."""


# --- Gallery configuration (what ``backend_galleries`` carries) -------------------------------


class GalleryVerification(WireModel):
    """Cosign keyless policy for OCI images of one gallery."""

    issuer: OmitEmpty[str] = ""
    issuer_regex: OmitEmpty[str] = ""
    identity: OmitEmpty[str] = ""
    identity_regex: OmitEmpty[str] = ""
    not_before: OmitEmpty[str] = ""


class GalleryConfig(WireModel):
    """One backend gallery: where its index lives and what it is called."""

    url: str
    name: str
    mirrors: OmitEmpty[list[str]] = Field(default_factory=list)
    verification: OmitEmpty[GalleryVerification | None] = None


_GALLERY_LIST = TypeAdapter(list[GalleryConfig])


def encode_galleries(galleries: list[GalleryConfig]) -> str:
    """The JSON *string* that ``backend_galleries`` carries; empty for no override.

    An empty list becomes ``""`` (use the node's own galleries), never ``"null"`` or ``"[]"``:
    a LocalAI worker decodes ``"null"`` as "no galleries" and then every lookup fails.
    """
    if not galleries:
        return ""
    return _GALLERY_LIST.dump_json(galleries).decode()


def decode_galleries(text: str) -> list[GalleryConfig]:
    """Parse a ``backend_galleries`` string; ``""`` means no override."""
    if not text:
        return []
    return _GALLERY_LIST.validate_json(text)


# --- backend.install / backend.upgrade ---------------------------------------------------------


class BackendInstallRequest(WireModel):
    """Ensure ``backend`` is installed and a process serves the slot; reply with its address."""

    backend: str
    model_id: OmitEmpty[str] = ""
    backend_galleries: OmitEmpty[str] = ""
    uri: OmitEmpty[str] = ""
    name: OmitEmpty[str] = ""
    alias: OmitEmpty[str] = ""
    replica_index: OmitEmpty[Int32] = 0
    force: OmitEmpty[Bool] = False
    op_id: OmitEmpty[str] = ""


class BackendInstallReply(WireModel):
    """``success`` means a live, health-checked process serves the slot at ``address``."""

    success: bool = False
    address: OmitEmpty[str] = ""
    error: OmitEmpty[str] = ""


class BackendUpgradeRequest(WireModel):
    """Force a re-pull of ``backend``; stops every process using it and starts none."""

    backend: str
    backend_galleries: OmitEmpty[str] = ""
    uri: OmitEmpty[str] = ""
    name: OmitEmpty[str] = ""
    alias: OmitEmpty[str] = ""
    replica_index: OmitEmpty[Int32] = 0
    op_id: OmitEmpty[str] = ""


class BackendUpgradeReply(WireModel):
    """Outcome of an upgrade and the process keys it stopped (even on failure)."""

    success: bool = False
    error: OmitEmpty[str] = ""
    stopped_process_keys: OmitEmpty[list[str] | None] = None
    reports_stopped_processes: OmitEmpty[bool] = False


# --- Extensions of the node agent: previous version kept for rollback -----------------------


class BackendRollbackRequest(WireModel):
    """``backend.rollback`` (agent extension): put back the version an upgrade replaced.

    The agent keeps the version an upgrade replaced until told to drop it; a rollback stops
    every process of the backend (forced, like an upgrade) and starts none, so the slots are
    re-installed from the restored files. Stock workers have no responder for it.
    """

    backend: str


class BackendPreviousDropRequest(WireModel):
    """``backend.previous.drop`` (agent extension): the rollout is over; forget the kept version."""

    backend: str


class BackendPreviousDropReply(WireModel):
    """``success`` also when nothing was kept (dropping is idempotent)."""

    success: bool = False
    error: OmitEmpty[str] = ""
    dropped: OmitEmpty[bool] = False


# --- Progress ----------------------------------------------------------------------------------


class ProgressPhase(StrEnum):
    """The phase values of a progress event; stock workers only ever send ``downloading``."""

    RESOLVING = "resolving"
    DOWNLOADING = "downloading"
    EXTRACTING = "extracting"
    STARTING = "starting"


class BackendInstallProgressEvent(WireModel):
    """One progress tick of an install or upgrade, published fire-and-forget by the node.

    ``percentage`` refers to the current file or stream and is not monotonic across an
    install; ``current``/``total`` are human-readable sizes (``412.3 MiB``). ``phase`` is kept
    as free text so an event with a phase we do not know is still forwarded, not dropped.
    """

    op_id: str
    node_id: str
    backend: str
    file_name: OmitEmpty[str] = ""
    current: OmitEmpty[str] = ""
    total: OmitEmpty[str] = ""
    percentage: float = 0.0
    phase: OmitEmpty[str] = ""


_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(num_bytes: int) -> str:
    """Human-readable size as LocalAI's downloader prints it: ``512 B``, ``412.3 MiB``."""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    value = float(num_bytes)
    unit = 0
    while value >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {_SIZE_UNITS[unit]}"


def parse_size(text: str) -> int | None:
    """Bytes of a ``number unit`` size string, or None when it does not parse."""
    parts = text.split()
    if len(parts) != 2 or parts[1] not in _SIZE_UNITS:
        return None
    try:
        value = float(parts[0])
    except ValueError:
        return None
    return int(value * 1024 ** _SIZE_UNITS.index(parts[1]))


# --- backend.list / models.running / delete / stop ---------------------------------------------


class NodeBackendInfo(WireModel):
    """One installed backend as ``backend.list`` reports it."""

    name: str
    is_system: bool = False
    is_meta: bool = False
    installed_at: OmitEmpty[str] = ""
    gallery_url: OmitEmpty[str] = ""
    version: OmitEmpty[str] = ""
    uri: OmitEmpty[str] = ""
    digest: OmitEmpty[str] = ""


class BackendListReply(WireModel):
    """Installed backends; ``backends`` is ``null`` on a node that has none."""

    backends: list[NodeBackendInfo] | None = None
    error: OmitEmpty[str] = ""


class RunningModelInfo(WireModel):
    """One live process. ``address`` is node-local (``127.0.0.1:<port>``), not routable."""

    model_id: str
    replica_index: int = 0
    address: OmitEmpty[str] = ""
    backend: OmitEmpty[Annotated[str, Field(max_length=256)]] = ""
    """Node agent extension: the concrete backend the process runs (stock workers omit it)."""


class ModelsRunningReply(WireModel):
    """Live processes of a node; stock workers send ``[]`` for none, accept ``null`` too."""

    models: list[RunningModelInfo] | None = Field(default_factory=list)
    error: OmitEmpty[str] = ""


class BackendDeleteRequest(WireModel):
    """Remove ``backend`` from the node's disk."""

    backend: str


class BackendDeleteReply(WireModel):
    """Outcome of a delete and the process keys it stopped."""

    success: bool = False
    error: OmitEmpty[str] = ""
    stopped_process_keys: OmitEmpty[list[str] | None] = None
    reports_stopped_processes: OmitEmpty[bool] = False


class BackendStopRequest(WireModel):
    """Stop processes by backend name, model id or exact process key; empty = all."""

    backend: str = ""
    force: OmitEmpty[Bool] = False


# --- Install status (node agent extension, preferred by the probe) -----------------------------


class NodeSlotState(StrEnum):
    """What a node knows about one slot, as the status extension reports it.

    Not a rollout's view of a slot (``contracts.rollout.SlotState``, which adds queued,
    succeeded, failed...): this is the node's own answer, on the wire."""

    RUNNING = "running"
    IN_FLIGHT = "in_flight"
    INSTALLED = "installed"
    ABSENT = "absent"


class InstallStatusRequest(WireModel):
    """Ask a node agent about one slot and, when given, one op."""

    op_id: OmitEmpty[str] = ""
    backend: str
    model_id: OmitEmpty[str] = ""
    replica_index: OmitEmpty[Int32] = 0


MAX_INSTANCE_ID_LENGTH = 128


class InstallStatusReply(WireModel):
    """A node agent's answer; ``address`` is the routable one when ``state`` is running.

    ``instance_id`` names the agent process that answered (new on every start): a waiting
    install sees a restart, which forgets every request in flight, as a changed id.
    """

    state: NodeSlotState
    address: OmitEmpty[str] = ""
    progress: OmitEmpty[BackendInstallProgressEvent | None] = None
    error: OmitEmpty[str] = ""
    instance_id: OmitEmpty[Annotated[str, Field(max_length=MAX_INSTANCE_ID_LENGTH)]] = ""


# --- Free space for staged files (node agent extension) ---------------------------------------

Bytes = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
"""A byte count: a non-negative integer that fits Go's int64."""

MAX_FILES_ADDRESS_LENGTH = 512
"""LocalAI's bound on a node's registered ``http_address``."""
MAX_REPLY_ERROR_LENGTH = 1024


class FilesSpaceRequest(WireModel):
    """``files.space`` (agent extension): nothing to ask; any body, even an empty one."""


class FilesSpaceReply(WireModel):
    """Free space where the node keeps model files, and where to send them.

    ``available_disk`` and ``total_disk`` mean what LocalAI's node registry means by them: the
    filesystem that backs the node's *models* directory (``available_disk`` is what an
    unprivileged writer may still use; 0 is a real reading, a full disk). ``total_disk`` 0 means
    the node could not tell. ``reserved_disk`` is the headroom the node keeps for itself: it
    refuses an upload that would leave less. ``max_file_size`` is the largest single file it
    accepts. ``address`` is the routable ``host:port`` of its file-transfer HTTP server, empty
    when that server is off (no token configured).
    """

    available_disk: Bytes = 0
    total_disk: Bytes = 0
    reserved_disk: OmitEmpty[Bytes] = 0
    max_file_size: OmitEmpty[Bytes] = 0
    address: OmitEmpty[Annotated[str, Field(max_length=MAX_FILES_ADDRESS_LENGTH)]] = ""
    error: OmitEmpty[Annotated[str, Field(max_length=MAX_REPLY_ERROR_LENGTH)]] = ""

    @property
    def usable_disk(self) -> int:
        """Bytes an upload may still take: the free space minus the node's reserve."""
        return max(0, self.available_disk - self.reserved_disk)

    def fits(self, required: int) -> bool:
        """Whether ``required`` more bytes fit; a node that reports no disk is not ruled out."""
        return self.total_disk == 0 or self.usable_disk >= required


# --- Process keys ------------------------------------------------------------------------------


def process_key(backend: str, model_id: str = "", replica_index: int = 0) -> str:
    """``<model_id or backend>#<replica>``, the node's name for one slot's process."""
    return f"{model_id or backend}#{replica_index}"


def parse_process_key(key: str) -> tuple[str, int] | None:
    """Split a process key at the last ``#``; None for anything that does not parse."""
    base, sep, replica = key.rpartition("#")
    if not sep or not base or not replica.isdigit():
        return None
    return base, int(replica)


def error_body(message: str) -> bytes:
    """A minimal ``{"success":false,"error":...}`` reply body."""
    return json.dumps({"success": False, "error": message}).encode()
