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
    """Expected OIDC issuer of the signing certificate."""
    issuer_regex: OmitEmpty[str] = ""
    """Pattern the issuer must match."""
    identity: OmitEmpty[str] = ""
    """Expected identity (subject) of the signing certificate."""
    identity_regex: OmitEmpty[str] = ""
    """Pattern the identity must match."""
    not_before: OmitEmpty[str] = ""
    """Signatures before this time are refused."""


class GalleryConfig(WireModel):
    """One backend gallery: where its index lives and what it is called."""

    url: str
    """Where the gallery's index lives (``file://`` or ``http(s)://``)."""
    name: str
    """The gallery's name."""
    mirrors: OmitEmpty[list[str]] = Field(default_factory=list)
    """Other URLs of the same index, tried in order."""
    verification: OmitEmpty[GalleryVerification | None] = None
    """Signature policy for the gallery's OCI images."""


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
    """Gallery name (concrete, meta or alias), or the name of an external install."""
    model_id: OmitEmpty[str] = ""
    """The slot's model id; empty for an admin install."""
    backend_galleries: OmitEmpty[str] = ""
    """The galleries as a JSON *string*; empty uses the node's own."""
    uri: OmitEmpty[str] = ""
    """External install source."""
    name: OmitEmpty[str] = ""
    """Name of an external install."""
    alias: OmitEmpty[str] = ""
    """Alias of an external install."""
    replica_index: OmitEmpty[Int32] = 0
    """The slot's replica index."""
    force: OmitEmpty[Bool] = False
    """Legacy upgrade: stop the backend's processes, re-pull, start."""
    op_id: OmitEmpty[str] = ""
    """Names the op for progress and cancel; the node joins an op it already works on."""


class BackendInstallReply(WireModel):
    """``success`` means a live, health-checked process serves the slot at ``address``."""

    success: bool = False
    """A live, health-checked process serves the slot."""
    address: OmitEmpty[str] = ""
    """Routable ``host:port`` of that process."""
    error: OmitEmpty[str] = ""
    """Why not, when ``success`` is false (classified by its text)."""


class BackendUpgradeRequest(WireModel):
    """Force a re-pull of ``backend``; stops every process using it and starts none."""

    backend: str
    """The backend to re-pull."""
    backend_galleries: OmitEmpty[str] = ""
    """The galleries as a JSON string; empty uses the node's own."""
    uri: OmitEmpty[str] = ""
    """External install source to re-pull from."""
    name: OmitEmpty[str] = ""
    """Name of an external install."""
    alias: OmitEmpty[str] = ""
    """Alias of an external install."""
    replica_index: OmitEmpty[Int32] = 0
    """Replica of the admin slot a stock worker's force path starts."""
    op_id: OmitEmpty[str] = ""
    """Names the op for progress and cancel."""


class BackendUpgradeReply(WireModel):
    """Outcome of an upgrade and the process keys it stopped (even on failure)."""

    success: bool = False
    """The backend was re-pulled."""
    error: OmitEmpty[str] = ""
    """Why not."""
    stopped_process_keys: OmitEmpty[list[str] | None] = None
    """Processes stopped for the re-pull, even on failure."""
    reports_stopped_processes: OmitEmpty[bool] = False
    """The node fills ``stopped_process_keys``, so an empty list means nothing was stopped rather
    than unknown."""


# --- Extensions of the node agent: previous version kept for rollback -----------------------


class BackendRollbackRequest(WireModel):
    """``backend.rollback`` (agent extension): put back the version an upgrade replaced.

    The agent keeps the version an upgrade replaced until told to drop it; a rollback stops
    every process of the backend (forced, like an upgrade) and starts none, so the slots are
    re-installed from the restored files. Stock workers have no responder for it.
    """

    backend: str
    """The backend whose previous version to restore."""


class BackendPreviousDropRequest(WireModel):
    """``backend.previous.drop`` (agent extension): the rollout is over; forget the kept version."""

    backend: str
    """The backend whose kept previous version to drop."""


class BackendPreviousDropReply(WireModel):
    """``success`` also when nothing was kept (dropping is idempotent)."""

    success: bool = False
    """The kept version is gone (also when there was none)."""
    error: OmitEmpty[str] = ""
    """Why not."""
    dropped: OmitEmpty[bool] = False
    """A kept version was there and was dropped."""


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
    """The op this progress belongs to."""
    node_id: str
    """The node sending it."""
    backend: str
    """The backend being installed."""
    file_name: OmitEmpty[str] = ""
    """The file or image reference being transferred."""
    current: OmitEmpty[str] = ""
    """Bytes done, human-readable (``412.3 MiB``)."""
    total: OmitEmpty[str] = ""
    """Bytes in all, human-readable."""
    percentage: float = 0.0
    """Percent of the current file or stream; not monotonic across an install."""
    phase: OmitEmpty[str] = ""
    """``resolving``, ``downloading``, ``extracting`` or ``starting``; free text."""


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
    """The installed backend's name."""
    is_system: bool = False
    """Shipped with the node rather than installed."""
    is_meta: bool = False
    """A meta backend (an alias for a capability-specific build)."""
    installed_at: OmitEmpty[str] = ""
    """When it was installed."""
    gallery_url: OmitEmpty[str] = ""
    """The gallery it came from."""
    version: OmitEmpty[str] = ""
    """Its version, when the gallery gave one."""
    uri: OmitEmpty[str] = ""
    """The source it was installed from."""
    digest: OmitEmpty[str] = ""
    """OCI manifest digest or archive sha256 (node agent)."""


class BackendListReply(WireModel):
    """Installed backends; ``backends`` is ``null`` on a node that has none."""

    backends: list[NodeBackendInfo] | None = None
    """Installed backends; ``null`` on a node that has none."""
    error: OmitEmpty[str] = ""
    """Why the list failed."""


class RunningModelInfo(WireModel):
    """One live process. ``address`` is node-local (``127.0.0.1:<port>``), not routable."""

    model_id: str
    """The slot's model id (the backend's name for an admin slot)."""
    replica_index: int = 0
    """The slot's replica index."""
    address: OmitEmpty[str] = ""
    """Node-local ``127.0.0.1:<port>`` of the process, not routable."""
    backend: OmitEmpty[Annotated[str, Field(max_length=256)]] = ""
    """Node agent extension: the concrete backend the process runs (stock workers omit it)."""


class ModelsRunningReply(WireModel):
    """Live processes of a node; stock workers send ``[]`` for none, accept ``null`` too."""

    models: list[RunningModelInfo] | None = Field(default_factory=list)
    """Live processes; ``[]`` or ``null`` for none."""
    error: OmitEmpty[str] = ""
    """Why the list failed."""


class BackendDeleteRequest(WireModel):
    """Remove ``backend`` from the node's disk."""

    backend: str
    """The backend to remove from the node's disk."""


class BackendDeleteReply(WireModel):
    """Outcome of a delete and the process keys it stopped."""

    success: bool = False
    """The backend is gone."""
    error: OmitEmpty[str] = ""
    """Why not ("backend not found" when it was not there)."""
    stopped_process_keys: OmitEmpty[list[str] | None] = None
    """Processes stopped to delete it."""
    reports_stopped_processes: OmitEmpty[bool] = False
    """The node fills ``stopped_process_keys``, so an empty list means nothing was stopped rather
    than unknown."""


class BackendStopRequest(WireModel):
    """Stop processes by backend name, model id or exact process key; empty = all."""

    backend: str = ""
    """Backend name, model id or exact process key to stop; empty stops everything."""
    force: OmitEmpty[Bool] = False
    """Skip the backend's ``Free()`` call."""


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
    """The op to ask about; empty asks about the slot only."""
    backend: str
    """The backend as requested."""
    model_id: OmitEmpty[str] = ""
    """The slot's model id."""
    replica_index: OmitEmpty[Int32] = 0
    """The slot's replica index."""


MAX_INSTANCE_ID_LENGTH = 128


class InstallStatusReply(WireModel):
    """A node agent's answer; ``address`` is the routable one when ``state`` is running.

    ``instance_id`` names the agent process that answered (new on every start): a waiting
    install sees a restart, which forgets every request in flight, as a changed id.
    """

    state: NodeSlotState
    """What the node knows about the slot."""
    address: OmitEmpty[str] = ""
    """Routable address of the slot's process, when running."""
    progress: OmitEmpty[BackendInstallProgressEvent | None] = None
    """The op's newest progress, when in flight."""
    error: OmitEmpty[str] = ""
    """The op's failure, when it failed."""
    instance_id: OmitEmpty[Annotated[str, Field(max_length=MAX_INSTANCE_ID_LENGTH)]] = ""
    """The agent process that answered; a new one means a restart forgot the op."""


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
    """Bytes an unprivileged writer may still use on the models filesystem (0: full)."""
    total_disk: Bytes = 0
    """Size of that filesystem; 0 when the node could not tell (never ruled out)."""
    reserved_disk: OmitEmpty[Bytes] = 0
    """Bytes the node keeps free: it refuses an upload that would leave less."""
    max_file_size: OmitEmpty[Bytes] = 0
    """The largest single file the node accepts."""
    address: OmitEmpty[Annotated[str, Field(max_length=MAX_FILES_ADDRESS_LENGTH)]] = ""
    """Routable ``host:port`` of the file-transfer HTTP server; empty when it is off."""
    error: OmitEmpty[Annotated[str, Field(max_length=MAX_REPLY_ERROR_LENGTH)]] = ""
    """Why the node could not read its filesystem, when it could not."""

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
